"""NVIDIA FLARE integration: client-side defense and leakage-gate filters, a server-side update recorder.

Install with ``pip install 'gradleak[nvflare]'`` (NVFlare 2.9). All three are NVFlare *filters* — the mechanism
NVFlare documents for privacy on the client and for inspecting what crosses the wire (task-data filters act on
what the server sends, task-result filters on what a client returns). Filters work with every workflow
(the ``FedAvgRecipe``'s controller, ``ScatterAndGather``, your own), which is why the recorder is one too.

- :class:`DefenseFilter` (client, task result): gradleak's update-stage defenses by name on the update a
  site sends, e.g. ``local-gaussian`` with ``sigma0`` and ``percentile`` (the hospital paper's
  ``GaussianPrivacy`` filter), ``prune-update``, ``withhold-bn``, ``withhold-layers``, ``laplace``.
- :class:`LeakageGateFilter` (client, task result): :class:`gradleak.gate.LeakageGate` on the site's own
  update — pass, add noise until no image leaks, or block with NVFlare's ``ContentBlockedException`` (the
  server then receives ``TASK_RESULT_FILTER_ERROR`` and aggregates without this site). The evidence is written
  on the site, never sent.
- :class:`UpdateRecorder` (server, task data *and* task result): every global model the server sends and
  every update it receives, into a gradleak :class:`~gradleak.fl.store.UpdateStore`, so that
  ``gradleak attack --store`` works on a real NVFlare run.

Filters are configured with JSON-like arguments (NVFlare writes them into the job's config): models, data
and priors are given by import path (``"mypackage.model:Net"``, ``"mypackage.data:site_images"``).
:func:`record_updates`, :func:`add_leakage_gate` and :func:`add_defenses` add them to a recipe.

Examples
--------
>>> recipe = FedAvgRecipe(name="hospital", model=Net(), min_clients=3, train_script="client.py")  # doctest: +SKIP
>>> record_updates(recipe, "/data/store", model="model:Net", input_spec={"size": 28, "channels": 1})  # doctest: +SKIP
>>> add_leakage_gate(recipe, ["site-1"], model="model:Net", data="data:site_images", ...)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.fl.local import model_state
from gradleak.fl.recipe import LocalRecipe
from gradleak.fl.store import UpdateStore
from gradleak.models import ModelSpec
from gradleak.models.zoo import import_callable
from gradleak.records import ClientUpdate, GlobalState, InputSpec

try:
    from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
    from nvflare.apis.dxo_filter import DXOFilter
    from nvflare.apis.event_type import EventType
    from nvflare.apis.filter import ContentBlockedException, Filter, FilterChainType, FilterContextKey
    from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.app_common.app_constant import AppConstants
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise GradleakError("gradleak's NVFlare integration needs NVFlare: pip install 'gradleak[nvflare]'") from exc

__all__ = ["DefenseFilter", "LeakageGateFilter", "UpdateRecorder", "add_defenses", "add_leakage_gate",
           "record_updates"]

_WEIGHT_KINDS = [DataKind.WEIGHTS, DataKind.WEIGHT_DIFF]
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path), threading.Lock())


def _to_tensors(data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for k, v in data.items()}


def _like(value: torch.Tensor, original: Any) -> Any:
    """``value`` in the container type and dtype of ``original`` (numpy array or tensor)."""
    if isinstance(original, torch.Tensor):
        return value.to(original.dtype)
    return value.detach().cpu().numpy().astype(np.asarray(original).dtype, copy=False)


def _split(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    params, buffers = model_state(model)
    missing = [k for k in params if k not in state]
    if missing:
        raise GradleakError(f"the exchanged model lacks parameters {missing[:3]}: is the filter's model the one "
                            "the job trains?")
    return ({k: state[k].to(params[k].dtype) for k in params},
            {k: state[k].to(buffers[k].dtype) for k in buffers if k in state})


def _delta(dxo: DXO, glob_params: Mapping[str, torch.Tensor],
           glob_buffers: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """A WEIGHTS or WEIGHT_DIFF result as gradleak's (delta, buffers) against the global model it answers."""
    result = _to_tensors(dxo.data)  # a defense may have withheld layers or buffers: what is there counts
    if dxo.data_kind == DataKind.WEIGHT_DIFF:
        delta = {k: result[k].to(v.dtype) for k, v in glob_params.items() if k in result}
        buffers = {k: v + result[k].to(v.dtype) for k, v in glob_buffers.items() if k in result}
    else:
        delta = {k: result[k].to(v.dtype) - v for k, v in glob_params.items() if k in result}
        buffers = {k: result[k].to(v.dtype) for k, v in glob_buffers.items() if k in result}
    if not delta:
        raise GradleakError("the result holds none of the model's parameters: is the filter's model the one the "
                            "job trains?")
    return delta, buffers


def _round(shareable: Shareable, fl_ctx: FLContext) -> int:
    value = shareable.get_header(AppConstants.CURRENT_ROUND)
    if value is None:
        value = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
    if value is None:
        raise GradleakError("the shareable carries no current_round header: cannot tell the round")
    return int(value)


class _GlobalTracker(Filter):
    """Keeps the global model a client last received (the task data), to turn its result into an update."""

    def _init_tracker(self) -> None:
        self._received: dict[str, Any] | None = None
        self._received_round: int | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.BEFORE_TASK_EXECUTION:
            task = fl_ctx.get_prop(FLContextKey.TASK_DATA)
            self._received, self._received_round = None, None
            if isinstance(task, Shareable):
                try:
                    dxo = from_shareable(task)
                except Exception:  # a task without a DXO (e.g. a metrics request)
                    dxo = None
                if dxo is not None and dxo.data_kind == DataKind.WEIGHTS and isinstance(dxo.data, dict):
                    self._received = dict(dxo.data)
                    round_ = task.get_header(AppConstants.CURRENT_ROUND)
                    self._received_round = int(round_) if round_ is not None else None

    def _update_from(self, dxo: DXO, model: nn.Module, site: str, round_: int) -> tuple[ClientUpdate, dict]:
        """The result ``dxo`` as a gradleak update, and the global state dict (tensors) it answers."""
        if self._received is None:
            raise GradleakError(f"{type(self).__name__}: no global model was received before this result")
        if self._received_round is not None and self._received_round != round_:
            raise GradleakError(f"{type(self).__name__}: a result of round {round_} answers the global model of "
                                f"round {self._received_round}")
        g_params, g_buffers = _split(model, _to_tensors(self._received))
        delta, buffers = _delta(dxo, g_params, g_buffers)
        examples = dxo.get_meta_prop("num_examples")
        update = ClientUpdate(client=0, round=round_, delta=delta, buffers=buffers,
                              num_examples=int(examples) if isinstance(examples, int | float) else 0,
                              metadata={"site": site})
        return update, {**g_params, **g_buffers}

    @staticmethod
    def _to_dxo(dxo: DXO, original: ClientUpdate, update: ClientUpdate,
                global_state: Mapping[str, torch.Tensor]) -> DXO:
        """``dxo`` with its tensors replaced by ``update``'s (same kind, containers and dtypes); what a defense
        withheld from ``original`` (layers, BatchNorm buffers) is left out."""
        withheld = ({k for k in original.delta if k not in update.delta}
                    | {k for k in original.buffers if k not in update.buffers})
        data = {k: v for k, v in dxo.data.items() if k not in withheld}
        for k, d in update.delta.items():
            value = d if dxo.data_kind == DataKind.WEIGHT_DIFF else global_state[k] + d
            data[k] = _like(value, data[k])
        return DXO(data_kind=dxo.data_kind, data=data, meta=dict(dxo.meta))


class DefenseFilter(DXOFilter, _GlobalTracker):
    """Client-side task-result filter: gradleak's update-stage defenses on the update the site sends.

    Parameters
    ----------
    defenses
        Update-stage defenses by name or ``{"name", "options"}``: ``local-gaussian`` (``sigma0``,
        ``percentile``: the hospital paper's ``GaussianPrivacy`` filter), ``laplace``, ``prune-update``,
        ``withhold-bn``, ``withhold-layers``. Model- and step-stage defenses change training itself: put them in
        the training script (``gradleak.defenses``); aggregate-stage ones belong to the server.
    model
        The architecture by import path or registry name (to tell parameters from buffers).
    seed
        Seeds the noise (for reproducible tests only: ``None`` draws it from the operating system).
    """

    def __init__(self, defenses: list, model: str, seed: int | None = None) -> None:
        DXOFilter.__init__(self, supported_data_kinds=_WEIGHT_KINDS, data_kinds_to_filter=_WEIGHT_KINDS)
        self._init_tracker()
        from gradleak.defenses import UpdateDefense, by_stage, resolve_defenses

        self.defenses, self.model, self.seed = list(defenses), model, seed
        resolved = resolve_defenses(self.defenses)
        wrong = [d.name for d in resolved if not isinstance(d, UpdateDefense)]
        if wrong:
            raise GradleakError(f"DefenseFilter applies update-stage defenses only; {wrong} act elsewhere")
        self._defenses = by_stage(resolved)["update"]
        self._model = ModelSpec(model).build()
        self._generator = torch.Generator()
        self._generator.manual_seed(seed if seed is not None else secrets.randbits(62))

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        site = fl_ctx.get_identity_name()
        original, global_state = self._update_from(dxo, self._model, site, _round(shareable, fl_ctx))
        update = original
        for defense in self._defenses:
            update = defense(update, self._generator)
        self.log_info(fl_ctx, f"gradleak: applied {[d.name for d in self._defenses]} to {site}'s update")
        return self._to_dxo(dxo, original, update, global_state)


class LeakageGateFilter(DXOFilter, _GlobalTracker):
    """Client-side task-result filter: the leakage gate (:class:`gradleak.gate.LeakageGate`) on the site's update.

    Put it last in the site's result filters (after any :class:`DefenseFilter`): it audits exactly what leaves.

    Parameters
    ----------
    model
        The architecture by import path (``"mypackage.model:Net"``) or gradleak registry name.
    data
        Import path of a function ``(site_name) -> (images, labels)``: the site's training images
        ``(N, C, H, W)`` in ``[0, 1]`` (before normalisation) and labels, as the training script uses them.
    prior
        Import path of a function ``() -> image``: what an attacker knows without the update, ``(C, H, W)`` in
        ``[0, 1]`` (e.g. the mean of public images of the domain).
    recipe
        The site's local training as :class:`~gradleak.fl.LocalRecipe` fields (``optimizer``, ``lr``,
        ``momentum``, ``batch_size``, ``epochs``, ...).
    input_spec
        ``{"mean": [...], "std": [...]}``: the normalisation the training script applies.
    attacks, ladder, percentile, on_leak, tau, restarts, max_seconds, seed, noise_seed
        The gate's settings (:class:`gradleak.gate.LeakageGate`; ``noise_seed`` only to reproduce a test).
    defenses
        Defenses the site applied before this filter (the server knows they are in use).
    evidence_dir
        Where each decision's evidence goes on the site (``<dir>/<site>/round_<r>.json`` and ``.npz``).
    """

    def __init__(self, model: str, data: str, prior: str, recipe: dict, input_spec: dict | None = None,
                 attacks: Any = "fedavg-inversion", ladder: list | None = None, percentile: float = 95.0,
                 on_leak: str = "escalate", tau: float = 0.5, restarts: int = 3, max_seconds: float | None = None,
                 seed: int = 0, noise_seed: int | None = None, defenses: list | None = None,
                 evidence_dir: str = "gradleak-gate") -> None:
        DXOFilter.__init__(self, supported_data_kinds=_WEIGHT_KINDS, data_kinds_to_filter=_WEIGHT_KINDS)
        self._init_tracker()
        from gradleak.gate import LeakageGate

        self.model, self.data, self.prior, self.recipe = model, data, prior, dict(recipe)
        self.input_spec = dict(input_spec or {})
        self.attacks, self.ladder, self.percentile, self.on_leak = attacks, ladder, percentile, on_leak
        self.tau, self.restarts, self.max_seconds = tau, restarts, max_seconds
        self.seed, self.noise_seed = seed, noise_seed
        self.defenses, self.evidence_dir = list(defenses or []), evidence_dir
        self._recipe = LocalRecipe.from_json(self.recipe)
        self._gate = LeakageGate(attacks, ladder=(0.1, 0.3, 1.0) if ladder is None else ladder,
                                 percentile=percentile, on_leak=on_leak, tau=tau,  # type: ignore[arg-type]
                                 restarts=restarts, max_seconds=max_seconds, seed=seed, noise_seed=noise_seed)
        self._model = ModelSpec(model).build()
        self._data_fn: Callable[[str], Any] = import_callable(data, "LeakageGateFilter data")
        self._prior_fn: Callable[[], Any] = import_callable(prior, "LeakageGateFilter prior")

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        site = fl_ctx.get_identity_name()
        round_ = _round(shareable, fl_ctx)
        update, global_state = self._update_from(dxo, self._model, site, round_)
        images, labels = self._data_fn(site)
        images, labels = torch.as_tensor(images).float(), torch.as_tensor(labels).long().reshape(-1)
        update = dataclasses.replace(update, num_examples=len(images))
        prior = torch.as_tensor(self._prior_fn()).float()
        params, buffers = _split(self._model, global_state)
        state = GlobalState(round=round_, params=params, buffers=buffers)
        mean, std = self.input_spec.get("mean", [0.0]), self.input_spec.get("std", [1.0])
        decision = self._gate.check(self._model, state, update, images, labels, recipe=self._recipe, prior=prior,
                                    mean=mean, std=std, defenses=self.defenses)
        path = decision.save(Path(self.evidence_dir) / site, name=f"round_{round_:05d}")
        self.log_info(fl_ctx, f"gradleak gate ({site}, round {round_}): {decision.action} — {decision.reason} "
                              f"[{decision.wall_time:.1f} s; evidence {path}]")
        if decision.action == "block":
            raise ContentBlockedException(f"gradleak leakage gate blocked {site}'s update: {decision.reason}")
        if decision.action == "pass":
            return None
        return self._to_dxo(dxo, update, decision.update, global_state)  # type: ignore[arg-type]


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
        with _lock(self._path):
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
        if dxo.data_kind not in _WEIGHT_KINDS or not isinstance(dxo.data, dict):
            return
        round_ = _round(shareable, fl_ctx)
        with _lock(self._path):
            store = self._open()
            assert self._model is not None
            if self.get_prop(FilterContextKey.CHAIN_TYPE) == FilterChainType.TASK_DATA_CHAIN:
                if dxo.data_kind == DataKind.WEIGHTS and not store.has_global(round_):
                    params, buffers = _split(self._model, _to_tensors(dxo.data))
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
        delta, buffers = _delta(dxo, glob.params, glob.buffers)
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


def _app_packages(recipe: Any) -> None:
    """Tell the Job API that gradleak is an installed package, not custom code to copy into the job."""
    job = getattr(recipe, "_job", recipe)  # a Recipe, or a FedJob
    current = list(getattr(getattr(job, "job", None), "app_packages", None) or [])
    if "gradleak" not in current:
        job.set_app_packages([*current, "gradleak"])


def record_updates(recipe: Any, store: str | Path, *, model: str, input_spec: dict | None = None,
                   recipe_fields: dict | None = None, sites: Sequence[str] = (),
                   examples_key: str = "num_examples", tasks: Sequence[str] = ("train",)) -> None:
    """Add an :class:`UpdateRecorder` to ``recipe`` (an NVFlare Recipe) as server output and input filter for
    ``tasks`` (NVFlare matches filters to task names literally; the FedAvg recipes' task is ``"train"``)."""
    path = str(Path(store).expanduser().resolve())
    for add in (recipe.add_server_output_filter, recipe.add_server_input_filter):
        add(UpdateRecorder(path, model, input_spec=input_spec, recipe=recipe_fields, sites=list(sites),
                           examples_key=examples_key), tasks=list(tasks))
    _app_packages(recipe)


def add_defenses(recipe: Any, defenses: list, *, model: str, sites: Sequence[str] | None = None,
                 seed: int | None = None, tasks: Sequence[str] = ("train",)) -> None:
    """Add a :class:`DefenseFilter` to the result filters of ``sites`` (all when ``None``) for ``tasks``."""
    recipe.add_client_output_filter(DefenseFilter(defenses, model, seed=seed), tasks=list(tasks),
                                    clients=list(sites) if sites is not None else None)
    _app_packages(recipe)


def add_leakage_gate(recipe: Any, sites: Sequence[str] | None, /, *, tasks: Sequence[str] = ("train",),
                     **options: Any) -> None:
    """Add a :class:`LeakageGateFilter` (``options``: its parameters) to the result filters of ``sites`` (all when
    ``None``) for ``tasks``."""
    recipe.add_client_output_filter(LeakageGateFilter(**options), tasks=list(tasks),
                                    clients=list(sites) if sites is not None else None)
    _app_packages(recipe)

