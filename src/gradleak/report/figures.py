"""The report's figures (matplotlib, Agg backend), drawn only from what a study's results contain.

Each function returns the :class:`Figure` it wrote, or ``None`` when the results hold nothing to plot (a curve
needs at least two x values; a t-SNE at least three points): a figure is never drawn from made-up data.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from gradleak.report.data import StudyData, band, finite, param_value, short
from gradleak.report.verdict import (
    GroupVerdict,
    display_label,
    image_leaks,
    is_baseline,
    ordered_settings,
    row_leaks,
    utility,
)
from gradleak.study.results import load_unit_arrays

__all__ = ["Figure", "accuracy_curves", "curves_vs_param", "curves_vs_training", "evidence_figures", "recon_grids",
           "save_image_row", "tsne_figure"]

MAX_COLUMNS = 8


@dataclass(frozen=True)
class Figure:
    """A written PNG with its title, caption and report section."""

    path: Path
    title: str
    caption: str
    section: str


def _gray(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` in [0, 1] → something ``imshow`` draws (grey for one channel)."""
    img = np.clip(np.nan_to_num(image, nan=0.5), 0, 1)
    return (img[0], "gray") if img.shape[0] == 1 else (img.transpose(1, 2, 0), None)


def save_image_row(images: Any, path: Path, *, title: str = "") -> Path:
    """Save a row of ``(N, C, H, W)`` images in [0, 1] as one PNG (used by ``gradleak attack``)."""
    arr = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float32)
    n = max(1, min(len(arr), 16))
    fig, axes = plt.subplots(1, n, figsize=(1.2 * n, 1.5), squeeze=False)
    for ax, img in zip(axes[0], arr[:n], strict=False):
        data, cmap = _gray(img)
        ax.imshow(data, cmap=cmap, vmin=0, vmax=1)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _arrays(data: StudyData, row: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """A unit's image arrays when they are complete and consistent (truth and paired reconstructions of one shape)."""
    try:
        arrays = load_unit_arrays(data.out, str(row.get("unit")))
    except Exception:  # an unreadable npz: the figure is skipped, the report goes on
        return None
    truth, paired = arrays.get("truth"), arrays.get("paired")
    if truth is None or paired is None or truth.ndim != 4 or paired.shape != truth.shape or not len(truth):
        return None
    prior = arrays.get("prior")
    if prior is not None and prior.shape != truth.shape[1:]:
        arrays = {k: v for k, v in arrays.items() if k != "prior"}
    return arrays


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def recon_grids(data: StudyData, folder: Path) -> list[Figure]:
    """One grid per (attack, setting, client): for each attacked round, rows original | reconstruction | prior
    (prior only when the attack had one), first :data:`MAX_COLUMNS` images, SSIM under each reconstruction."""
    groups: dict[tuple[int, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in data.attacks:
        groups[(int(row["attack_index"]), row["setting"], int(row["client"]))].append(row)
    figures = []
    for (index, key, client), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        rows = sorted(rows, key=lambda r: r["round"])
        blocks = []
        for row in rows:
            arrays = _arrays(data, row)
            if arrays is None:
                continue
            blocks.append((row, arrays))
        if not blocks:
            continue
        label, setting = data.attack_labels.get(index, rows[0]["attack"]), data.setting(key)["label"]
        kinds = ["original", "reconstruction"] + (["prior"] if any("prior" in a for _, a in blocks) else [])
        ncols = min(MAX_COLUMNS, max(len(a["truth"]) for _, a in blocks))
        channels, height, width = blocks[0][1]["truth"].shape[1:]
        pad, caption = 2, 12  # pixels between tiles, and under each reconstruction for its SSIM
        tile_h, tile_w = height + pad + caption, width + pad
        nrows = len(kinds) * len(blocks)
        # one mosaic drawn by one imshow: hundreds of axes would make this the slowest part of the report
        mosaic = np.ones((nrows * tile_h, ncols * tile_w, 3), dtype=np.float32)
        fig, ax = plt.subplots(figsize=(0.55 * ncols * tile_w / 16 + 1.6, 0.55 * nrows * tile_h / 16 + 0.5))
        for b, (row, arrays) in enumerate(blocks):
            ssims = row.get("ssim_per_image") or []
            leaks = image_leaks(row, data.tau)
            for k, kind in enumerate(kinds):
                r = b * len(kinds) + k
                ax.text(-4, r * tile_h + height / 2, f"round {row['round']}\n{kind}" if k == 0 else kind,
                        ha="right", va="center", fontsize=7)
                for c in range(min(ncols, len(arrays["truth"]))):
                    image = {"original": arrays["truth"][c], "reconstruction": arrays["paired"][c],
                             "prior": arrays.get("prior", np.full_like(arrays["truth"][c], np.nan))}[kind]
                    tile = np.clip(np.nan_to_num(image, nan=0.85), 0, 1)
                    tile = np.repeat(tile, 3, axis=0) if channels == 1 else tile
                    mosaic[r * tile_h:r * tile_h + height, c * tile_w:c * tile_w + width] = tile.transpose(1, 2, 0)
                    if kind == "reconstruction":
                        s = ssims[c] if c < len(ssims) else None
                        if s is None or not np.isfinite(s) or np.isnan(image).all():
                            text = "not recovered"
                        else:
                            text = f"SSIM {s:.2f} · {'leak' if c < len(leaks) and leaks[c] else 'no leak'}"
                        ax.text(c * tile_w + width / 2, r * tile_h + height + caption / 2, text, ha="center",
                                va="center", fontsize=5.5)
        ax.imshow(mosaic, interpolation="nearest")
        ax.axis("off")
        ax.set_title(f"{label} — client {client} — {setting}", fontsize=9)
        path = folder / f"recon-a{index}-c{client}-{_slug(setting)}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        shown = sum(len(a["truth"]) for _, a in blocks)
        figures.append(Figure(path, f"{label}: client {client}, {setting}",
                              f"Client {client}'s training images (original), the attack's reconstruction paired "
                              f"with each by SSIM with its verdict under the leak rule, and the attacker's prior; "
                              f"{shown} image(s) over {len(blocks)} round(s), first {ncols} shown per round.",
                              "Reconstructions"))
    return figures


def _band_plot(ax: Any, b: Any, label: str) -> None:
    line, = ax.plot(b.x, b.mean, marker="o", label=label)
    if any(lo != hi for lo, hi in zip(b.low, b.high, strict=True)):
        ax.fill_between(b.x, b.low, b.high, alpha=0.2, color=line.get_color())


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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
                path = _save(fig, folder / f"ssim-accuracy-vs-{_slug(name)}-a{index}.png")
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
                path = _save(fig, folder / f"leaks-vs-{_slug(name)}-a{index}.png")
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
                path = _save(fig, folder / f"rdlv-vs-{_slug(name)}-a{index}.png")
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
                path = _save(fig, folder / f"iip-cosine-vs-{_slug(name)}-a{index}.png")
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
    path = _save(fig, folder / "accuracy-per-round.png")
    return [Figure(path, "Test accuracy per round",
                   f"Test accuracy of each setting's global model after every FedAvg round (mean over {seeds} "
                   "training seed(s), band from the lowest to the highest), the undefended baseline dashed and the "
                   "accuracy of always predicting the majority class dotted.", "Leakage and utility")]


def evidence_figures(data: StudyData, folder: Path, verdicts: Sequence[GroupVerdict]) -> dict[int, Figure]:
    """Per client group (by position in ``verdicts``): original | reconstruction | prior of its evidence unit
    (first four images), each reconstruction captioned with its SSIM, RDLV and verdict."""
    out: dict[int, Figure] = {}
    for i, verdict in enumerate(verdicts):
        row = verdict.evidence
        if row is None:
            continue
        arrays = _arrays(data, row)
        if arrays is None:
            continue
        ssims, rdlv = row.get("ssim_per_image") or [], row.get("rdlv_per_image") or []
        leaks = image_leaks(row, data.tau)
        # the leaked images first, then by SSIM: the strongest evidence, at most four
        shown = sorted(range(len(arrays["truth"])), key=lambda j: (
            not (j < len(leaks) and leaks[j]), -(ssims[j] if j < len(ssims) and finite([ssims[j]]) else -2.0)))[:4]
        n = len(shown)
        kinds = ["original", "reconstruction"] + (["prior"] if "prior" in arrays else [])
        fig, axes = plt.subplots(len(kinds), n, figsize=(1.3 * n + 0.8, 1.45 * len(kinds)), squeeze=False)
        for k, kind in enumerate(kinds):
            for col, c in enumerate(shown):
                ax = axes[k][col]
                image = {"original": arrays["truth"][c], "reconstruction": arrays["paired"][c],
                         "prior": arrays.get("prior", arrays["truth"][c])}[kind]
                pixels, cmap = _gray(image)
                ax.imshow(pixels, cmap=cmap, vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0:
                    ax.set_ylabel(kind, fontsize=7)
                if kind == "reconstruction":
                    s_ = ssims[c] if c < len(ssims) and finite([ssims[c]]) else None
                    r_ = rdlv[c] if c < len(rdlv) and finite([rdlv[c]]) else None
                    text = "not recovered" if s_ is None else f"SSIM {s_:.2f}" + (
                        f", RDLV {r_:+.0f} %" if r_ is not None else "")
                    verdict_text = "leak" if c < len(leaks) and leaks[c] else "no leak"
                    ax.set_xlabel(f"{text}\n{verdict_text}", fontsize=7)
        setting = data.setting(row["setting"])["label"]
        fig.suptitle(f"client {row.get('client')}, round {row.get('round')}, {setting}", fontsize=7)
        path = folder / f"evidence-{i}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        out[i] = Figure(path, f"Evidence: {verdict.who()}", f"Round {row.get('round')}, {setting}.", "Verdict")
    return out


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
            path = _save(fig, folder / f"ssim-vs-{column}-a{index}.png")
            figures.append(Figure(path, f"{label}: SSIM vs {what}",
                                  f"Mean SSIM of the reconstructions grouped by the attacked client's {what} (as "
                                  f"recorded with its update), {data.confidence:.0%} bootstrap bands.",
                                  "Leakage and local training"))
    return figures


def tsne_figure(data: StudyData, folder: Path, seed: int = 0) -> list[Figure]:
    """Per attack: t-SNE of original and reconstruction embeddings, one panel per (round, setting) — the
    embedding space of a round is that round's global model, so rounds are not mixed."""
    from gradleak.metrics import tsne

    figures = []
    for index, rows in sorted(data.by_attack().items()):
        panels: dict[tuple[int, str], tuple[list[np.ndarray], list[np.ndarray]]] = defaultdict(lambda: ([], []))
        for row in rows:
            arrays = load_unit_arrays(data.out, row["unit"])
            if "emb_truth" in arrays and "emb_recon" in arrays:
                panels[(int(row["round"]), row["setting_label"])][0].append(arrays["emb_truth"])
                panels[(int(row["round"]), row["setting_label"])][1].append(arrays["emb_recon"])
        panels = {k: v for k, v in panels.items() if sum(len(a) for a in v[0]) + sum(len(a) for a in v[1]) >= 3}
        if not panels:
            continue
        rounds = sorted({r for r, _ in panels})
        labels = [s["label"] for s in data.settings if any((r, s["label"]) in panels for r in rounds)]
        fig, axes = plt.subplots(len(rounds), len(labels), figsize=(3 * len(labels), 2.8 * len(rounds)),
                                 squeeze=False)
        for i, r in enumerate(rounds):
            for j, s in enumerate(labels):
                ax = axes[i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if (r, s) not in panels:
                    ax.axis("off")
                    continue
                truth, recon = (np.concatenate(p) for p in panels[(r, s)])
                a, b = tsne(truth, recon, seed=seed, perplexity=min(30.0, max(2.0, (len(truth) + len(recon)) / 4)),
                            max_iter=500)
                ax.scatter(a[:, 0], a[:, 1], s=14, marker="o", label="original")
                ax.scatter(b[:, 0], b[:, 1], s=14, marker="x", label="reconstruction")
                ax.set_title(f"round {r}, {s}", fontsize=8)
        axes[0][0].legend(fontsize=7)
        label = data.attack_labels.get(index, rows[0]["attack"])
        fig.suptitle(f"{label}: t-SNE of embeddings", fontsize=9)
        path = _save(fig, folder / f"tsne-a{index}.png")
        space = data.config.get("metrics", {}).get("embedding_space", "model")
        figures.append(Figure(path, f"{label}: t-SNE of original and reconstructed embeddings",
                              f"Joint 2-D t-SNE (scikit-learn, seed {seed}) of the {space}-space embeddings of the "
                              "attacked clients' images and their paired reconstructions.", "Embeddings"))
    return figures
