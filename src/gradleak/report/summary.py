"""The report's plain-language summary and privacy–utility table, generated from the numbers."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from gradleak.metrics import bootstrap_ci
from gradleak.report.data import StudyData, finite, param_value, short

__all__ = ["privacy_utility_rows", "summary_lines"]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _num(value: float) -> str:
    return f"{value:g}"


def _images(rows: list[dict[str, Any]]) -> str:
    counts = sorted({int(r["num_images"]) for r in rows})
    if len(counts) == 1:
        return f"{counts[0]} image" + ("s" if counts[0] != 1 else "")
    return f"{counts[0]}–{counts[-1]} images"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def summary_lines(data: StudyData) -> list[str]:
    """Sentences stating who leaks recognisable images (some image with SSIM > τ) at which parameter values,
    what the defense costs in accuracy, and what a malicious server recovered."""
    lines: list[str] = []
    params = data.numeric_params()
    param = next((p for p in params if p.startswith("defense.")), params[0] if params else None)
    tau = data.tau
    for index, rows in sorted(data.by_attack().items()):
        label = data.attack_labels.get(index, rows[0]["attack"])
        clients: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            clients[int(row["client"])].append(row)
        never: list[int] = []
        for client, crows in sorted(clients.items()):
            leaks = {}
            for row in crows:
                x = param_value(data, row, param) if param else None
                hit = any(v > tau for v in finite(row.get("ssim_per_image") or []))
                leaks[x] = leaks.get(x, False) or hit
            tested = sorted(k for k in leaks if k is not None)
            if not any(leaks.values()):
                never.append(client)
                continue
            who = f"{label}: client {client} ({_images(crows)})"
            if param is None or not tested:
                lines.append(f"{who} leaks recognisable images (SSIM > {tau:g}).")
                continue
            leaking = [x for x in tested if leaks[x]]
            name = short(param)
            if len(leaking) == len(tested):
                lines.append(f"{who} leaks recognisable images (SSIM > {tau:g}) at every tested {name} "
                             f"({', '.join(_num(x) for x in tested)}).")
            else:
                safe = [x for x in tested if not leaks[x]]
                where = (f"up to {name} = {_num(max(leaking))}" if max(leaking) < min(safe)
                         else f"at {name} = {', '.join(_num(x) for x in leaking)}")
                lines.append(f"{who} leaks recognisable images (SSIM > {tau:g}) {where}; not at {name} = "
                             f"{', '.join(_num(x) for x in safe)}.")
        if never:
            nrows = [r for c in never for r in clients[c]]
            where = f"any tested {short(param)}" if param else "any tested setting"
            noun = "client" if len(never) == 1 else "clients"
            lines.append(f"{label}: {noun} {_join([str(c) for c in never])} "
                         f"({_images(nrows)}) {'does' if len(never) == 1 else 'do'} not leak recognisable images "
                         f"(SSIM > {tau:g}) at {where}.")
        priors = finite(r.get("ssim_prior_mean") for r in rows)
        if priors and float(np.mean(priors)) > tau:
            lines.append(f"{label}: note that the attacker's prior image alone reaches SSIM {np.mean(priors):.2f} on "
                         "these images; RDLV measures what the attack adds to it.")
        expected = [r for r in rows if r.get("expected_recovery") is not None]
        for row in expected:
            ok = sum(1 for v in finite(row.get("ssim_per_image") or []) if v > 0.99)
            lines.append(f"{label}: at {row['setting_label']}, round {row['round']}, {ok} of {row['num_images']} "
                         f"images of client {row['client']} were recovered exactly (SSIM > 0.99); "
                         f"{row['expected_recovery']:.1f} expected alone in their bin for {row['bins']} bins.")
        rdlv = [(param_value(data, r, param), r.get("rdlv_mean")) for r in rows] if param else []
        rdlv = [(x, v) for x, v in rdlv if x is not None and v is not None]
        if len({x for x, _ in rdlv}) >= 2:
            lo, hi = min(x for x, _ in rdlv), max(x for x, _ in rdlv)
            mean = {x: float(np.mean([v for xx, v in rdlv if xx == x])) for x in (lo, hi)}
            lines.append(f"{label}: mean RDLV (leakage beyond the prior) is {mean[lo]:.1f} % at {short(param)} = "
                         f"{_num(lo)} and {mean[hi]:.1f} % at {short(param)} = {_num(hi)}.")
    accuracy = [(s["label"], s["fl"].get("final_test_accuracy")) for s in data.settings]
    accuracy = [(label, a) for label, a in accuracy if a is not None]
    if accuracy:
        rounds = data.settings[0]["fl"].get("rounds")
        lines.append(f"Test accuracy of the global model after {rounds} rounds: "
                     + "; ".join(f"{a:.3f} with {label}" for label, a in accuracy) + ".")
    if data.missing:
        lines.append(f"{data.missing} attack unit(s) have not finished; run the study again to complete them.")
    return lines


def privacy_utility_rows(data: StudyData) -> list[dict[str, str]]:
    """One row per (setting, attack): SSIM with its bootstrap CI, ASR, RDLV, IIP (FL), test accuracy, ε."""
    out = []
    for setting in data.settings:
        fl = setting["fl"]
        for index, rows in sorted(data.by_attack().items()):
            rows = [r for r in rows if r["setting"] == setting["key"]]
            if not rows:
                continue
            ssims = [v for r in rows for v in finite(r.get("ssim_per_image") or [])]
            ci = bootstrap_ci(np.asarray(ssims), n_resamples=data.resamples, confidence=data.confidence,
                              seed=0) if ssims else None
            rdlv = [v for r in rows for v in finite(r.get("rdlv_per_image") or [])]
            iip = finite(r.get("iip_fl") for r in rows)
            images = sum(int(r["num_images"]) for r in rows)
            # ASR over every attacked image: an image no reconstruction was paired with counts as a failure
            asr = sum(float(r["asr"]) * int(r["num_images"]) for r in rows) / images if images else None
            eps = fl.get("epsilon")
            out.append({
                "setting": setting["label"], "attack": data.attack_labels.get(index, rows[0]["attack"]),
                "updates": str(len(rows)), "images": str(images),
                "ssim": "–" if ci is None else f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]",
                "asr": _fmt(asr, 2), "rdlv": _fmt(float(np.mean(rdlv)) if rdlv else None, 1),
                "iip": _fmt(float(np.mean(iip)) if iip else None, 2),
                "accuracy": _fmt(fl.get("final_test_accuracy")),
                "epsilon": "– (no DP)" if eps is None else f"{eps:.2f} (δ = {fl.get('delta'):g})",
            })
    return out
