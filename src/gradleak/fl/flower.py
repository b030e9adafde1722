"""Flower integration: the same clients as a Flower ``ClientApp``, and a strategy wrapper that records.

The client side calls :meth:`FedAvgSimulation.client_update` — the very function the in-process simulator
uses — so a Flower run and an in-process run from the same seeds train identically. The server side wraps
any Flower strategy in :class:`RecordingStrategy`, which writes every received update and every global
state into an :class:`~gradleak.fl.store.UpdateStore`; every attack then runs on updates recorded from a
real Flower run.

Adding the recorder to an existing Flower project (message API, Flower ≥ 1.20)::

    from gradleak.fl.flower import RecordingStrategy
    from gradleak.fl.store import UpdateStore

    @app.main()
    def main(grid, context):
        strategy = RecordingStrategy(FedAvg(...), UpdateStore("runs/recorded"), model=Net())
        strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()), num_rounds=10)

Clients should put ``"client-id"`` (an int) and ``"num-examples"`` in the ``MetricRecord`` they reply with;
without ``"client-id"`` the recorder uses the node id. Flower is an optional extra:
``pip install 'gradleak[flower]'``. For offline simulations set
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (done by :func:`run_flower_simulation`).

Designed difference from the in-process simulator: Flower's FedAvg averages the clients' *weights* (and
buffers) in numpy float32 arithmetic, where :func:`gradleak.fl.aggregation.fedavg` adds the float64 average
of the *deltas* to the global weights; the results agree to float32 round-off (~1e-7), and Flower averages
the integer ``num_batches_tracked`` buffers the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.fl.federation import FedAvgSimulation, FLClient
from gradleak.fl.recipe import LocalRecipe
from gradleak.fl.store import RunMismatchError, UpdateStore
from gradleak.models import ModelSpec
from gradleak.records import ClientUpdate, GlobalState, InputSpec

__all__ = ["RecordingStrategy", "make_client_app", "require_flower", "run_flower_simulation"]

try:  # this module is only imported by code that uses Flower; gradleak itself never imports it
    from flwr.serverapp.strategy import Strategy as _FlowerStrategy
except ImportError:  # pragma: no cover - depends on the environment
    _FlowerStrategy = object  # type: ignore[misc,assignment]


def require_flower() -> Any:
    """Import ``flwr`` or fail with the install hint."""
    try:
        import flwr
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise GradleakError(
            "Flower is not installed; install the optional extra: pip install 'gradleak[flower]'"
        ) from exc
    return flwr


def split_state(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Parameters and buffers of a Flower state dict, in the model's dtypes (Flower's FedAvg turns the
    integer ``num_batches_tracked`` into a float average; it is rounded back, as gradleak's FedAvg does)."""

    def cast(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return value.clone() if like.is_floating_point() else value.round().to(like.dtype)

    params = {k: cast(state[k], v) for k, v in model.named_parameters()}
    buffers = {k: cast(state[k], v) for k, v in model.named_buffers()}
    return params, buffers


def make_client_app(sim: FedAvgSimulation, *, mods: Sequence[Any] = ()) -> Any:
    """A Flower ``ClientApp`` whose node with ``partition-id`` *i* is ``sim.clients[i]``, with Flower ``mods``
    (e.g. :class:`gradleak.fl.flower_mods.LeakageGateMod`)."""
    require_flower()
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client: FLClient = sim.clients[int(context.node_config["partition-id"])]
        round_ = int(msg.content.config_records["config"]["server-round"]) - 1  # type: ignore[arg-type]
        params, buffers = split_state(sim.model, msg.content.array_records["arrays"].to_torch_state_dict())
        update = sim.client_update(client, GlobalState(round=round_, params=params, buffers=buffers))
        new_state = {k: params[k] + update.delta[k] for k in params} | dict(update.buffers)
        metrics = MetricRecord({"num-examples": update.num_examples, "client-id": client.id,
                                "train-loss": float(update.metadata["train_loss"])})
        return Message(content=RecordDict({"arrays": ArrayRecord(new_state), "metrics": metrics}), reply_to=msg)

    return app


_LR_KEYS = ("lr", "learning-rate", "learning_rate")


def _json_value(value: Any) -> Any:
    """A JSON-safe copy of a Flower config/metric value: finite numbers, strings, bools and lists of them;
    anything else (NaN, inf, bytes, objects) is dropped (``None``)."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        items = [_json_value(v) for v in value]
        return items if all(v is not None for v in items) else None
    return None


def _json_record(record: Any) -> dict[str, Any]:
    """The JSON-safe entries of a Flower ``ConfigRecord``/``MetricRecord`` (others dropped, never fatal)."""
    out = {}
    for key, value in dict(record or {}).items():
        clean = _json_value(value)
        if clean is not None:
            out[str(key)] = clean
    return out


class RecordingStrategy(_FlowerStrategy):
    """Wrap a Flower strategy so that everything the server receives is recorded, with what it knows.

    Parameters
    ----------
    inner
        The strategy that does the work (e.g. ``flwr.serverapp.strategy.FedAvg``).
    store
        Where updates (as deltas against the round's global model) and global states go: an
        :class:`~gradleak.fl.store.UpdateStore` or a folder (made absolute against the ServerApp's working
        directory, and logged; pass an absolute path to be sure where it lands). A store holds one run: a
        store that already holds records is refused, so run each Flower run into its own folder.
    model
        The architecture, to split state dicts into parameters and buffers and to validate records.
    model_spec
        How ``gradleak attack`` rebuilds the model: a registry name, a :class:`~gradleak.records.ModelSpec`, or
        the import path of your class or factory (``"mypackage.task:Net"``; a plain ``nn.Module`` class that
        takes no arguments works).
    input_spec
        What the model takes: an :class:`~gradleak.records.InputSpec` or a dict (``size``, ``channels``,
        ``mean``, ``std``, ``resize``), e.g. ``Normalize((0.5,) * 3, (0.5,) * 3)`` on 32×32 RGB is
        ``{"size": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}``.
    recipe
        The local training your clients run, as you declare it (the server cannot see it):
        :class:`~gradleak.fl.LocalRecipe` fields such as ``optimizer``, ``momentum``, ``weight_decay``,
        ``batch_size``, ``epochs``. The learning rate is read from each round's train config (``lr_key``,
        default the first of ``lr``, ``learning-rate``, ``learning_rate`` present) unless given here.
    lr_key
        The train-config key that holds the clients' learning rate.

    Recorded: every global model with the round's train config (``metadata["train_config"]``); every update
    with ``num_examples`` (the strategy's ``weighted_by_key``, ``"num-examples"`` by default), every finite metric
    the client reported (``metadata["client_metrics"]``; missing or non-finite values are dropped, never fatal),
    its Flower node id, and the recipe (declared fields + the round's learning rate). Clients get small stable
    ids (0, 1, 2, ... in order of their node ids when first seen; a client may send ``"client-id"`` itself);
    ``store.json`` maps node ids to them (``server.clients``). Rounds are 0-based in the store: Flower's server
    round ``r`` is store round ``r - 1``.
    """

    def __init__(self, inner: Any, store: UpdateStore | str | os.PathLike[str], model: nn.Module, *,
                 model_spec: str | ModelSpec | None = None, input_spec: InputSpec | Mapping[str, Any] | None = None,
                 recipe: LocalRecipe | Mapping[str, Any] | None = None, lr_key: str | None = None) -> None:
        require_flower()
        if not isinstance(inner, _FlowerStrategy):
            raise TypeError(f"inner must be a Flower Strategy, got {type(inner).__name__}")
        spec = ModelSpec(model_spec) if isinstance(model_spec, str) else model_spec
        if isinstance(store, UpdateStore):
            if spec is not None and store.model_spec is None:
                store = UpdateStore(store.path, model_spec=spec)
        else:
            path = Path(store).expanduser().resolve()
            store = UpdateStore(path, model_spec=spec)
            log_info(f"gradleak: recording this run into {path}")
        self.inner, self.store, self.model = inner, store, model
        self.input_spec = (input_spec if isinstance(input_spec, InputSpec) or input_spec is None
                           else InputSpec.from_json(input_spec))
        if isinstance(recipe, LocalRecipe):
            recipe = {k: v for k, v in recipe.to_json().items() if k != "step_transforms"}
        self.recipe = dict(recipe or {})
        if self.recipe:
            LocalRecipe.from_json({k: v for k, v in self.recipe.items()})  # fail now on unknown fields
        self.lr_key = lr_key
        self._global: GlobalState | None = None
        self._config: dict[str, Any] = {}
        self._clients: dict[int, int] = {}
        self._started = False

    def _start(self) -> None:
        if self.store.global_rounds() or self.store.rounds():
            raise RunMismatchError(
                f"{self.store.path} already holds a recorded run (rounds {self.store.global_rounds()}); a store "
                "holds one run and a Flower run cannot be resumed: record this run into another folder")
        info: dict[str, Any] = {"engine": "flower"}
        if self.input_spec is not None:
            info["input"] = self.input_spec.to_json()
        if self.recipe:
            info["recipe"] = self.recipe
        self.store.update_server_info(**info)
        self._started = True

    def _client_id(self, node_id: int, metrics: dict[str, Any]) -> int:
        own = metrics.get("client-id")
        if isinstance(own, int) and not isinstance(own, bool) and own >= 0:
            return own
        if node_id not in self._clients:
            self._clients[node_id] = len(self._clients)
            self.store.update_server_info(clients={str(k): v for k, v in self._clients.items()})
        return self._clients[node_id]

    def _round_recipe(self) -> dict[str, Any] | None:
        fields = dict(self.recipe)
        if "lr" not in fields:
            keys = (self.lr_key,) if self.lr_key else _LR_KEYS
            lr = next((self._config[k] for k in keys if isinstance(self._config.get(k), int | float)), None)
            if lr is None:
                return None
            fields["lr"] = float(lr)
        if "batch_size" not in fields:
            return None
        return {k: v for k, v in LocalRecipe.from_json(fields).to_json().items() if k != "step_transforms"}

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
        if not self._started:
            self._start()
        params, buffers = split_state(self.model, arrays.to_torch_state_dict())
        self._config = _json_record(config)
        self._global = GlobalState(round=server_round - 1, params=params, buffers=buffers,
                                   metadata={"train_config": self._config})
        if server_round - 1 == 0 or not self.store.has_global(server_round - 1):
            self.store.save_global(self._global, overwrite=True)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> tuple[Any, Any]:
        replies = list(replies)
        if self._global is None:
            raise GradleakError("aggregate_train before configure_train: the global state is unknown")
        weight_key = getattr(self.inner, "weighted_by_key", "num-examples")
        recipe = self._round_recipe()
        order = sorted((r for r in replies if not r.has_error()), key=lambda m: int(m.metadata.src_node_id))
        for msg in order:
            metrics = _json_record(msg.content["metrics"] if "metrics" in msg.content else {})
            node = int(msg.metadata.src_node_id)
            client = self._client_id(node, metrics)
            params, buffers = split_state(self.model, msg.content["arrays"].to_torch_state_dict())
            examples = metrics.get(weight_key)
            metadata: dict[str, Any] = {"flower_node_id": node, "client_metrics": metrics}
            if recipe is not None:
                metadata["recipe"] = recipe
            self.store.save_update(ClientUpdate(
                client=client, round=server_round - 1,
                delta={k: params[k] - self._global.params[k] for k in params}, buffers=buffers,
                num_examples=int(examples) if isinstance(examples, int | float) and examples >= 0 else 0,
                metadata=metadata,
            ), overwrite=True)
        arrays, agg_metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is not None:
            params, buffers = split_state(self.model, arrays.to_torch_state_dict())
            self.store.save_global(GlobalState(round=server_round, params=params, buffers=buffers), overwrite=True)
        return arrays, agg_metrics

    def configure_evaluate(self, *args: Any, **kwargs: Any) -> Iterable[Any]:
        return self.inner.configure_evaluate(*args, **kwargs)

    def aggregate_evaluate(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.aggregate_evaluate(*args, **kwargs)

    def summary(self) -> None:
        self.inner.summary()


def log_info(text: str) -> None:
    """Log through Flower's logger (so it shows in ``flwr run --stream`` / ``flwr log``)."""
    try:
        from logging import INFO

        from flwr.common.logger import log

        log(INFO, text)
    except ImportError:  # pragma: no cover - Flower is required for this module anyway
        pass


def run_flower_simulation(
    model: ModelSpec | Any,
    clients: Sequence[FLClient],
    *,
    rounds: int,
    store: UpdateStore,
    seed: int = 0,
    num_cpus_per_client: float = 1.0,
    mods: Sequence[Any] = (),
    initial: GlobalState | None = None,
) -> GlobalState:
    """Run the scenario through Flower's simulation engine (Ray backend), recording into ``store``.

    Uses the same seeds as :class:`FedAvgSimulation` (initial model, per-round client seeds), all clients
    every round; ``mods`` are the client app's Flower mods; ``initial`` replaces the seeded initial model.
    Returns the final global state (round ``rounds``) as recorded.
    """
    require_flower()
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    from flwr.app import ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    sim = FedAvgSimulation(model, clients, rounds=rounds, seed=seed)
    initial = initial if initial is not None else sim.initial_state()
    n = len(clients)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        strategy = RecordingStrategy(inner, store, sim.model)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial.state_dict()), num_rounds=rounds)

    run_simulation(
        server_app=server,
        client_app=make_client_app(sim, mods=mods),
        num_supernodes=n,
        backend_config={"client_resources": {"num_cpus": num_cpus_per_client, "num_gpus": 0.0}},
    )
    if not store.has_global(rounds):
        raise GradleakError(f"the Flower simulation ended without recording round {rounds}; see its log above")
    return store.load_global(round=rounds, model=sim.model)
