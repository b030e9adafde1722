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

from gradleak.report.data import StudyData, band, param_value, short
from gradleak.study.results import load_unit_arrays

__all__ = ["Figure", "curves_vs_param", "curves_vs_training", "recon_grids", "save_image_row", "tsne_figure"]

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
            arrays = load_unit_arrays(data.out, row["unit"])
            if "truth" not in arrays:
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
                        text = "not recovered" if s is None or np.isnan(image).all() else f"SSIM {s:.2f}"
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
                              f"with each by SSIM, and the attacker's prior; {shown} image(s) over "
                              f"{len(blocks)} round(s), first {ncols} shown per round.", "Reconstructions"))
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


def curves_vs_param(data: StudyData, folder: Path) -> list[Figure]:
    """Per attack and numeric grid parameter: SSIM per client and test accuracy; RDLV per client; IIP and
    embedding cosine — each against the parameter, with bootstrap bands over images (SSIM, RDLV, cosine) or
    attacked updates (IIP)."""
    figures = []
    kw = {"resamples": data.resamples, "confidence": data.confidence}
    for param in data.numeric_params():
        name = short(param)
        acc = [(param_value(data, {"setting": s["key"]}, param), s["fl"].get("final_test_accuracy"))
               for s in data.settings]
        acc = sorted((x, y) for x, y in acc if x is not None and y is not None)
        for index, rows in sorted(data.by_attack().items()):
            label = data.attack_labels.get(index, rows[0]["attack"])
            x = functools.partial(_param_of, data, param=param)
            clients = _per_client(rows)
            ssim = {c: band(rs, x, lambda r: r.get("ssim_per_image") or [], **kw) for c, rs in clients.items()}
            if any(ssim.values()):
                fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
                for c, b in ssim.items():
                    if b is not None:
                        _band_plot(left, b, f"client {c}")
                left.axhline(data.tau, color="gray", ls=":", lw=1, label=f"τ = {data.tau}")
                left.set(xlabel=name, ylabel="SSIM", title=f"{label}: SSIM vs {name}")
                left.legend(fontsize=7)
                if len(acc) >= 2:
                    right.plot([a for a, _ in acc], [b for _, b in acc], marker="s", color="black")
                    right.set(xlabel=name, ylabel="test accuracy", title=f"final global model vs {name}")
                else:
                    right.axis("off")
                path = _save(fig, folder / f"ssim-accuracy-vs-{_slug(name)}-a{index}.png")
                figures.append(Figure(path, f"{label}: SSIM and accuracy vs {name}",
                                      f"Mean SSIM of each client's reconstructions ({data.confidence:.0%} bootstrap "
                                      f"band over images and rounds) and the final test accuracy of each setting's "
                                      "global model.", "Leakage and utility"))
            rdlv = {c: band(rs, x, lambda r: r.get("rdlv_per_image") or [], **kw) for c, rs in clients.items()}
            if any(rdlv.values()):
                fig, ax = plt.subplots(figsize=(5.5, 3.4))
                for c, b in rdlv.items():
                    if b is not None:
                        _band_plot(ax, b, f"client {c}")
                ax.axhline(0, color="gray", ls=":", lw=1)
                ax.set(xlabel=name, ylabel="RDLV (%)", title=f"{label}: RDLV vs {name}")
                ax.legend(fontsize=7)
                path = _save(fig, folder / f"rdlv-vs-{_slug(name)}-a{index}.png")
                figures.append(Figure(path, f"{label}: RDLV vs {name}",
                                      "Relative data leakage value 100·(SSIM(T,I) − SSIM(T,P))/SSIM(T,P): how much "
                                      "closer the reconstruction is to the training image than the prior; "
                                      f"{data.confidence:.0%} bootstrap bands over images.", "Leakage and utility"))
            iip = band(rows, x, lambda r: [r.get("iip_fl")], **kw)
            cos = band(rows, x, lambda r: r.get("cosine_per_image") or [], **kw)
            if iip or cos:
                fig, ax = plt.subplots(figsize=(5.5, 3.4))
                if iip:
                    _band_plot(ax, iip, "IIP (FL: nearest image is the client's)")
                if cos:
                    _band_plot(ax, cos, "embedding cosine")
                ax.set(xlabel=name, ylabel="value", title=f"{label}: identifiability vs {name}")
                ax.legend(fontsize=7)
                path = _save(fig, folder / f"iip-cosine-vs-{_slug(name)}-a{index}.png")
                figures.append(Figure(path, f"{label}: IIP and embedding cosine vs {name}",
                                      "Image identifiability precision (FL variant, over attacked updates) and "
                                      "cosine similarity of paired embeddings, with bootstrap bands.",
                                      "Leakage and utility"))
    return figures


def curves_vs_training(data: StudyData, folder: Path) -> list[Figure]:
    """SSIM against the client's batch size and its number of local iterations (one line per setting), where the
    attacked updates have at least two distinct values."""
    figures = []
    kw = {"resamples": data.resamples, "confidence": data.confidence}
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
        panels: dict[tuple[int, str], list[np.ndarray]] = defaultdict(lambda: [[], []])  # type: ignore[arg-type]
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
