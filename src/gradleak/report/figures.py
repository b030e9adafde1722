"""The report's figures (matplotlib, Agg backend), drawn only from what a study's results contain.

Each function returns the :class:`Figure` it wrote, or ``None`` when the results hold nothing to plot (a curve
needs at least two x values; a t-SNE at least three points): a figure is never drawn from made-up data.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from gradleak.report.data import StudyData, finite
from gradleak.report.verdict import (
    GroupVerdict,
    image_leaks,
)
from gradleak.study.results import load_unit_arrays

__all__ = ["Figure", "evidence_figures", "recon_grids", "save_figure", "save_image_row", "slug", "tsne_figure"]

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


def save_figure(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def slug(text: str) -> str:
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
        path = folder / f"recon-a{index}-c{client}-{slug(setting)}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        shown = sum(len(a["truth"]) for _, a in blocks)
        figures.append(Figure(path, f"{label}: client {client}, {setting}",
                              f"Client {client}'s training images (original), the attack's reconstruction paired "
                              f"with each by SSIM with its verdict under the leak rule, and the attacker's prior; "
                              f"{shown} image(s) over {len(blocks)} round(s), first {ncols} shown per round.",
                              "Reconstructions"))
    return figures


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
        path = save_figure(fig, folder / f"tsne-a{index}.png")
        space = data.config.get("metrics", {}).get("embedding_space", "model")
        figures.append(Figure(path, f"{label}: t-SNE of original and reconstructed embeddings",
                              f"Joint 2-D t-SNE (scikit-learn, seed {seed}) of the {space}-space embeddings of the "
                              "attacked clients' images and their paired reconstructions.", "Embeddings"))
    return figures
