"""Bootstrap confidence intervals: coverage of a known mean, determinism, degenerate samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradleak.metrics import BootstrapCI, MetricInputError, bootstrap_ci


def test_percentile_interval_covers_the_true_mean_about_95_percent() -> None:
    # 200 samples of size 50 from N(0, 1); a 95 % interval should cover 0 in ~190 of them. The percentile
    # bootstrap under-covers slightly at n = 50 (~93-94 %); [0.88, 0.99] is ~3 binomial sd around 0.95
    rng = np.random.default_rng(7)
    covered = 0
    for rep in range(200):
        sample = rng.standard_normal(50)
        ci = bootstrap_ci(sample, confidence=0.95, n_resamples=1000, seed=rep)
        covered += ci.low <= 0.0 <= ci.high
        assert ci.low < ci.estimate < ci.high
    assert 0.88 <= covered / 200 <= 0.99


def test_interval_width_matches_the_normal_theory_width() -> None:
    sample = np.random.default_rng(3).standard_normal(400)
    ci = bootstrap_ci(sample, seed=0)
    expected = 2 * 1.959964 * sample.std(ddof=1) / np.sqrt(sample.size)
    assert ci.high - ci.low == pytest.approx(expected, rel=0.15)
    assert ci.estimate == pytest.approx(sample.mean())


def test_seeded_intervals_are_deterministic() -> None:
    sample = np.random.default_rng(1).random(30)
    assert bootstrap_ci(sample, seed=5) == bootstrap_ci(sample, seed=5)
    first = bootstrap_ci(sample, seed=torch.Generator().manual_seed(5))
    assert first == bootstrap_ci(sample, seed=torch.Generator().manual_seed(5))
    bca = bootstrap_ci(sample, seed=5, method="BCa", statistic=np.median)
    assert bca.low <= np.median(sample) <= bca.high


@pytest.mark.parametrize("values", [[0.7], [0.4, 0.4, 0.4], torch.ones(10)])
def test_degenerate_samples_give_a_degenerate_interval(values: object) -> None:
    ci = bootstrap_ci(values, seed=0, method="BCa")
    assert isinstance(ci, BootstrapCI)
    assert ci.low == ci.estimate == ci.high


def test_bad_input_raises() -> None:
    with pytest.raises(MetricInputError, match="empty"):
        bootstrap_ci([], seed=0)
    with pytest.raises(MetricInputError, match="NaN"):
        bootstrap_ci([0.1, float("nan")], seed=0)
    with pytest.raises(MetricInputError, match="confidence"):
        bootstrap_ci([0.1, 0.2], seed=0, confidence=95)
    with pytest.raises(MetricInputError, match="method"):
        bootstrap_ci([0.1, 0.2], seed=0, method="studentized")
