"""Server-side NVFlare filter that records every global model sent and update received into an UpdateStore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import Filter, FilterChainType, FilterContextKey
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from torch import nn

from gradleak.errors import GradleakError
from gradleak.fl.nvflare.common import WEIGHT_KINDS, delta_of, round_of, site_lock, split_state, to_tensors
from gradleak.fl.recipe import LocalRecipe
from gradleak.fl.store import UpdateStore
from gradleak.models import ModelSpec
from gradleak.records import ClientUpdate, GlobalState, InputSpec

__all__ = ["UpdateRecorder"]


class UpdateRecorder(Filter):
    """Server-side filter: record every global model sent and every client update received in an UpdateStore.

    Add the *same* settings twice — as a server output (task data) filter and a server input (task result)
    filter (:func:`record_updates` does both): on task data it records the round's global model (round
    ``current_round``, once), on task results the site's update as a delta against that model (WEIGHTS or
    WEIGHT_DIFF results; BatchNorm buffers as sent). The last round's aggregate is never sent as task data, so
    it is not recorded (NVFlare's model persistor saves it). A recording error is logged; the run goes on.

    Parameters
    ----------
    store
        The store's folder (absolute). A store holds one run: one that already holds records stops the job.
    model
        The architecture by import path (``"mypackage.model:Net"``) or registry name; recorded as the store's
        model spec, so that ``gradleak attack --store`` rebuilds it (run it where that import works).
    input_spec
        What the model takes (``size``, ``channels``, ``mean``, ``std``).
    recipe
        The clients' local training as you declare it (``optimizer``, ``lr``, ``batch_size``, ``epochs``, ...).
    sites
        Site names in the order of their store ids (``["site-1", "site-2", ...]`` → 0, 1, ...). Sites not
        listed get the next free ids in the order first seen. ``store.json`` maps names to ids.
    examples_key
        The DXO meta key where a client reports its number of training examples (``FLModel(meta=...)``);
        NVFlare's own ``NUM_STEPS_CURRENT_ROUND`` counts steps, not images. Missing: recorded as 0.
    """

    def __init__(self, store: str, model: str, input_spec: dict | None = None, recipe: dict | None = None,
                 sites: list | None = None, examples_key: str = "num_examples") -> None:
        super().__init__()
        self.store, self.model, self.input_spec = store, model, input_spec
        self.recipe, self.sites, self.examples_key = recipe, list(sites or []), examples_key
        if recipe:
            LocalRecipe.from_json(dict(recipe))  # fail now on unknown fields
        if input_spec:
            InputSpec.from_json(dict(input_spec))
        self._path = Path(store).expanduser().resolve()
        self._model: nn.Module | None = None
        self._store: UpdateStore | None = None

    def _open(self) -> UpdateStore:
        if self._store is None:
            self._model = ModelSpec(self.model).build()
            self._store = UpdateStore(self._path, model_spec=ModelSpec(self.model))
        return self._store

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.START_RUN:
            return
        chain = self.get_prop(FilterContextKey.CHAIN_TYPE)
        if chain != FilterChainType.TASK_DATA_CHAIN:
            return  # the task-data instance checks and describes the store, once
        with site_lock(self._path):
            store = self._open()
            if store.global_rounds() or store.rounds():
                self.system_panic(f"gradleak: {self._path} already holds a recorded run; a store holds one run: "
                                  "record this run into another folder", fl_ctx)
                return
            info: dict[str, Any] = {"engine": "nvflare", "clients": {s: i for i, s in enumerate(self.sites)}}
            if self.input_spec:
                info["input"] = InputSpec.from_json(dict(self.input_spec)).to_json()
            if self.recipe:
                info["recipe"] = {k: v for k, v in LocalRecipe.from_json(dict(self.recipe)).to_json().items()
                                  if k != "step_transforms"}
            store.update_server_info(**info)
        self.log_info(fl_ctx, f"gradleak: recording this run into {self._path}")

    def _client_id(self, store: UpdateStore, site: str) -> int:
        clients = dict(store.server_info.get("clients") or {})
        if site not in clients:
            clients[site] = max(clients.values(), default=-1) + 1
            store.update_server_info(clients=clients)
        return int(clients[site])

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Record what passes (never changes it). A recording error is logged and the run goes on."""
        try:
            self._record(shareable, fl_ctx)
        except Exception as exc:  # the federation must not stop because its recorder failed
            self.log_exception(fl_ctx, f"gradleak: not recorded: {type(exc).__name__}: {exc}")
        return shareable

    def _record(self, shareable: Shareable, fl_ctx: FLContext) -> None:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return
        try:
            dxo = from_shareable(shareable)
        except Exception:  # not a DXO: nothing to record
            return
        if dxo.data_kind not in WEIGHT_KINDS or not isinstance(dxo.data, dict):
            return
        round_ = round_of(shareable, fl_ctx)
        with site_lock(self._path):
            store = self._open()
            assert self._model is not None
            if self.get_prop(FilterContextKey.CHAIN_TYPE) == FilterChainType.TASK_DATA_CHAIN:
                if dxo.data_kind == DataKind.WEIGHTS and not store.has_global(round_):
                    params, buffers = split_state(self._model, to_tensors(dxo.data))
                    store.save_global(GlobalState(round=round_, params=params, buffers=buffers, metadata={
                        "nvflare_task": shareable.get_header(ReservedKey.TASK_NAME)}))
                return
            peer = fl_ctx.get_peer_context()
            self._record_result(store, dxo, peer.get_identity_name() if peer else "unknown", round_)

    def _record_result(self, store: UpdateStore, dxo: DXO, site: str, round_: int) -> None:
        assert self._model is not None
        if not store.has_global(round_):
            raise GradleakError(f"no global model recorded for round {round_}: add the recorder as a server "
                                "output (task data) filter too (record_updates does both)")
        glob = store.load_global(round_, model=self._model)
        delta, buffers = delta_of(dxo, glob.params, glob.buffers)
        examples = dxo.get_meta_prop(self.examples_key)
        metrics = dxo.get_meta_prop(MetaKey.INITIAL_METRICS) or {}
        metadata: dict[str, Any] = {"nvflare_site": site, "client_metrics": {
            k: float(v) for k, v in dict(metrics).items() if isinstance(v, int | float) and np.isfinite(v)}}
        if self.recipe:
            metadata["recipe"] = store.server_info.get("recipe")
        store.save_update(ClientUpdate(
            client=self._client_id(store, site), round=round_, delta=delta, buffers=buffers,
            num_examples=int(examples) if isinstance(examples, int | float) and examples >= 0 else 0,
            metadata=metadata), overwrite=True)
