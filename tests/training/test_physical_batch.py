"""The automatic physical batch size: bounded by the expected batch, and as cheap as fixed-size passes."""

from __future__ import annotations

import math

import pytest

from privaudit.training._config import (
    MAX_AUTO_OVER_EXPECTED,
    MAX_AUTO_PHYSICAL_BATCH,
    PASS_OVERHEAD_ROWS,
    auto_physical_batch_size,
)


def _expected_work(n: int, q: float, size: int) -> float:
    """E[ceil(b / size)] * (size + overhead) for b ~ Binomial(n, q), summed exactly."""
    log_pmf = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(q)
               + (n - k) * math.log1p(-q) for k in range(n + 1)]
    return sum(math.exp(lp) * math.ceil(k / size) for k, lp in enumerate(log_pmf)) * (size + PASS_OVERHEAD_ROWS)


@pytest.mark.parametrize(("batch", "n"), [(16, 128), (32, 256), (100, 1000), (1024, 8192), (4, 60000), (512, 60000)])
def test_auto_size_is_capped_and_no_costlier_than_the_expected_size(batch, n):
    q = batch / n
    size = auto_physical_batch_size(expected_batch_size=batch, dataset_size=n, sampling_rate=q)
    grain = 8 if batch >= 64 else 2
    assert 1 <= size <= min(MAX_AUTO_PHYSICAL_BATCH, math.ceil(MAX_AUTO_OVER_EXPECTED * batch / grain) * grain)
    # The expected work (the cost model, summed exactly) is at most that of passes of the
    # expected batch size (the 'fixed-size setting'), up to the normal approximation.
    assert _expected_work(n, q, size) <= 1.02 * _expected_work(n, q, min(batch, MAX_AUTO_PHYSICAL_BATCH))


def test_passes_never_hold_more_rows_than_the_expected_batch():
    # An expected batch of 16 used to get passes of 24 rows (1.5x the memory of passes of 16).
    assert auto_physical_batch_size(expected_batch_size=16, dataset_size=128, sampling_rate=0.125) == 16
    assert auto_physical_batch_size(expected_batch_size=32, dataset_size=256, sampling_rate=0.125) == 32
    assert auto_physical_batch_size(expected_batch_size=1024, dataset_size=8192, sampling_rate=0.125) == 544
