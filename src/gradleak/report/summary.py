"""The report's detail sentences and privacy–utility table, generated from the numbers with the one leak rule
(:mod:`gradleak.report.verdict`). The undefended baseline comes first in both."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from gradleak.metrics import bootstrap_ci
from gradleak.report.data import StudyData, finite, param_value, short
from gradleak.report.verdict import (
    accuracy_cost,
    budget_text,
    display_label,
    is_baseline,
    ordered_settings,
    row_leaks,
    utility,
)

__all__ = ["privacy_utility_rows", "summary_lines"]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _num(value: float) -> str:
    return f"{value:g}"


def _ci_text(values: list[float], data: StudyData) -> str:
    """Mean with its bootstrap CI when there are at least two values; always n."""
    if not values:
        return "–"
    if len(values) < 2:
        return f"{values[0]:.3f} (n = 1)"
    ci = bootstrap_ci(np.asarray(values), n_resamples=data.resamples, confidence=data.confidence, seed=0)
    return f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}] (n = {len(values)})"


def _leak_counts(rows: list[dict[str, Any]], tau: float) -> tuple[int, int, int]:
    """Leaked images, attacked images (of graded units) and ungraded units."""
    k = n = ungraded = 0
    for row in rows:
        found = row_leaks(row, tau)
        if found is None:
            ungraded += 1
        else:
            k, n = k + found[0], n + found[1]
    return k, n, ungraded


def summary_lines(data: StudyData) -> list[str]:
    """Detail sentences: per attack, the verbatim recoveries of analytic attacks, the prior's own SSIM and the
    mean RDLV along the grid parameter; the accuracy of every setting against the baseline; unfinished units."""
    lines: list[str] = []
    params = [p for p in data.numeric_params() if p.startswith("defense.")]
    param = params[0] if params else None
    settings = {s["key"]: s for s in data.settings}
    for index, rows in sorted(data.by_attack().items()):
        rows = [r for r in rows if r.get("setting") in settings]
        if not rows:
            continue
        label = data.attack_labels.get(index, str(rows[0].get("attack")))
        k, n, ungraded = _leak_counts(rows, data.tau)
        lines.append(f"{label}: {k} of {n} attacked image{'s' if n != 1 else ''} leak over {len(rows)} attacked "
                     f"update{'s' if len(rows) != 1 else ''} in all settings ({budget_text(rows, data)})."
                     + (f" {ungraded} update(s) returned no grades." if ungraded else ""))
        priors = finite(r.get("ssim_prior_mean") for r in rows)
        if priors:
            lines.append(f"{label}: the attacker's prior image alone reaches SSIM {np.mean(priors):.2f} on the "
                         "attacked images; a reconstruction that does not beat it is not a leak.")
        for row in rows:
            if row.get("leak_rule") != "verbatim" and row.get("expected_recovery") is None:
                continue
            verbatim = row.get("n_verbatim")
            count = int(verbatim) if verbatim is not None and finite([verbatim]) else sum(
                1 for v in finite(row.get("psnr_per_image") or []) if v >= 60.0)
            setting = settings[row["setting"]]["label"]
            text = (f"{label}: at {setting}, round {row.get('round')}, {count} of {row.get('num_images')} images of "
                    f"client {row.get('client')} were recovered verbatim")
            if finite([row.get("expected_recovery")]):
                text += (f"; {float(row['expected_recovery']):.1f} expected alone in their bin for "
                         f"{row.get('bins')} bins")
            lines.append(text + ".")
        if param is not None:
            base_values: list[float] = []
            per_x: dict[float, list[float]] = defaultdict(list)
            for r in rows:
                values = finite(r.get("rdlv_per_image") or [])
                x = param_value(data, r, param)
                if is_baseline(settings[r["setting"]]):
                    base_values += values
                elif x is not None:
                    per_x[x] += values
            xs = sorted(x for x, v in per_x.items() if v)
            parts = [f"{np.mean(base_values):.1f} % without defense"] if base_values else []
            parts += [f"{np.mean(per_x[x]):.1f} % at {short(param)} = {_num(x)}"
                      for x in (xs[:1] + xs[-1:] if len(xs) >= 2 else xs)]
            if len(parts) >= 2:
                lines.append(f"{label}: mean RDLV (leakage beyond the prior; > 0 means closer than the prior) is "
                             + ", ".join(parts) + ".")
    baselines = [s for s in ordered_settings(data) if is_baseline(s)]
    baseline = baselines[0] if baselines else None
    accuracy = []
    for s in ordered_settings(data):
        u = utility(s)
        if u.mean is None:
            continue
        cost = "" if s is baseline or baseline is None else f" ({accuracy_cost(s, baseline)})"
        accuracy.append(f"{display_label(s)} {u.text()}{cost}")
    if accuracy:
        rounds = (data.settings[0].get("fl") or {}).get("rounds")
        majority = utility(data.settings[0]).majority
        lines.append(f"Test accuracy of the global model after {rounds} rounds: " + "; ".join(accuracy) + "."
                     + (f" Always predicting the majority class scores {majority:.3f}." if majority is not None
                        else ""))
    if baseline is None:
        lines.append("This study has no undefended baseline (add a defense arm `stack: []`), so no leak or accuracy "
                     "can be compared with training without defense.")
    if data.missing:
        lines.append(f"{data.missing} attack unit(s) have not finished; run the study again to complete them. "
                     "The verdicts above cover finished units only.")
    return lines


def privacy_utility_rows(data: StudyData) -> list[dict[str, str]]:
    """One row per (setting, attack), the undefended baseline first: leaked images under the one rule, SSIM with
    its bootstrap CI (n ≥ 2) and n, ASR, RDLV, IIP (FL), test accuracy over seeds, its cost against the baseline,
    and ε."""
    out = []
    ordered = ordered_settings(data)
    baselines = [s for s in ordered if is_baseline(s)]
    baseline = baselines[0] if baselines else None
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in data.attacks:
        groups[(str(row.get("setting")), int(row.get("attack_index", 0)))].append(row)
    for setting in ordered:
        fl = setting.get("fl") or {}
        indices = sorted({i for (key, i) in groups if key == setting["key"]})
        for index in indices:
            rows = groups[(setting["key"], index)]
            ssims = [v for r in rows for v in finite(r.get("ssim_per_image") or [])]
            rdlv = [v for r in rows for v in finite(r.get("rdlv_per_image") or [])]
            iip = finite(r.get("iip_fl") for r in rows)
            k, n, ungraded = _leak_counts(rows, data.tau)
            images = sum(int(r.get("num_images") or 0) for r in rows)
            asr = [float(r["asr"]) * int(r.get("num_images") or 0) for r in rows if finite([r.get("asr")])]
            eps = fl.get("epsilon")
            leaks = f"{k} of {n}" + (f" ({ungraded} ungraded)" if ungraded else "")
            if any(r.get("leak_rule") == "verbatim" for r in rows):
                leaks += " verbatim"
            out.append({
                "setting": display_label(setting),
                "attack": data.attack_labels.get(index, str(rows[0].get("attack"))),
                "updates": str(len(rows)), "images": str(images), "leaks": leaks,
                "ssim": _ci_text(ssims, data),
                "asr": _fmt(sum(asr) / images, 2) if asr and images else "–",
                "rdlv": _fmt(float(np.mean(rdlv)) if rdlv else None, 1),
                "iip": _fmt(float(np.mean(iip)) if iip else None, 2),
                "accuracy": utility(setting).text(),
                "cost": "baseline" if setting is baseline else accuracy_cost(setting, baseline),
                "epsilon": "– (no DP)" if eps is None else f"{eps:.2f} (δ = {fl.get('delta'):g})",
            })
    return out
