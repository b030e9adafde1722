"""Speed and fidelity of gradleak's batched SSIM against scikit-image looped over image pairs.

Times ``gradleak.metrics.ssim`` on 256 pairs of 32×32 images (grey and RGB) in one call against
``skimage.metrics.structural_similarity`` called once per pair (the way per-image SSIM is usually computed),
checks the two agree, prints a one-line summary per case and writes ``benchmarks/results/bench_ssim.json``.

Run: ``python benchmarks/bench_ssim.py [--pairs 256] [--repeats 7] [--threads 1]``. Times are medians of
``--repeats`` calls after a warm-up; torch runs single-threaded by default, like the skimage loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage
import torch
from skimage.metrics import structural_similarity

from gradleak.metrics import ssim
from provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results" / "bench_ssim.json"


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls (after one warm-up call) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_case(channels: int, pairs: int, size: int, repeats: int, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    a = rng.random((pairs, channels, size, size))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0.0, 1.0)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)

    def looped() -> np.ndarray:
        return np.array(
            [
                structural_similarity(
                    x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=0
                )
                for x, y in zip(a, b, strict=True)
            ]
        )

    ours_s, ours = timed(lambda: ssim(ta, tb), repeats)
    ref_s, ref = timed(looped, max(1, repeats // 3))
    max_abs_diff = float(np.abs(ours.numpy() - ref).max())
    return {
        "case": f"{'grey' if channels == 1 else 'rgb'} {pairs}x{channels}x{size}x{size}",
        "pairs": pairs,
        "channels": channels,
        "size": size,
        "gradleak_s": ours_s,
        "skimage_loop_s": ref_s,
        "speedup": ref_s / ours_s,
        "max_abs_diff": max_abs_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; 1 (default) is like-for-like with skimage's "
        "single-threaded loop, 0 keeps torch's default",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cases = [bench_case(c, args.pairs, args.size, args.repeats, args.seed) for c in (1, 3)]
    for case in cases:
        print(
            f"ssim {case['case']}: gradleak {case['gradleak_s'] * 1e3:.1f} ms, skimage loop "
            f"{case['skimage_loop_s'] * 1e3:.1f} ms, speed-up {case['speedup']:.1f}x, "
            f"max |diff| {case['max_abs_diff']:.1e}"
        )
    record = {
        "benchmark": "bench_ssim",
        "cases": cases,
        "torch": torch.__version__,
        "skimage": skimage.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],  # the machine is shared: high load inflates both timings
        "device": "cpu",
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"provenance": provenance(), **record}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
