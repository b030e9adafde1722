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

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.fl.federation import FedAvgSimulation, FLClient
from gradleak.fl.store import UpdateStore
from gradleak.records import ClientUpdate, GlobalState, ModelSpec

__all__ = ["RecordingStrategy", "make_client_app", "require_flower", "run_flower_simulation"]

try:  # this module is only imported by code that uses Flower; gradleak itself never imports it
    from flwr.serverapp.strategy import Strategy as _FlowerStrategy
except ImportError:  # pragma: no cover - depends on the environment
    _FlowerStrategy = object


def require_flower() -> Any:
    """Import ``flwr`` or fail with the install hint."""
    try:
        import flwr
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise GradleakError(
            "Flower is not installed; install the optional extra: pip install 'gradleak[flower]'"
        ) from exc
    return flwr


def _split_state(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Parameters and buffers of a Flower state dict, in the model's dtypes (Flower's FedAvg turns the
    integer ``num_batches_tracked`` into a float average; it is rounded back, as gradleak's FedAvg does)."""

    def cast(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return value.clone() if like.is_floating_point() else value.round().to(like.dtype)

    params = {k: cast(state[k], v) for k, v in model.named_parameters()}
    buffers = {k: cast(state[k], v) for k, v in model.named_buffers()}
    return params, buffers


def make_client_app(sim: FedAvgSimulation) -> Any:
    """A Flower ``ClientApp`` whose node with ``partition-id`` *i* is ``sim.clients[i]``."""
    require_flower()
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client: FLClient = sim.clients[int(context.node_config["partition-id"])]
        round_ = int(msg.content["config"]["server-round"]) - 1
        params, buffers = _split_state(sim.model, msg.content["arrays"].to_torch_state_dict())
        update = sim.client_update(client, GlobalState(round=round_, params=params, buffers=buffers))
        new_state = {k: params[k] + update.delta[k] for k in params} | dict(update.buffers)
        metrics = MetricRecord({"num-examples": update.num_examples, "client-id": client.id,
                                "train-loss": float(update.metadata["train_loss"])})
        return Message(content=RecordDict({"arrays": ArrayRecord(new_state), "metrics": metrics}), reply_to=msg)

    return app


class RecordingStrategy(_FlowerStrategy):
    """Wrap a Flower strategy so that everything the server receives is recorded.

    Parameters
    ----------
    inner
        The strategy that does the work (e.g. ``flwr.serverapp.strategy.FedAvg``).
    store
        Where updates (as deltas against the round's global model) and global states go.
    model
        The architecture, to split state dicts into parameters and buffers and to validate records.
    """

    def __init__(self, inner: Any, store: UpdateStore, model: nn.Module) -> None:
        require_flower()
        if not isinstance(inner, _FlowerStrategy):
            raise TypeError(f"inner must be a Flower Strategy, got {type(inner).__name__}")
        self.inner, self.store, self.model = inner, store, model
        self._global: GlobalState | None = None

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
        params, buffers = _split_state(self.model, arrays.to_torch_state_dict())
        self._global = GlobalState(round=server_round - 1, params=params, buffers=buffers)
        if not self.store.has_global(server_round - 1):
            self.store.save_global(self._global)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> tuple[Any, Any]:
        replies = list(replies)
        if self._global is None:
            raise GradleakError("aggregate_train before configure_train: the global state is unknown")
        for msg in replies:
            if msg.has_error():
                continue
            metrics = msg.content["metrics"] if "metrics" in msg.content else {}
            client = int(metrics.get("client-id", msg.metadata.src_node_id))
            params, buffers = _split_state(self.model, msg.content["arrays"].to_torch_state_dict())
            self.store.save_update(ClientUpdate(
                client=client, round=server_round - 1,
                delta={k: params[k] - self._global.params[k] for k in params},
                buffers=buffers, num_examples=int(metrics.get("num-examples", 1)),
                metadata={"flower_node_id": int(msg.metadata.src_node_id),
                          "train_loss": float(metrics.get("train-loss", float("nan")))},
            ), overwrite=True)
        arrays, agg_metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is not None:
            params, buffers = _split_state(self.model, arrays.to_torch_state_dict())
            self.store.save_global(GlobalState(round=server_round, params=params, buffers=buffers), overwrite=True)
        return arrays, agg_metrics

    def configure_evaluate(self, *args: Any, **kwargs: Any) -> Iterable[Any]:
        return self.inner.configure_evaluate(*args, **kwargs)

    def aggregate_evaluate(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.aggregate_evaluate(*args, **kwargs)

    def summary(self) -> None:
        self.inner.summary()


def run_flower_simulation(
    model: ModelSpec | Any,
    clients: Sequence[FLClient],
    *,
    rounds: int,
    store: UpdateStore,
    seed: int = 0,
    num_cpus_per_client: float = 1.0,
) -> GlobalState:
    """Run the scenario through Flower's simulation engine (Ray backend), recording into ``store``.

    Uses the same seeds as :class:`FedAvgSimulation` (initial model, per-round client seeds), all clients
    every round. Returns the final global state (round ``rounds``) as recorded.
    """
    require_flower()
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    from flwr.app import ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    sim = FedAvgSimulation(model, clients, rounds=rounds, seed=seed)
    initial = sim.initial_state()
    n = len(clients)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        strategy = RecordingStrategy(inner, store, sim.model)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial.state_dict()), num_rounds=rounds)

    run_simulation(
        server_app=server,
        client_app=make_client_app(sim),
        num_supernodes=n,
        backend_config={"client_resources": {"num_cpus": num_cpus_per_client, "num_gpus": 0.0}},
    )
    if not store.has_global(rounds):
        raise GradleakError(f"the Flower simulation ended without recording round {rounds}; see its log above")
    return store.load_global(round=rounds, model=sim.model)
