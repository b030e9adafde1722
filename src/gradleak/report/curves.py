"""The report's curves (matplotlib, Agg backend): leakage and its bands against a defense parameter, accuracy
over rounds, leakage against the batch size and local iterations. A curve needs at least two x values; nothing
is drawn from made-up data."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from gradleak.report.data import StudyData, band, finite, param_value, short
from gradleak.report.figures import Figure, save_figure, slug
from gradleak.report.verdict import display_label, is_baseline, ordered_settings, row_leaks, utility

__all__ = ["accuracy_curves", "curves_vs_param", "curves_vs_training"]


def _band_plot(ax: Any, b: Any, label: str) -> None:
    line, = ax.plot(b.x, b.mean, marker="o", label=label)
    if any(lo != hi for lo, hi in zip(b.low, b.high, strict=True)):
        ax.fill_between(b.x, b.low, b.high, alpha=0.2, color=line.get_color())


def _per_client(rows: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[int(row["client"])].append(row)
    return dict(sorted(groups.items()))


def _param_of(data: StudyData, row: dict[str, Any], param: str) -> float | None:
    return param_value(data, row, param)


def _baseline_values(data: StudyData, rows: Sequence[dict[str, Any]], param: str, values: Any) -> list[float]:
    """Pooled values of the rows of undefended settings that have no value of ``param`` (drawn as a reference)."""
    out: list[float] = []
    for row in rows:
        setting = data.setting(row["setting"])
        if is_baseline(setting) and param_value(data, row, param) is None:
            out += finite(values(row))
    return out


def _leak_share(data: StudyData, rows: Sequence[dict[str, Any]]) -> float | None:
    k = n = 0
    for row in rows:
        found = row_leaks(row, data.tau)
        if found is not None:
            k, n = k + found[0], n + found[1]
    return k / n if n else None


def _x_scale(ax: Any, values: Sequence[float]) -> None:
    """A log x axis when the parameter's values are positive and span a decade or more (σ0 = 0.1, 0.3, 1)."""
    xs = [v for v in values if v is not None]
    if xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")


def _per_param_plot(ax: Any, data: StudyData, rows_by_client: dict[int, list[dict[str, Any]]], param: str,
                    values: Any, kw: dict[str, Any]) -> bool:
    """One band per client against ``param`` and a dashed line at each client's undefended value."""
    x = functools.partial(_param_of, data, param=param)
    drawn = False
    for c, rs in rows_by_client.items():
        b = band(rs, x, values, min_x=1, **kw)
        base = _baseline_values(data, rs, param, values)
        color = None
        if b is not None:
            line, = ax.plot(b.x, b.mean, marker="o", label=f"client {c}")
            color = line.get_color()
            if any(lo != hi for lo, hi in zip(b.low, b.high, strict=True)):
                ax.fill_between(b.x, b.low, b.high, alpha=0.2, color=color)
            drawn = True
        if base:
            ax.axhline(float(np.mean(base)), color=color or "black", ls="--", lw=1,
                       label=f"client {c} undefended" if b is not None else f"client {c} (undefended only)")
            drawn = True
    return drawn


def curves_vs_param(data: StudyData, folder: Path) -> list[Figure]:
    """Per attack and numeric defense parameter, with the undefended baseline as dashed reference lines: SSIM per
    client and the test accuracy of each setting (mean ± sd over training seeds, majority-class rate); the share
    of images that leak under the one rule; RDLV per client; IIP and embedding cosine. Bootstrap bands over
    images (SSIM, RDLV, cosine) or attacked updates (IIP)."""
    figures = []
    kw: dict[str, Any] = {"resamples": data.resamples, "confidence": data.confidence}
    baselines = [s for s in data.settings if is_baseline(s)]
    for param in data.numeric_params():
        name = short(param)
        acc = []
        for s in data.settings:
            xv, u = param_value(data, {"setting": s["key"]}, param), utility(s)
            if xv is not None and u.mean is not None and not (is_baseline(s) and xv is None):
                acc.append((xv, u.mean, u.sd or 0.0))
        acc.sort()
        base_acc = [utility(b) for b in baselines if param_value(data, {"setting": b["key"]}, param) is None]
        majority = next((utility(s).majority for s in data.settings if utility(s).majority is not None), None)
        xs = sorted({x for s in data.settings if (x := param_value(data, {"setting": s["key"]}, param)) is not None})
        for index, rows in sorted(data.by_attack().items()):
            label = data.attack_labels.get(index, rows[0]["attack"])
            clients = _per_client(rows)
            fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
            _x_scale(left, xs)
            _x_scale(right, xs)
            if _per_param_plot(left, data, clients, param, lambda r: r.get("ssim_per_image") or [], kw):
                left.axhline(data.tau, color="gray", ls=":", lw=1, label=f"τ = {data.tau}")
                left.set(xlabel=name, ylabel="SSIM", title=f"{label}: SSIM vs {name}")
                left.legend(fontsize=6)
                if acc or base_acc:
                    if acc:
                        right.errorbar([a for a, _, _ in acc], [m for _, m, _ in acc], yerr=[e for _, _, e in acc],
                                       marker="s", color="black", capsize=3, label="defended")
                    for u in base_acc[:1]:
                        if u.mean is not None:
                            right.axhline(u.mean, color="black", ls="--", lw=1, label="undefended")
                    if majority is not None:
                        right.axhline(majority, color="gray", ls=":", lw=1, label="majority class")
                    right.set(xlabel=name, ylabel="test accuracy", title=f"final global model vs {name}")
                    right.legend(fontsize=6)
                else:
                    right.axis("off")
                path = save_figure(fig, folder / f"ssim-accuracy-vs-{slug(name)}-a{index}.png")
                figures.append(Figure(path, f"{label}: SSIM and accuracy vs {name}",
                                      f"Mean SSIM of each client's reconstructions ({data.confidence:.0%} bootstrap "
                                      "band over images and rounds; dashed: the same client without defense) and the "
                                      "final test accuracy of each setting's global model (mean ± sd over training "
                                      "seeds; dashed: undefended; dotted: always predicting the majority class).",
                                      "Leakage and utility"))
            else:
                plt.close(fig)
            shares = {c: sorted((xv, v) for xv, v in (
                (xv, _leak_share(data, [r for r in rs if param_value(data, r, param) == xv]))
                for xv in {param_value(data, r, param) for r in rs} if xv is not None) if v is not None)
                for c, rs in clients.items()}
            base_shares = {c: _leak_share(data, [r for r in rs if is_baseline(data.setting(r["setting"]))
                                                 and param_value(data, r, param) is None]) for c, rs in clients.items()}
            if any(shares.values()) or any(v is not None for v in base_shares.values()):
                fig, ax = plt.subplots(figsize=(5.5, 3.4))
                _x_scale(ax, xs)
                for c in clients:
                    color = None
                    if shares[c]:
                        line, = ax.plot([a for a, _ in shares[c]], [b for _, b in shares[c]], marker="o",
                                        label=f"client {c}")
                        color = line.get_color()
                    base_share = base_shares[c]
                    if base_share is not None:
                        ax.axhline(base_share, color=color or "black", ls="--", lw=1,
                                   label=f"client {c} undefended")
                ax.set(xlabel=name, ylabel="share of images that leak", ylim=(-0.05, 1.05),
                       title=f"{label}: leaks vs {name}")
                ax.legend(fontsize=6)
                path = save_figure(fig, folder / f"leaks-vs-{slug(name)}-a{index}.png")
                figures.append(Figure(path, f"{label}: share of images that leak vs {name}",
                                      "Share of each client's attacked images that leak under the report's one rule "
                                      "(dashed: the same client without defense). Zero means no leak was found "
                                      "within the attack budget — not that none exists.", "Leakage and utility"))
            fig, ax = plt.subplots(figsize=(5.5, 3.4))
            _x_scale(ax, xs)
            if _per_param_plot(ax, data, clients, param, lambda r: r.get("rdlv_per_image") or [], kw):
                ax.axhline(0, color="gray", ls=":", lw=1)
                ax.set(xlabel=name, ylabel="RDLV (%)", title=f"{label}: RDLV vs {name}")
                ax.legend(fontsize=6)
                path = save_figure(fig, folder / f"rdlv-vs-{slug(name)}-a{index}.png")
                figures.append(Figure(path, f"{label}: RDLV vs {name}",
                                      "Relative data leakage value 100·(SSIM(T,I) − SSIM(T,P))/SSIM(T,P): how much "
                                      "closer the reconstruction is to the training image than the prior (> 0: "
                                      f"closer); {data.confidence:.0%} bootstrap bands over images; dashed: without "
                                      "defense.", "Leakage and utility"))
            else:
                plt.close(fig)
            x_of = functools.partial(_param_of, data, param=param)
            iip = band(rows, x_of, lambda r: [r.get("iip_fl")], **kw)
            cos = band(rows, x_of, lambda r: r.get("cosine_per_image") or [], **kw)
            if iip or cos:
                fig, ax = plt.subplots(figsize=(5.5, 3.4))
                _x_scale(ax, xs)
                for b, what, values in ((iip, "IIP (FL: nearest image is the client's)", lambda r: [r.get("iip_fl")]),
                                        (cos, "embedding cosine", lambda r: r.get("cosine_per_image") or [])):
                    if b is None:
                        continue
                    line, = ax.plot(b.x, b.mean, marker="o", label=what)
                    if any(lo != hi for lo, hi in zip(b.low, b.high, strict=True)):
                        ax.fill_between(b.x, b.low, b.high, alpha=0.2, color=line.get_color())
                    base = _baseline_values(data, rows, param, values)
                    if base:
                        ax.axhline(float(np.mean(base)), color=line.get_color(), ls="--", lw=1,
                                   label=f"{what.split(' (')[0]} undefended")
                ax.set(xlabel=name, ylabel="value", title=f"{label}: identifiability vs {name}")
                ax.legend(fontsize=7)
                path = save_figure(fig, folder / f"iip-cosine-vs-{slug(name)}-a{index}.png")
                figures.append(Figure(path, f"{label}: IIP and embedding cosine vs {name}",
                                      "Image identifiability precision (FL variant, over attacked updates) and "
                                      "cosine similarity of paired embeddings, with bootstrap bands; dashed: without "
                                      "defense.",
                                      "Leakage and utility"))
    return figures


def accuracy_curves(data: StudyData, folder: Path) -> list[Figure]:
    """Test accuracy of the global model after every round, one line per setting (mean over its training seeds,
    band from the lowest to the highest seed), the undefended baseline dashed, the majority-class rate dotted."""
    curves = []
    for s in ordered_settings(data):
        per_seed: list[dict[int, float]] = []
        for record in s.get("replicate_records") or [s.get("fl") or {}]:
            points = {}
            for m in record.get("history") or []:
                if isinstance(m, dict) and finite([m.get("test_accuracy")]) and finite([m.get("round")]):
                    points[int(m["round"])] = float(m["test_accuracy"])
            if points:
                per_seed.append(points)
        rounds = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
        if rounds:
            values = np.array([[p[r] for r in rounds] for p in per_seed])
            curves.append((s, rounds, values))
    if not curves or max(len(r) for _, r, _ in curves) < 2:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for s, rounds, values in curves:
        baseline = is_baseline(s)
        xs = [r + 1 for r in rounds]
        line, = ax.plot(xs, values.mean(0), ls="--" if baseline else "-", lw=1.6 if baseline else 1.2,
                        label=display_label(s))
        if len(values) > 1:
            ax.fill_between(xs, values.min(0), values.max(0), alpha=0.15, color=line.get_color())
    majority = next((utility(s).majority for s in data.settings if utility(s).majority is not None), None)
    if majority is not None:
        ax.axhline(majority, color="gray", ls=":", lw=1, label="majority class")
    seeds = max(len(v) for _, _, v in curves)
    ax.set(xlabel="round", ylabel="test accuracy", title="global model after each round")
    ax.legend(fontsize=6)
    path = save_figure(fig, folder / "accuracy-per-round.png")
    return [Figure(path, "Test accuracy per round",
                   f"Test accuracy of each setting's global model after every FedAvg round (mean over {seeds} "
                   "training seed(s), band from the lowest to the highest), the undefended baseline dashed and the "
                   "accuracy of always predicting the majority class dotted.", "Leakage and utility")]


def curves_vs_training(data: StudyData, folder: Path) -> list[Figure]:
    """SSIM against the client's batch size and its number of local iterations (one line per setting), where the
    attacked updates have at least two distinct values."""
    figures = []
    kw: dict[str, Any] = {"resamples": data.resamples, "confidence": data.confidence}
    for column, what in (("batch_size", "batch size"), ("local_steps", "local iterations")):
        for index, rows in sorted(data.by_attack().items()):
            label = data.attack_labels.get(index, rows[0]["attack"])
            by_setting: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for row in rows:
                by_setting[row["setting_label"]].append(row)
            bands = {s: band(rs, lambda r: r.get(column), lambda r: r.get("ssim_per_image") or [], **kw)  # noqa: B023
                     for s, rs in by_setting.items()}
            if not any(bands.values()):
                continue
            fig, ax = plt.subplots(figsize=(5.5, 3.4))
            for s, b in bands.items():
                if b is not None:
                    _band_plot(ax, b, s)
            ax.set(xlabel=what, ylabel="SSIM", title=f"{label}: SSIM vs {what}")
            ax.legend(fontsize=7)
            path = save_figure(fig, folder / f"ssim-vs-{column}-a{index}.png")
            figures.append(Figure(path, f"{label}: SSIM vs {what}",
                                  f"Mean SSIM of the reconstructions grouped by the attacked client's {what} (as "
                                  f"recorded with its update), {data.confidence:.0%} bootstrap bands.",
                                  "Leakage and local training"))
    return figures
