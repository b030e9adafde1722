"""The client-side leakage gate: a client attacks its own update before it leaves, and decides what to send.

Hatamizadeh et al. (TMI 2023, the hospital paper) ran the attack and the relative data-leakage value (RDLV)
as a filter on the client: the update is inverted on site, where the real images are, and an update whose
images are recognisable is not sent as it is. :class:`LeakageGate` is that filter for any engine (NVFlare:
:mod:`gradleak.fl.nvflare`; Flower: :class:`gradleak.fl.flower_mods.LeakageGateMod`; your own loop: call
:meth:`LeakageGate.check`).

What it does with one update:

1. It attacks the update *as the server would see it*: after the client's own update-stage defenses, with the
   round's global model, the client's recipe and number of images, and the attacker's prior — the view of an
   honest-but-curious server (:data:`gradleak.audit.THREATS` ``"honest"``). Every configured attack runs.
2. It grades every reconstruction against the client's real images with :func:`gradleak.metrics.grade`, the
   one grading function: an image leaks when SSIM > τ, RDLV > 0 and the reconstruction is closer to the
   original than to the prior (the report's rule).
3. No image leaks under any attack: **pass** — the update goes out unchanged. Otherwise, with
   ``on_leak="escalate"``, it adds the hospital paper's local Gaussian noise (σ = σ0 × the 95th percentile of
   |ΔW|) at the next σ0 of ``ladder`` and attacks the *noised update it would send* again; the first σ0 under
   which nothing leaks is sent (**escalate**). With ``on_leak="block"``, or when the ladder or the wall-time
   budget runs out first, the update is **blocked**.

The decision carries its evidence (:class:`GateDecision`: per step σ0, each attack's budget, SSIM, RDLV and
the verdict of every image, wall times): a record for the client to keep. Nothing of it is sent.

Cost. Each ladder step runs every attack once (all restarts together): the price of one attack (for
``fedavg-inversion`` the client's local training replayed with double backward, per iteration) times the steps
tried; it grows with the model, the client's images and its local steps. A "pass" is a statement about *this*
attack and budget (they are in the evidence), not a proof that no attacker can do better.

Examples
--------
>>> gate = LeakageGate(attacks={"fedavg-inversion": {"iterations": 300}}, ladder=(0.1, 0.3, 1.0))  # doctest: +SKIP
>>> decision = gate.check(model, state, update, images, labels, recipe=recipe, prior=prior)        # doctest: +SKIP
>>> decision.action, decision.sigma0                                                               # doctest: +SKIP
('escalate', 0.3)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

import gradleak.attacks  # noqa: F401  (registers every attack)
from gradleak.attacks.base import ATTACKS
from gradleak.defenses import LocalGaussian, resolve_defenses
from gradleak.errors import GradleakError
from gradleak.fl.recipe import LocalRecipe
from gradleak.metrics import grade
from gradleak.metrics.grading import describe_rule
from gradleak.records import ClientUpdate, GlobalState, ServerView
from gradleak.registry import option_names

__all__ = ["GateDecision", "GateStep", "LeakageGate"]

Action = Literal["pass", "escalate", "block"]


@dataclass(frozen=True)
class GateStep:
    """One rung of the ladder: the update tried (``sigma0=None``: as the client would send it) and what each
    attack recovered from it."""

    sigma0: float | None
    attacks: dict[str, dict[str, Any]]
    leaks: int
    wall_time: float

    def to_json(self) -> dict[str, Any]:
        return {"sigma0": self.sigma0, "leaks": self.leaks, "wall_time": round(self.wall_time, 3),
                "attacks": self.attacks}


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided, the update to send (``None`` when blocked), and the evidence behind it."""

    action: Action
    sigma0: float | None
    update: ClientUpdate | None
    steps: tuple[GateStep, ...]
    reason: str
    wall_time: float
    config: dict[str, Any] = field(default_factory=dict)
    reconstructions: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        """True when an update goes out (unchanged or noised)."""
        return self.action != "block"

    def to_json(self) -> dict[str, Any]:
        """The evidence as JSON (no tensors): decision, reason, configuration and every step."""
        return {"action": self.action, "sigma0": self.sigma0, "reason": self.reason,
                "wall_time": round(self.wall_time, 3), "config": self.config,
                "steps": [s.to_json() for s in self.steps]}

    def save(self, directory: str | Path, *, name: str = "gate") -> Path:
        """Write ``<name>.json`` (the evidence) and ``<name>.npz`` (the reconstructions per step and attack, in
        ``[0, 1]``) into ``directory``; return the JSON path. Keep them on the client: they show its images."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.json"
        path.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")
        if self.reconstructions:
            np.savez_compressed(out / f"{name}.npz", allow_pickle=False,
                                **{k: v.detach().cpu().float().numpy() for k, v in self.reconstructions.items()})
        return path


def _as_options(attacks: str | Sequence[str] | Mapping[str, Mapping[str, Any] | None]) -> dict[str, dict]:
    if isinstance(attacks, str):
        return {attacks: {}}
    if isinstance(attacks, Mapping):
        return {str(k): dict(v or {}) for k, v in attacks.items()}
    return {str(k): {} for k in attacks}


class LeakageGate:
    """Attack the client's own update before it is sent; pass it, noise it until nothing leaks, or block it.

    Parameters
    ----------
    attacks
        The attack(s) the server could run, by registered name, with options: ``"fedavg-inversion"``,
        ``["fedavg-inversion", "inverting-gradients"]`` or ``{"fedavg-inversion": {"iterations": 500}}``. The
        options are the budget (``iterations``, ``restarts``); an image leaks if *any* attack recovers it.
    ladder
        σ0 values of the local Gaussian noise (hospital paper, Sec. II-C) to try in increasing order when the
        update leaks. Empty: a leaking update is blocked.
    percentile
        The percentile of |ΔW| that σ0 multiplies (the paper: 95).
    on_leak
        ``"escalate"`` (walk the ladder) or ``"block"`` (never send a leaking update).
    tau
        The SSIM threshold of the leak rule (0.5, as the report).
    restarts
        Independent restarts of each attack (vectorised; an attack's own ``restarts`` option wins). Every restart
        is graded on its own and an image leaks if *any* restart recovers it: the server may be luckier than one
        run, and near the threshold one run is not enough (measured: at the σ0 where one gate run passed, one of
        two independent server runs still leaked).
    max_seconds
        Wall-time budget of one check. When it runs out before an update passes, the update is blocked (the
        gate never sends what it could not finish checking); the evidence says so.
    seed
        Seeds the attacks (reproducible evidence).
    noise_seed
        Seeds the escalation noise. ``None`` (the default) draws it from the operating system: noise the
        server could regenerate from a known seed protects nothing. Set it only to reproduce a test.
    """

    def __init__(self, attacks: str | Sequence[str] | Mapping[str, Mapping[str, Any] | None] = "fedavg-inversion",
                 *, ladder: Sequence[float] = (0.1, 0.3, 1.0, 3.0), percentile: float = 95.0,
                 on_leak: Literal["escalate", "block"] = "escalate", tau: float = 0.5, restarts: int = 3,
                 max_seconds: float | None = None, seed: int = 0, noise_seed: int | None = None) -> None:
        self.attack_options = _as_options(attacks)
        if not self.attack_options:
            raise GradleakError("the gate needs at least one attack")
        if restarts < 1:
            raise GradleakError(f"restarts must be >= 1, got {restarts}")
        self.attacks = {}
        for name, options in self.attack_options.items():
            if restarts > 1 and "restarts" in (option_names(ATTACKS.get(name)) or ()) and "restarts" not in options:
                options = {**options, "restarts": restarts}
            attack = ATTACKS.create(name, **options)
            if attack.modifies_model:
                raise GradleakError(f"{name} is a malicious-server attack: a client cannot audit it on its own "
                                    "update (it needs the server's modified model)")
            self.attacks[name] = attack
        ladder = [float(s) for s in ladder]
        if any(s <= 0 for s in ladder) or ladder != sorted(set(ladder)):
            raise GradleakError(f"ladder must be increasing positive σ0 values, got {ladder}")
        if on_leak not in ("escalate", "block"):
            raise GradleakError(f"on_leak must be 'escalate' or 'block', got {on_leak!r}")
        if max_seconds is not None and max_seconds <= 0:
            raise GradleakError(f"max_seconds must be > 0, got {max_seconds}")
        self.noise = [LocalGaussian(sigma0=s, percentile=percentile) for s in ladder]
        self.ladder, self.percentile, self.on_leak = tuple(ladder), float(percentile), on_leak
        self.tau, self.max_seconds, self.seed, self.noise_seed = float(tau), max_seconds, int(seed), noise_seed
        self.restarts = int(restarts)

    def config(self) -> dict[str, Any]:
        """The gate's settings, as recorded in every decision."""
        return {"attacks": self.attack_options, "restarts": self.restarts, "ladder": list(self.ladder),
                "percentile": self.percentile,
                "on_leak": self.on_leak, "tau": self.tau, "max_seconds": self.max_seconds, "seed": self.seed,
                "noise_seeded": self.noise_seed is not None, "rule": describe_rule("prior", self.tau)}

    def check(self, model: nn.Module, global_state: GlobalState, update: ClientUpdate, images: Tensor,
              labels: Tensor, *, recipe: LocalRecipe, prior: Tensor, mean: Sequence[float] = (0.0,),
              std: Sequence[float] = (1.0,), defenses: Sequence[Any] = (), num_classes: int | None = None,
              ) -> GateDecision:
        """Decide what to send for ``update``.

        Parameters
        ----------
        model
            The architecture the client trains (any state; the global state is loaded into copies).
        global_state
            The round's global model the client started from.
        update
            The update as it would leave the client: after its own update-stage defenses.
        images, labels
            The client's training images ``(N, C, H, W)`` in ``[0, 1]`` and labels ``(N,)``: the ground truth.
        recipe
            The client's local training (what an informed server assumes).
        prior
            What the attacker knows without the update: an image ``(C, H, W)`` in ``[0, 1]`` (e.g. the mean of
            public images of the domain). RDLV is measured against it.
        mean, std
            The model's input normalisation.
        defenses
            The client's own defenses, which the server knows are in use (they were applied already).
        num_classes
            The number of classes (default: the model's outputs).
        """
        if images.dim() != 4 or labels.shape != (images.shape[0],):
            raise GradleakError("images must be (N, C, H, W) in [0, 1] and labels (N,) class indices")
        if update.num_examples != len(images):
            raise GradleakError(f"the update reports {update.num_examples} examples but {len(images)} images "
                                "were given: pass the images the update was trained on")
        start = time.perf_counter()
        known = tuple(resolve_defenses(defenses))
        base = copy.deepcopy(model)
        base.load_state_dict(global_state.state_dict(), strict=True)
        if num_classes is None:
            with torch.no_grad():
                x0 = (images[:1] - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
                num_classes = int(copy.deepcopy(base).eval()(x0.to(images.dtype)).shape[-1])
        prior = prior.detach().reshape(-1, *images.shape[1:])[0]
        view = ServerView(
            model=lambda: copy.deepcopy(base), global_state=global_state, updates=(update,),
            image_shape=tuple(images.shape[1:]), num_classes=num_classes,  # type: ignore[arg-type]
            mean=tuple(mean), std=tuple(std), batch_size=min(recipe.batch_size, len(images)), num_images=len(images),
            recipe=recipe, defenses=known, prior=prior)
        noise_seed = self.noise_seed if self.noise_seed is not None else secrets.randbits(62)
        noise_gen = torch.Generator().manual_seed(noise_seed)

        steps: list[GateStep] = []
        recons: dict[str, Tensor] = {}
        # rung 0: the update as the client would send it; then one rung per sigma0 of the ladder (when escalating)
        rungs: list[LocalGaussian | None] = [None, *(self.noise if self.on_leak == "escalate" else [])]
        for index, noise in enumerate(rungs):
            if index and self.max_seconds is not None and time.perf_counter() - start > self.max_seconds:
                return self._decide("block", None, None, steps, recons, start,
                                    f"the wall-time budget ({self.max_seconds:g} s) ran out before an update "
                                    f"passed; the last update tried leaked {steps[-1].leaks} image(s)")
            sigma0 = None if noise is None else noise.sigma0
            sent = update if noise is None else noise(update, noise_gen)
            defenses_known = known if noise is None else (*known, noise)
            step = self._attack(dataclasses.replace(view, updates=(sent,), defenses=defenses_known),
                                images, labels, prior, sigma0, recons)
            steps.append(step)
            if step.leaks == 0:
                if sigma0 is None:
                    return self._decide("pass", None, sent, steps, recons, start,
                                        f"no image leaked under {self._budget()}: sent unchanged")
                return self._decide("escalate", sigma0, sent, steps, recons, start,
                                    f"leaked without noise ({steps[0].leaks} image(s)); with local Gaussian noise "
                                    f"σ0={sigma0:g} no image leaked under {self._budget()}: sent noised")
        if self.on_leak == "block":
            reason = f"{steps[0].leaks} image(s) leaked under {self._budget()}: blocked (on_leak='block')"
        elif not self.ladder:
            reason = f"{steps[0].leaks} image(s) leaked and the noise ladder is empty: blocked"
        else:
            reason = (f"{steps[-1].leaks} image(s) still leaked at the top of the ladder (σ0={self.ladder[-1]:g}): "
                      "blocked")
        return self._decide("block", None, None, steps, recons, start, reason)

    def _budget(self) -> str:
        parts = []
        for name, attack in self.attacks.items():
            its, restarts = getattr(attack, "iterations", None), getattr(attack, "restarts", 1)
            parts.append(name if its is None else f"{name} ({its} iterations × {restarts} restart(s))")
        return " and ".join(parts)

    def _attack(self, view: ServerView, images: Tensor, labels: Tensor, prior: Tensor, sigma0: float | None,
                recons: dict[str, Tensor]) -> GateStep:
        t0 = time.perf_counter()
        leaked = torch.zeros(len(images), dtype=torch.bool)
        found: dict[str, dict[str, Any]] = {}
        for name, attack in self.attacks.items():
            t1 = time.perf_counter()
            recon = attack(view, generator=torch.Generator().manual_seed(self.seed))
            # every restart graded on its own: the server may keep any of them
            runs = [dataclasses.replace(recon, images=t.images) for t in recon.trials] or [recon]
            grades = [grade(r, images, labels, prior=prior, tau=self.tau) for r in runs]
            leak = torch.stack([g["leak"].bool() for g in grades]).any(0)
            worst = torch.stack([g["rdlv"] for g in grades]).argmax(0)  # per image: the run with the highest RDLV
            leaked |= leak
            found[name] = {
                "iterations": recon.iterations, "restarts": len(runs),
                **{key: [round(float(grades[int(w)][key][i]), 4) for i, w in enumerate(worst)]
                   for key in ("ssim", "ssim_prior", "rdlv")},
                "leak": [bool(v) for v in leak],
                "rdlv_per_restart": [[round(float(v), 4) for v in g["rdlv"]] for g in grades],
                "wall_time": round(time.perf_counter() - t1, 3)}
            best = runs[int(torch.stack([g["rdlv"].mean() for g in grades]).argmax())]
            recons[f"{'none' if sigma0 is None else f'sigma0={sigma0:g}'}/{name}"] = best.images.detach()
        return GateStep(sigma0=sigma0, attacks=found, leaks=int(leaked.sum()), wall_time=time.perf_counter() - t0)

    def _decide(self, action: Action, sigma0: float | None, update: ClientUpdate | None, steps: list[GateStep],
                recons: dict[str, Tensor], start: float, reason: str) -> GateDecision:
        return GateDecision(action=action, sigma0=sigma0, update=update, steps=tuple(steps), reason=reason,
                            wall_time=time.perf_counter() - start, config=self.config(), reconstructions=recons)
