"""The leakage gate as a Flower client-side mod (Flower's mechanism for local DP and clipping mods).

:class:`LeakageGateMod` wraps a ``ClientApp``'s train handler: it keeps the global arrays the server sent, lets
the app train, then runs :class:`gradleak.gate.LeakageGate` on the reply — the update as the server would
receive it — against the client's own images. It passes the reply unchanged, replaces its parameters with the
noised ones the gate settled on, or answers with a Flower ``Error`` (the strategy then aggregates without this
client). The evidence stays on the client.

Examples
--------
>>> gate = LeakageGate({"fedavg-inversion": {"iterations": 300}})                        # doctest: +SKIP
>>> mod = LeakageGateMod(gate, model=Net, data=my_images, prior=mean_image,               # doctest: +SKIP
...                      recipe=LocalRecipe(optimizer="sgd", lr=0.01, batch_size=32), mean=(0.5,) * 3, std=(0.5,) * 3)
>>> app = ClientApp(mods=[mod])                                                          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradleak.fl.flower import log_info, require_flower, split_state
from gradleak.fl.recipe import LocalRecipe
from gradleak.gate import GateDecision, LeakageGate
from gradleak.records import ClientUpdate, GlobalState

__all__ = ["LeakageGateMod"]

Data = Callable[[Any], tuple[Tensor, Tensor]]


class LeakageGateMod:
    """A Flower mod that audits the update a ``ClientApp`` sends and passes, noises or blocks it.

    Parameters
    ----------
    gate
        The gate (attacks and budget, σ0 ladder, what to do on a leak).
    model
        The architecture (a module or a zero-argument factory; its weights are not used).
    data
        ``(context) -> (images, labels)``: this client's training images ``(N, C, H, W)`` in ``[0, 1]`` (before
        normalisation) and labels — the same images its train handler uses.
    prior
        What an attacker knows without the update, ``(C, H, W)`` in ``[0, 1]``, or ``(context) -> image``.
    recipe
        The client's local training, or ``(message, context) -> LocalRecipe`` (e.g. to read the round's
        learning rate from the train config).
    mean, std
        The normalisation the client applies.
    defenses
        Defenses applied before this mod (mods run in order; put the gate last so that it sees what is sent).
    evidence_dir
        Where each decision's evidence goes (``<dir>/partition_<partition-id>/round_<r>.json`` and ``.npz``, or
        ``node_<node id>`` when the node has no ``partition-id``); ``None``: not written.
    """

    def __init__(self, gate: LeakageGate, *, model: nn.Module | Callable[[], nn.Module], data: Data,
                 prior: Tensor | Callable[[Any], Tensor], recipe: LocalRecipe | Callable[[Any, Any], LocalRecipe],
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), defenses: Sequence[Any] = (),
                 evidence_dir: str | Path | None = None) -> None:
        require_flower()
        self.gate, self.data, self.prior, self.recipe = gate, data, prior, recipe
        self.model = model if isinstance(model, nn.Module) else model()
        self.mean, self.std, self.defenses = tuple(mean), tuple(std), tuple(defenses)
        self.evidence_dir = None if evidence_dir is None else Path(evidence_dir)
        self.decisions: list[GateDecision] = []  # this process's decisions, newest last

    def __call__(self, msg: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        from flwr.app import Array, ArrayRecord, Error, Message
        from flwr.common.constant import ErrorCode

        if not str(msg.metadata.message_type).startswith("train"):
            return call_next(msg, context)
        received = list(msg.content.array_records.values())
        out = call_next(msg, context)
        if out.has_error() or len(received) != 1 or len(out.content.array_records) != 1:
            return out  # nothing to audit (an error, or not one model in and one out)
        key, sent = next(iter(out.content.array_records.items()))
        g_params, g_buffers = split_state(self.model, received[0].to_torch_state_dict())
        params, buffers = split_state(self.model, sent.to_torch_state_dict())
        round_ = int(msg.metadata.group_id) - 1 if str(msg.metadata.group_id).isdigit() else 0
        images, labels = self.data(context)
        images, labels = torch.as_tensor(images).float(), torch.as_tensor(labels).long().reshape(-1)
        update = ClientUpdate(client=0, round=round_, delta={k: params[k] - g_params[k] for k in params},
                              buffers=buffers, num_examples=len(images))
        recipe = self.recipe if isinstance(self.recipe, LocalRecipe) else self.recipe(msg, context)
        prior = self.prior if isinstance(self.prior, Tensor) else self.prior(context)
        decision = self.gate.check(self.model, GlobalState(round=round_, params=g_params, buffers=g_buffers),
                                   update, images, labels, recipe=recipe, prior=torch.as_tensor(prior).float(),
                                   mean=self.mean, std=self.std, defenses=self.defenses)
        self.decisions.append(decision)
        if self.evidence_dir is not None:
            pid = context.node_config.get("partition-id")
            folder = f"partition_{pid}" if pid is not None else f"node_{msg.metadata.dst_node_id}"
            decision.save(self.evidence_dir / folder, name=f"round_{round_:05d}")
        log_info(f"gradleak gate (round {round_}): {decision.action} — {decision.reason} "
                 f"[{decision.wall_time:.1f} s]")
        if decision.action == "block":
            return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION,
                                 reason=f"gradleak leakage gate: {decision.reason}"), reply_to=msg)
        if decision.action == "escalate":
            assert decision.update is not None
            state = sent.to_torch_state_dict()
            noised = {k: (g_params[k] + decision.update.delta[k]).to(state[k].dtype) for k in g_params}
            out.content[key] = ArrayRecord({k: Array(noised[k].numpy() if k in noised else state[k].numpy())
                                            for k in state})
        return out
