"""Client-side NVFlare filters: gradleak's update-stage defenses (:class:`DefenseFilter`) and the leakage
gate (:class:`LeakageGateFilter`) on the update a site sends."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from nvflare.apis.dxo import DXO
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.filter import ContentBlockedException
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from gradleak.errors import GradleakError
from gradleak.fl.nvflare.common import WEIGHT_KINDS, GlobalTracker, round_of, split_state
from gradleak.fl.recipe import LocalRecipe
from gradleak.models import ModelSpec
from gradleak.models.zoo import import_callable
from gradleak.records import GlobalState

__all__ = ["DefenseFilter", "LeakageGateFilter"]


class DefenseFilter(DXOFilter, GlobalTracker):
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
        DXOFilter.__init__(self, supported_data_kinds=WEIGHT_KINDS, data_kinds_to_filter=WEIGHT_KINDS)
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
        original, global_state = self._update_from(dxo, self._model, site, round_of(shareable, fl_ctx))
        update = original
        for defense in self._defenses:
            update = defense(update, self._generator)
        self.log_info(fl_ctx, f"gradleak: applied {[d.name for d in self._defenses]} to {site}'s update")
        return self._to_dxo(dxo, original, update, global_state)


class LeakageGateFilter(DXOFilter, GlobalTracker):
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
        DXOFilter.__init__(self, supported_data_kinds=WEIGHT_KINDS, data_kinds_to_filter=WEIGHT_KINDS)
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
        round_ = round_of(shareable, fl_ctx)
        update, global_state = self._update_from(dxo, self._model, site, round_)
        images, labels = self._data_fn(site)
        images, labels = torch.as_tensor(images).float(), torch.as_tensor(labels).long().reshape(-1)
        update = dataclasses.replace(update, num_examples=len(images))
        prior = torch.as_tensor(self._prior_fn()).float()
        params, buffers = split_state(self._model, global_state)
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
