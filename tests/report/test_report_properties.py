"""The report over many shapes of results (hypothesis): single arm, stacks, grids with and without a baseline,
missing metrics, one image, all-leak, no-leak, unfinished units. It never crashes, and what it says follows the
one leak rule: a group is called leaking exactly when one of its graded images leaks, every "no leak" carries
its budget, a recommended setting has no leak, the baseline comes first, and a CI needs n >= 2."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradleak.report import build_report
from gradleak.report.data import StudyData, load_study
from gradleak.report.summary import privacy_utility_rows, summary_lines
from gradleak.report.verdict import (
    group_verdicts,
    is_baseline,
    recommendation,
    row_leaks,
    rule_statement,
    threat_model,
)

SIGMAS = [0.0, 0.1, 0.3, 1.0, 3.0, 10.0]
maybe_float = st.one_of(st.none(), st.floats(0, 1), st.just(float("nan")))


@st.composite
def studies(draw: Any) -> dict[str, Any]:
    """A study folder's content: the plan (config, settings, attack units) and the unit records."""
    arms: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = []  # (arm, defenses, grid values)
    if draw(st.booleans()):
        arms.append(("undefended", [], {}))
    if draw(st.booleans()) or not arms:
        for sigma in draw(st.lists(st.sampled_from(SIGMAS), min_size=1, max_size=4, unique=True)):
            arms.append(("local-gaussian", [{"name": "local-gaussian", "options": {"sigma0": sigma}}],
                         {"sigma0": sigma}))
    if draw(st.booleans()):
        arms.append(("withhold-bn+prune", [{"name": "withhold-bn", "options": {}},
                                           {"name": "prune-update", "options": {"ratio": 0.9}}], {}))
    seeds = draw(st.integers(1, 3))
    settings_, records = [], {}
    for i, (arm, defenses, values) in enumerate(arms):
        key = f"k{i}"
        label = arm if not values else f"{arm} sigma0={values['sigma0']:g}"
        units = [f"fl-s{i}"] + [f"fl-s{i}-seed{r}" for r in range(1, seeds)]
        settings_.append({"key": key, "slug": f"s{i}", "label": label, "arm": arm, "defense_values": values,
                          "scenario_values": {}, "defenses": defenses, "unit": units[0], "replicates": units})
        rounds = draw(st.integers(0, 4))
        for r, unit in enumerate(units):
            if r and not draw(st.booleans()):
                continue
            history = [{"round": j, "test_accuracy": draw(maybe_float)} for j in range(rounds)]
            records[unit] = {"kind": "fl", "setting": key, "replicate": r, "rounds": rounds, "history": history,
                             "final_test_accuracy": draw(maybe_float), "majority_rate": draw(maybe_float),
                             "epsilon": draw(st.one_of(st.none(), st.floats(0.1, 50))), "delta": 1e-5}
    attacks = [{"name": "fedavg-inversion", "label": "FedAvg inversion", "threat": "honest",
                "prior": {"kind": "mean", "split": "test", "images": 64}}]
    if draw(st.booleans()):
        attacks.append({"name": "imprint", "label": None, "threat": "honest", "prior": {"kind": "none"},
                        "public": {"split": "test", "images": 200}})
    clients = draw(st.lists(st.tuples(st.integers(0, 9), st.sampled_from([1, 4, 8]),
                                       st.sampled_from([1, 2, None])), min_size=1, max_size=3,
                            unique_by=lambda c: c[0]))
    attack_units = []
    for s in settings_:
        for a_index, attack in enumerate(attacks):
            for client, n, steps in clients:
                unit = f"{s['slug']}.a{a_index}-c{client}"
                attack_units.append({"unit": unit, "setting": s["key"], "attack": attack["name"], "round": 0,
                                     "client": client})
                if draw(st.integers(0, 9)) == 0:  # an unfinished unit
                    continue
                records[unit] = draw(attack_record(unit, s, a_index, attack["name"], client, n, steps))
    config = {"name": "prop", "scenario": {"preset": "hospital", "dataset": "sample-pneumoniamnist"},
              "attacks": attacks, "metrics": {"tau": 0.5, "bootstrap_resamples": 50}}
    return {"plan": {"config": config, "settings": settings_, "attack_units": attack_units}, "records": records}


@st.composite
def attack_record(draw: Any, unit: str, setting: dict[str, Any], index: int, attack: str, client: int, n: int,
                  steps: int | None) -> dict[str, Any]:
    verbatim = attack == "imprint"
    kind = draw(st.sampled_from(["graded", "graded", "legacy", "empty"]))
    record: dict[str, Any] = {"unit": unit, "kind": "attack", "setting": setting["key"],
                              "setting_label": setting["label"], "attack": attack, "attack_index": index,
                              "round": 0, "client": client, "num_images": n, "local_steps": steps,
                              "batch_size": draw(st.sampled_from([1, 4, 8, None])),
                              "iterations": 0 if verbatim else draw(st.sampled_from([3, 500])),
                              "restarts": draw(st.sampled_from([1, 4]))}
    if kind == "empty":  # a unit whose metrics are missing
        return record
    ssim = draw(st.lists(st.one_of(st.floats(-1, 1), st.just(float("nan"))), min_size=n, max_size=n))
    record["ssim_per_image"] = [None if math.isnan(v) else v for v in ssim]
    record["ssim_mean"] = float(np.nanmean(ssim)) if not all(math.isnan(v) for v in ssim) else None
    record["asr"] = float(np.mean([v > 0.5 for v in ssim]))
    if not verbatim:
        rdlv = draw(st.lists(st.floats(-60, 60), min_size=n, max_size=n))
        record["rdlv_per_image"], record["rdlv_mean"] = rdlv, float(np.mean(rdlv))
        record["ssim_prior_mean"] = draw(st.floats(0, 1))
    if kind == "graded":
        flags = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        record.update(leak_per_image=flags, n_leaks=sum(flags), leak_rule="verbatim" if verbatim else "prior",
                      n_verbatim=sum(flags) if verbatim else 0, verbatim_psnr=60.0, tau=0.5)
        if verbatim:
            record.update(expected_recovery=draw(st.floats(0, n)), bins=64)
    return record


def _study_data(content: dict[str, Any]) -> StudyData:
    plan, records = content["plan"], content["records"]
    settings_ = []
    for s in plan["settings"]:
        if s["unit"] in records:
            reps = [records[u] for u in s["replicates"] if u in records]
            settings_.append({**s, "fl": records[s["unit"]], "replicate_records": reps})
    keys = {s["key"] for s in settings_}
    attacks = [records[u["unit"]] for u in plan["attack_units"] if u["unit"] in records and u["setting"] in keys]
    missing = [u for u in plan["attack_units"] if u["unit"] not in records]
    labels = {i: a.get("label") or a["name"] for i, a in enumerate(plan["config"]["attacks"])}
    return StudyData(out=Path("."), config=plan["config"], settings=settings_, attacks=attacks,
                     missing=len(missing), attack_labels=labels,
                     missing_settings=tuple(sorted({u["setting"] for u in missing})))


def _check_truth(data: StudyData) -> None:
    verdicts = group_verdicts(data)
    assert sum(len(v.rows) for v in verdicts) == len(data.attacks)
    for v in verdicts:
        graded = [row_leaks(r, data.tau) for r in v.rows]
        leaked = any(g is not None and g[0] > 0 for g in graded)
        assert v.leaks_anywhere == leaked
        assert v.sentence
        if not leaked and any(g is not None for g in graded):
            assert "no leak found" in v.sentence and ("iterations" in v.sentence or "analytic" in v.sentence)
        if leaked:
            assert "leak" in v.sentence
    advice = recommendation(data, verdicts)
    assert advice.sentence
    if advice.setting is not None and any(v.leaks_anywhere for v in verdicts):
        key = advice.setting["key"]
        assert key not in data.missing_settings
        for v in verdicts:
            if v.leaks_anywhere:
                assert key in v.outcomes
            o = v.outcomes.get(key)
            assert o is None or (not o.leaked and not o.ungraded)
    table = privacy_utility_rows(data)
    baselines = [s["label"] for s in data.settings if is_baseline(s)]
    if table and baselines and any(r.get("setting") == next(s["key"] for s in data.settings if is_baseline(s))
                                   for r in data.attacks):
        assert "undefended" in table[0]["setting"]
    for row in table:
        if "(n = 1)" in row["ssim"]:
            assert "[" not in row["ssim"]
        k, n = (int(x) for x in re.match(r"(\d+) of (\d+)", row["leaks"]).groups())
        assert 0 <= k <= n
    lines = summary_lines(data)
    assert all(isinstance(line, str) and line for line in lines)
    assert threat_model(data).startswith("Threat model")
    assert rule_statement(data).endswith(".")


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(studies())
def test_verdicts_table_and_summary_over_generated_results(content: dict[str, Any]) -> None:
    data = _study_data(content)
    if not data.settings:
        return
    _check_truth(data)


def _write_folder(out: Path, content: dict[str, Any], rng: np.random.Generator) -> None:
    (out / "units").mkdir(parents=True)
    (out / "study.json").write_text(json.dumps(content["plan"]))
    for unit, record in content["records"].items():
        (out / "units" / f"{unit}.json").write_text(json.dumps(record))
        n = record.get("num_images")
        if record.get("kind") == "attack" and n and rng.random() < 0.7:
            truth = rng.random((n, 1, 8, 8)).astype(np.float32)
            np.savez(out / "units" / f"{unit}.npz", truth=truth, paired=truth[::-1].copy(),
                     prior=truth.mean(0), reconstructions=truth, valid=np.ones(n, dtype=bool))


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                   HealthCheck.function_scoped_fixture])
@given(studies())
def test_build_report_never_crashes(tmp_path_factory: pytest.TempPathFactory, content: dict[str, Any]) -> None:
    out = tmp_path_factory.mktemp("prop")
    _write_folder(out, content, np.random.default_rng(0))
    if not any(s["unit"] in content["records"] for s in content["plan"]["settings"]):
        return  # no finished federation: build_report refuses with one clear line (tested elsewhere)
    report = build_report(out)
    html = report.html.read_text()
    assert "Verdict" in html and report.recommendation in html.replace("&#39;", "'").replace("&amp;", "&")
    _check_truth(load_study(out))
