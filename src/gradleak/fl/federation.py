"""The FedAvg simulator: clients of unequal size train with :func:`local_update`, the server aggregates.

Every random choice is derived from ``(seed, round[, client])`` with :class:`numpy.random.SeedSequence`, so a
round's outcome depends only on the global state it starts from. That is what makes resuming exact: a run
continued from a recorded global state equals the uninterrupted run.

Examples
--------
>>> sim = FedAvgSimulation(ModelSpec("cnn", {"in_channels": 1}), clients, rounds=5, test=test)  # doctest: +SKIP
>>> result = sim.run(hooks=[Recorder(UpdateStore("out/store"))])                             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gradleak.fl.aggregation import fedavg
from gradleak.fl.client import UpdateTransform, client_step
from gradleak.fl.local import LocalData, model_state
from gradleak.fl.recipe import LocalRecipe
from gradleak.models import ModelSpec
from gradleak.records import ClientUpdate, GlobalState

__all__ = [
    "FLClient",
    "FedAvgSimulation",
    "FederationHook",
    "FederationResult",
    "RoundMetrics",
    "derive_seed",
    "evaluate",
]



def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (e.g. ``(seed, round, client)``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class FLClient:
    """A client: its id, local training data (model-ready tensors), recipe, and validation split."""

    id: int
    train: LocalData
    recipe: LocalRecipe
    val: LocalData | None = None


@dataclass(frozen=True)
class RoundMetrics:
    """Evaluation of the global model produced by ``round`` (after aggregation)."""

    round: int
    val_accuracy: dict[int, float] = field(default_factory=dict)
    mean_val_accuracy: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    train_loss: float | None = None
    clients: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["val_accuracy"] = {str(k): v for k, v in self.val_accuracy.items()}
        data["clients"] = list(self.clients)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundMetrics:
        data = dict(data)
        data["val_accuracy"] = {int(k): float(v) for k, v in data.get("val_accuracy", {}).items()}
        data["clients"] = tuple(data.get("clients", ()))
        return cls(**data)


@dataclass(frozen=True)
class FederationResult:
    """Final and best (by mean validation accuracy) global states and the per-round history."""

    final: GlobalState
    best: GlobalState
    best_round: int
    history: list[RoundMetrics]


class FederationHook:
    """Callbacks of the FedAvg loop; subclass and override what you need (all no-ops here)."""

    def on_round_start(self, round: int, state: GlobalState) -> None:
        """The server is about to send ``state`` for ``round``."""

    def on_client_update(self, update: ClientUpdate) -> None:
        """The server received ``update`` (after update-stage defenses: exactly what it sees)."""

    def on_round_end(self, round: int, state: GlobalState, metrics: RoundMetrics) -> None:
        """``state`` is the aggregate of ``round`` (the global model of round ``round + 1``)."""


@torch.no_grad()
def evaluate(model: nn.Module, state: GlobalState, data: LocalData, batch_size: int = 512) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``state`` on ``data`` (eval mode: running BN statistics)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    try:
        for start in range(0, len(data), batch_size):
            x, y = data.x[start:start + batch_size], data.y[start:start + batch_size]
            logits = functional_call(model, (state.params, state.buffers), (x,))
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    finally:
        model.train(was_training)
    return correct / len(data), loss_sum / len(data)


class FedAvgSimulation:
    """FedAvg / FedSGD over ``clients`` for ``rounds`` rounds.

    Parameters
    ----------
    model
        The architecture (a :class:`ModelSpec` is recorded in update metadata; a factory works too).
    clients
        The federation's clients.
    rounds
        Number of rounds.
    fraction
        Share of clients sampled each round (at least one), without replacement.
    seed
        Seeds the initial model, client sampling, shuffling and client-side noise.
    test
        Test split for per-round evaluation.
    update_defenses
        Update-stage transforms applied by each client before sending (``(update, generator) -> update``).
    aggregator
        What the server sees of a round (e.g. :func:`gradleak.defenses.secure_sum`): hooks then receive only
        the aggregate, once per round, and FedAvg applies it.
    progress
        Show a Rich progress bar.
    device
        Where training runs; clients' data and the model are moved there (results come back on it).
    """

    def __init__(
        self,
        model: ModelSpec | Callable[[], nn.Module],
        clients: Sequence[FLClient],
        *,
        rounds: int,
        fraction: float = 1.0,
        seed: int = 0,
        test: LocalData | None = None,
        update_defenses: Sequence[UpdateTransform] = (),
        aggregator: Callable[[Sequence[ClientUpdate]], ClientUpdate] | None = None,
        progress: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if not clients or len({c.id for c in clients}) != len(clients):
            raise ValueError("clients must be non-empty with unique ids")
        self.device = torch.device(device)
        self.model_spec = model
        self.clients = [_to_device(c, self.device) for c in clients]
        self.rounds, self.fraction, self.seed = rounds, fraction, seed
        self.test = None if test is None else LocalData(test.x.to(self.device), test.y.to(self.device))
        self.update_defenses = list(update_defenses)
        self.aggregator = aggregator
        self.progress = progress
        self.model = self._build().to(self.device)

    def _build(self) -> nn.Module:
        torch.manual_seed(derive_seed(self.seed, 0x5EED))
        return self.model_spec()

    def initial_state(self) -> GlobalState:
        """The round-0 global model (seeded initialisation)."""
        params, buffers = model_state(self.model)
        return GlobalState(round=0, params=params, buffers=buffers, metadata={})

    def sample_clients(self, round: int) -> list[FLClient]:
        """Clients sampled for ``round`` (all when ``fraction == 1``)."""
        k = max(1, round_half_up(self.fraction * len(self.clients)))
        if k == len(self.clients):
            return list(self.clients)
        rng = np.random.default_rng(derive_seed(self.seed, round, 0xC11E))
        chosen = sorted(rng.choice(len(self.clients), size=k, replace=False))
        return [self.clients[i] for i in chosen]

    def client_update(self, client: FLClient, state: GlobalState) -> ClientUpdate:
        """Local training of ``client`` from ``state`` and its update-stage defenses: what it sends."""
        seed = derive_seed(self.seed, state.round, client.id)
        recipe = client.recipe.replace(seed=seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return client_step(self.model, state, client.train, recipe, client=client.id, defenses=self.update_defenses,
                           generator=generator).update

    def evaluate_round(self, round: int, state: GlobalState, clients: Sequence[FLClient],
                       train_losses: Sequence[float]) -> RoundMetrics:
        val = {c.id: evaluate(self.model, state, c.val)[0] for c in self.clients if c.val is not None}
        test_acc, test_loss = evaluate(self.model, state, self.test) if self.test is not None else (None, None)
        return RoundMetrics(
            round=round,
            val_accuracy=val,
            mean_val_accuracy=float(np.mean(list(val.values()))) if val else None,
            test_accuracy=test_acc,
            test_loss=test_loss,
            train_loss=float(np.mean(train_losses)) if train_losses else None,
            clients=tuple(c.id for c in clients),
        )

    def run(
        self,
        *,
        hooks: Sequence[FederationHook] = (),
        initial: GlobalState | None = None,
        resume_from: Any | None = None,
    ) -> FederationResult:
        """Run the remaining rounds and return final/best states and the history.

        Parameters
        ----------
        hooks
            Callbacks (e.g. :class:`gradleak.fl.Recorder`).
        initial
            Start from this global state instead of the seeded initialisation.
        resume_from
            An :class:`~gradleak.fl.store.UpdateStore` written by a :class:`Recorder` of an earlier,
            interrupted run with the same settings: continue after its last finished round.
        """
        state = initial if initial is not None else self.initial_state()
        history: list[RoundMetrics] = []
        best: tuple[RoundMetrics, GlobalState] | None = None
        if resume_from is not None and resume_from.global_rounds():
            state = resume_from.load_global(round=max(resume_from.global_rounds()), model=self.model)
            history = [RoundMetrics.from_json(m) for m in state.metadata.get("history", [])]
            scored = [m for m in history if m.mean_val_accuracy is not None]
            if scored:
                top = max(scored, key=_rank)
                best = (top, resume_from.load_global(round=top.round + 1, model=self.model))
        with _progress(self.progress, self.rounds, state.round) as advance:
            for round_ in range(state.round, self.rounds):
                state = dataclasses.replace(state, round=round_)
                for hook in hooks:
                    hook.on_round_start(round_, state)
                clients = self.sample_clients(round_)
                updates = [self.client_update(client, state) for client in clients]
                seen = [self.aggregator(updates)] if self.aggregator is not None else updates
                for update in seen:
                    for hook in hooks:
                        hook.on_client_update(update)
                new_state = fedavg(state, seen)
                metrics = self.evaluate_round(round_, new_state, clients,
                                              [u.metadata.get("train_loss", float("nan")) for u in updates])
                history.append(metrics)
                state = dataclasses.replace(new_state, metadata={"history": [m.to_json() for m in history]})
                if metrics.mean_val_accuracy is not None and (best is None or _rank(metrics) > _rank(best[0])):
                    best = (metrics, state)
                for hook in hooks:
                    hook.on_round_end(round_, state, metrics)
                advance(metrics)
        if best is None:
            return FederationResult(final=state, best=state, best_round=state.round - 1, history=history)
        return FederationResult(final=state, best=best[1], best_round=best[0].round, history=history)


def _rank(metrics: RoundMetrics) -> tuple[float, int]:
    """Best model: highest mean validation accuracy, earliest round on ties (as the hospital paper selects)."""
    return (metrics.mean_val_accuracy if metrics.mean_val_accuracy is not None else -1.0, -metrics.round)


def _to_device(client: FLClient, device: torch.device) -> FLClient:
    def move(d: LocalData) -> LocalData:
        return LocalData(d.x.to(device), d.y.to(device))

    return dataclasses.replace(client, train=move(client.train), val=None if client.val is None else move(client.val))


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


class _progress:
    """A Rich progress bar over rounds (or nothing), yielding an ``advance(metrics)`` callable."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.enabled, self.total, self.start = enabled, total, start

    def __enter__(self) -> Callable[[RoundMetrics], None]:
        if not self.enabled:
            return lambda metrics: None
        from rich.progress import Progress

        self._bar = Progress(transient=False)
        self._bar.__enter__()
        task = self._bar.add_task("FedAvg rounds", total=self.total, completed=self.start)

        def advance(metrics: RoundMetrics) -> None:
            acc = "" if metrics.test_accuracy is None else f" test acc {metrics.test_accuracy:.3f}"
            self._bar.update(task, advance=1, description=f"FedAvg round {metrics.round + 1}/{self.total}{acc}")

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)
