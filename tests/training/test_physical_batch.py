"""The automatic physical batch size: bounded by the expected batch, and as cheap as fixed-size passes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), size=st.integers(1, 64), round_to=st.sampled_from([None, 1, 8, 16]))
def test_physical_batches_cover_every_row_once_and_pad_only_the_last(n, size, round_to):
    from privaudit.training._sampler import physical_batches

    indices = torch.randperm(1000)[:n]
    batches = list(physical_batches(indices, physical_batch_size=size, round_to=round_to))
    assert len(batches) == -(-n // size)
    real = torch.cat([b.indices[b.mask] for b in batches]) if batches else torch.empty(0, dtype=indices.dtype)
    assert torch.equal(real, indices)  # in order, each row once
    for i, b in enumerate(batches):
        width = int(b.mask.numel())
        assert b.num_real == int(b.mask.sum()) and bool(b.mask[: b.num_real].all())
        if i < len(batches) - 1 or round_to is None:
            assert width == size  # fixed shapes, except a rounded last batch
        else:
            assert b.num_real <= width <= size and (width == size or width % round_to == 0)
            assert width - b.num_real < round_to
