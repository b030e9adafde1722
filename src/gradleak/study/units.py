"""Running one unit of a study: simulate a setting's federation, or attack one recorded update and grade it.

Both functions are pure in their inputs (config, unit, output folder): every random choice is seeded from the
study seed and the unit's id, and torch runs with ``config.threads`` threads, so a unit gives the same numbers
in-process and on a Ray worker, and a unit run again after a crash gives the same numbers as the first time.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradleak.errors import GradleakError
from gradleak.study.config import StudyConfig
from gradleak.study.grid import AttackUnit, FLUnit, Setting, federation_of, fl_unit_id
from gradleak.study.results import load_unit, write_unit
from gradleak.study.views import DataContext, domain_prior, public_images, view_from_store

__all__ = ["majority_rate", "run_attack_unit", "run_fl_unit", "setting_store", "training_seed", "unit_seed"]


def unit_seed(seed: int, unit_id: str) -> int:
    """A 63-bit seed from the study seed and a unit id."""
    digest = hashlib.sha256(f"{seed}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def setting_store(out: Path, setting: Setting) -> Path:
    return Path(out) / "settings" / setting.slug / "store"


def _base_row(setting: Setting) -> dict[str, Any]:
    row: dict[str, Any] = {"setting": setting.key, "setting_label": setting.label, "arm": setting.arm}
    row.update({f"defense.{k}": v for k, v in setting.defense_values.items()})
    row.update({f"scenario.{k}": v for k, v in setting.scenario_values.items()})
    return row


def _epsilon(scenario: Any, federation: Any, stages: dict[str, list[Any]], delta: float) -> float | None:
    """Largest per-client ε of the DP-SGD defense in use (Opacus RDP accountant), or ``None``."""
    from gradleak.defenses import DPSGD, fl_dp_epsilon
    from gradleak.fl.recipe import batch_schedule

    dp = [d for d in stages["step"] if isinstance(d, DPSGD)]
    if not dp:
        return None
    worst = 0.0
    for client in federation.clients:
        n, recipe = len(client.train), client.recipe
        steps = len(batch_schedule(n, recipe))
        worst = max(worst, fl_dp_epsilon(dp[0], num_examples=n, batch_size=min(recipe.batch_size, n),
                                         steps_per_round=steps, rounds=scenario.rounds, delta=delta))
    return worst


def training_seed(seed: int, replicate: int) -> int:
    """The simulation seed of a setting's federation: ``seed`` itself for the recorded run (replicate 0), a
    derived one for the utility replicates (same clients and data, other initialisation, shuffling and noise)."""
    from gradleak.fl.federation import derive_seed

    return seed if replicate == 0 else derive_seed(seed, replicate, 0x0717)


def majority_rate(labels: torch.Tensor) -> float:
    """Share of the most frequent class: the accuracy of always predicting it."""
    counts = torch.bincount(torch.as_tensor(labels).flatten().long().cpu())
    return float(counts.max()) / max(1, int(counts.sum()))


def run_fl_unit(config: StudyConfig, unit: FLUnit, out: Path, *, hooks: Sequence[Any] = ()) -> dict[str, Any]:
    """Simulate the setting's federation and write the unit's record: the per-round history, final/best accuracy,
    the majority-class rate of the test set and ε. Replicate 0 records every update into the setting's store
    (continuing an interrupted recording); the other replicates only measure utility."""
    from gradleak.fl.recorder import Recorder
    from gradleak.fl.store import UpdateStore

    torch.set_num_threads(config.threads)
    scenario = unit.setting.scenario(config.name)
    model_spec, _, stages = scenario.defended()
    federation = federation_of(scenario)
    trained = scenario.replace(seed=training_seed(scenario.seed, unit.replicate))
    sim = trained.simulation(federation=federation, device=config.device)
    started = time.perf_counter()
    if unit.replicate == 0:
        store = UpdateStore(setting_store(out, unit.setting), model_spec=model_spec)
        store.update_server_info(engine="gradleak", input=scenario.input_spec(federation).to_json())
        result = sim.run(hooks=[Recorder(store), *hooks], resume_from=store)
    else:
        result = sim.run(hooks=list(hooks))
    history = [m.to_json() for m in result.history]
    delta = 1e-5
    best = next((m for m in result.history if m.round == result.best_round), None)
    record = {
        **_base_row(unit.setting), "unit": unit.id, "kind": "fl", "replicate": unit.replicate,
        "training_seed": trained.seed, "rounds": scenario.rounds, "clients": len(federation.clients),
        "history": history,
        "final_test_accuracy": result.history[-1].test_accuracy if result.history else None,
        "final_mean_val_accuracy": result.history[-1].mean_val_accuracy if result.history else None,
        "best_round": result.best_round, "best_test_accuracy": best.test_accuracy if best else None,
        "majority_rate": majority_rate(federation.test.y) if federation.test is not None else None,
        "test_images": len(federation.test.y) if federation.test is not None else None,
        "epsilon": _epsilon(scenario, federation, stages, delta), "delta": delta,
        "defenses": unit.setting.defense_json(), "seconds": time.perf_counter() - started,
    }
    write_unit(out, unit.id, record)
    return record


def _context(federation: Any, model_spec: Any) -> DataContext:
    """Input shape and normalisation from the clients' data; the label space from the model's outputs."""
    from gradleak.study.views import output_classes

    ds = federation.train_data
    shape = tuple(federation.clients[0].train.x.shape[1:])
    return DataContext(image_shape=shape, num_classes=output_classes(model_spec.build(), shape),
                       mean=tuple(ds.mean), std=tuple(ds.std))


def _pool(federation: Any, client: int, size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All clients' training and validation images (each image once), the owner of each (the attacked client
    when it holds that image), and the pool index of each of the attacked client's training images."""
    keys: dict[tuple[str, int], int] = {}
    owners: list[int] = []
    sources: list[tuple[str, int]] = []
    parts = [("train", federation.train_indices)]
    if federation.val_data is not None:
        parts.append(("val", federation.val_indices))
    for split, indices in parts:
        for c, idx in enumerate(indices):
            for i in np.asarray(idx).tolist():
                key = (split, int(i))
                if key not in keys:
                    keys[key] = len(owners)
                    owners.append(c)
                    sources.append(key)
                elif c == client:
                    owners[keys[key]] = client
    images = []
    for split, data in (("train", federation.train_data), ("val", federation.val_data)):
        idx = [i for s, i in sources if s == split]
        if idx:
            images.append(data.tensors(idx, size=size)[0])
    true_index = torch.tensor([keys[("train", int(i))] for i in np.asarray(federation.train_indices[client])])
    return torch.cat(images), torch.tensor(owners), true_index


def _extractor(space: str, state: Any, model_spec: Any, context: DataContext) -> Any:
    from gradleak.data.transforms import normalize
    from gradleak.metrics import model_features

    if space == "pixel":
        return "pixel"
    model = model_spec.build()
    model.load_state_dict(state.state_dict())
    return model_features(model, "penultimate", transform=lambda x: normalize(x, context.mean, context.std))


def _malicious_view(attack: Any, unit: AttackUnit, config: StudyConfig, scenario: Any, federation: Any,
                    state: Any, context: DataContext, prior: torch.Tensor | None) -> Any:
    """The server sends the attack's modified model to the client in this round; the client trains on it as the
    simulator does (same seed, recipe and update-stage defenses); the view holds that update and the secrets."""
    from gradleak.data.transforms import normalize
    from gradleak.fl.client import ModuleCopies, client_step
    from gradleak.fl.federation import derive_seed
    from gradleak.fl.local import LocalData, model_state
    from gradleak.records import GlobalState
    from gradleak.study.views import recipe_from_update, server_view

    model_spec, recipe, stages = scenario.defended()
    honest = model_spec.build()
    honest.load_state_dict(state.state_dict())
    cfg = unit.attack.public
    public = public_images(scenario.dataset, split=cfg.split, images=cfg.images, image_size=scenario.image_size,
                          root=scenario.data_root, seed=config.seed)
    g = torch.Generator().manual_seed(unit_seed(config.seed, unit.id + "/modify"))
    modified, secrets = attack.modify_model(honest, context.image_shape,
                                            public=normalize(public, context.mean, context.std), generator=g)
    client = federation.clients[unit.client]
    device = torch.device(config.device)
    seed = derive_seed(scenario.seed, unit.round, client.id)  # the seed the simulator gives this client and round
    client_recipe = client.recipe.replace(step_transforms=recipe.step_transforms, seed=seed)
    factory = ModuleCopies(modified)
    params, buffers = model_state(modified)
    update = client_step(factory().to(device), GlobalState(round=unit.round, params=params, buffers=buffers),
                         LocalData(client.train.x.to(device), client.train.y.to(device)), client_recipe,
                         client=client.id, defenses=stages["update"],
                         generator=torch.Generator(device=device).manual_seed(seed)).update
    view_recipe = recipe_from_update(update, step_transforms=recipe.step_transforms)
    return server_view(update, GlobalState(unit.round, params, buffers), factory, context, recipe=view_recipe,
                       prior=prior, secrets=secrets, defenses=tuple(scenario.defenses))


def run_attack_unit(config: StudyConfig, unit: AttackUnit, out: Path) -> dict[str, Any]:
    """Attack one recorded update (or, for a malicious server, the update of its modified model), grade the
    reconstruction with :mod:`gradleak.metrics`, and write the unit's record and arrays."""
    from gradleak.attacks.base import ATTACKS
    from gradleak.defenses import resolve_defenses
    from gradleak.fl.store import UpdateStore
    from gradleak.study.measure import measure

    torch.set_num_threads(config.threads)
    fl = load_unit(out, fl_unit_id(unit.setting))
    scenario = unit.setting.scenario(config.name)
    model_spec, recipe, _ = scenario.defended()
    federation = federation_of(scenario)
    context = _context(federation, model_spec)
    prior = None
    if unit.attack.prior.kind == "mean":
        p = unit.attack.prior
        prior = domain_prior(scenario.dataset, split=p.split, images=p.images, image_size=scenario.image_size,
                             root=scenario.data_root, seed=config.seed)
    truth_x = federation.client_images(unit.client)
    truth_y = torch.as_tensor(federation.train_data.labels[np.asarray(federation.train_indices[unit.client])])
    store = UpdateStore(setting_store(out, unit.setting), create=False)
    state = store.load_global(unit.round, model=model_spec.build())
    attack = ATTACKS.create(unit.attack.name, **unit.attack.options)
    if getattr(attack, "modifies_model", False):
        view = _malicious_view(attack, unit, config, scenario, federation, state, context, prior)
    else:
        view = view_from_store(store, round=unit.round, client=unit.client, context=context, model=model_spec,
                               step_transforms=recipe.step_transforms, prior=prior,
                               labels=truth_y if unit.attack.threat == "informed" else None,
                               defenses=resolve_defenses(scenario.defenses))
    generator = torch.Generator().manual_seed(unit_seed(config.seed, unit.id))
    started = time.perf_counter()
    try:
        recon = attack(view, generator=generator)
    except GradleakError as exc:
        raise GradleakError(f"unit {unit.id}: {exc}") from exc
    seconds = time.perf_counter() - started
    pool, owners, true_index = _pool(federation, unit.client, scenario.image_size)
    extractor = _extractor(config.metrics.embedding_space, state, model_spec, context)
    iip_space = extractor if config.metrics.iip_space == config.metrics.embedding_space else _extractor(
        config.metrics.iip_space, state, model_spec, context)
    numbers, arrays = measure(recon, truth_x, truth_y, prior=prior, metrics=config.metrics, pool=pool,
                              owners=owners, true_index=true_index, client=unit.client, iip_space=iip_space,
                              embedding_space=extractor)
    update = view.update
    local_steps = update.metadata.get("local_steps")
    record = {
        **_base_row(unit.setting), "unit": unit.id, "kind": "attack", "attack": unit.attack.name,
        "attack_label": unit.attack.label or unit.attack.name, "attack_index": unit.attack_index,
        "round": unit.round, "client": unit.client, "num_images": len(truth_x),
        "batch_size": view.batch_size, "local_steps": local_steps, "iterations": recon.iterations,
        "restarts": int(getattr(attack, "restarts", 1)), "threat": unit.attack.threat,
        "prior_kind": unit.attack.prior.kind, "malicious": bool(getattr(attack, "modifies_model", False)),
        "final_test_accuracy": fl.get("final_test_accuracy"), **numbers,
        "attack_config": {k: repr(v) for k, v in recon.config.items() if k != "execution"}, "seconds": seconds,
        "execution": (recon.config.get("execution") or {}).get("iteration"),
        "execution_reason": (recon.config.get("execution") or {}).get("reason"),
    }
    bins = view.secrets.num_bins if view.secrets is not None else None
    if bins:  # a binned malicious module: how many inputs alone in their bin to expect (iid inputs)
        from gradleak.attacks.imprint import expected_recovery

        record["expected_recovery"] = expected_recovery(len(truth_x), int(bins))
        record["bins"] = int(bins)
    write_unit(out, unit.id, record, arrays)
    return record
