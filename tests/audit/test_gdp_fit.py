"""Gaussian-DP fit: recovers mu on Gaussian scores, is rank-based, says it is an estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privaudit.accounting._gdp_math import gdp_epsilon
from privaudit.audit import GdpEstimate, gdp_fit


def _naive_mu(ins, outs, min_count):
    """Loop over distinct thresholds, keep the most central ones, take the median."""
    rows = []
    for t in sorted(set(ins) | set(outs)):
        tp = sum(x >= t for x in ins)
        fp = sum(x >= t for x in outs)
        fn, tn = len(ins) - tp, len(outs) - fp
        if min(tp, fp, tn, fn) > 0:  # elsewhere a probit is infinite
            mu_t = stats.norm.ppf(1 - fp / len(outs)) - stats.norm.ppf(fn / len(ins))
            rows.append((min(tp, fp, tn, fn), mu_t))
    if not rows:
        return None, 0
    used = min(min_count, max(c for c, _ in rows))
    return abs(float(np.median([mu_t for c, mu_t in rows if c >= used]))), used


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0, 3.0])
def test_recovers_mu_of_gaussian_scores(mu):
    # Prepare
    rng = np.random.default_rng(int(mu * 10))
    ins, outs = rng.normal(mu, 1, 5000), rng.normal(0, 1, 5000)
    # Execute
    est = gdp_fit(ins, outs, delta=1e-5)
    # Assert
    assert est.mu == pytest.approx(mu, abs=0.1)
    assert est.epsilon == pytest.approx(gdp_epsilon(est.mu, 1e-5), rel=1e-12)


def test_exact_quantiles_give_exact_mu():
    n = 4000
    out = stats.norm.ppf((np.arange(n) + 0.5) / n)
    assert gdp_fit(out + 1.5, out, delta=1e-5).mu == pytest.approx(1.5, abs=2e-3)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1), mu=st.floats(0, 3), n=st.integers(40, 200),
    min_count=st.integers(1, 15),
)
def test_matches_naive_loop(seed, mu, n, min_count):
    rng = np.random.default_rng(seed)
    ins, outs = np.round(rng.normal(mu, 1, n), 1), np.round(rng.normal(0, 1, n + 7), 1)
    if min(ins) > max(outs) or min(outs) > max(ins):
        return  # perfect separation: covered below
    mu, used = _naive_mu(list(ins), list(outs), min_count)
    if mu is None:  # overlap only through ties: nothing to fit
        with pytest.raises(ValueError, match="in_scores"):
            gdp_fit(ins, outs, delta=1e-5, min_count=min_count)
        return
    est = gdp_fit(ins, outs, delta=1e-5, min_count=min_count)
    assert est.mu == pytest.approx(mu, rel=1e-9, abs=1e-12)
    assert f">= {used} canaries" in est.method


def test_rank_based_and_symmetric():
    rng = np.random.default_rng(3)
    ins, outs = rng.normal(1.2, 1, 3000), rng.normal(0, 1, 3000)
    base = gdp_fit(ins, outs, delta=1e-6)
    # Any increasing transform of the score gives the same fit.
    assert gdp_fit(np.exp(ins), np.exp(outs), delta=1e-6).mu == pytest.approx(base.mu, rel=1e-12)
    # A reversed attack (IN canaries score lower) reveals as much.
    assert gdp_fit(-ins, -outs, delta=1e-6).mu == pytest.approx(base.mu, rel=1e-12)


def test_no_signal_gives_small_mu():
    rng = np.random.default_rng(4)
    est = gdp_fit(rng.normal(size=5000), rng.normal(size=5000), delta=1e-5)
    assert est.mu < 0.1


def test_is_labelled_an_estimate():
    est = gdp_fit(np.arange(100.0) + 20, np.arange(100.0), delta=1e-5)
    assert isinstance(est, GdpEstimate) and est.is_bound is False
    assert est.to_dict()["is_bound"] is False
    assert "estimate" in (GdpEstimate.__doc__ or "").lower()
    with pytest.raises(TypeError):
        GdpEstimate(mu=1.0, epsilon=1.0, delta=1e-5, method="m", thresholds_used=1,
                    is_bound=True)  # type: ignore[call-arg]


def test_few_canaries_fall_back_to_central_thresholds():
    # mu = 3 on 40 + 40 canaries: the scores overlap, but no threshold has 10 per cell.
    rng = np.random.default_rng(0)
    est = gdp_fit(rng.normal(3, 1, 40), rng.normal(0, 1, 40), delta=1e-5)
    assert "canaries per cell" in est.method and ">= 10" not in est.method
    assert 1.5 < est.mu < 5


def test_perfect_separation_is_infinite():
    est = gdp_fit(np.arange(50.0) + 100, np.arange(50.0), delta=1e-5)
    assert est.mu == math.inf and est.epsilon == math.inf and est.thresholds_used == 0


@pytest.mark.parametrize(
    "ins, outs, kwargs, name",
    [
        ([], [1.0] * 30, {}, "in_scores"),
        ([1.0] * 30, [float("nan")] * 30, {}, "out_scores"),
        ([1.0] * 30, [0.0] * 30, {"delta": 0.0}, "delta"),
        ([1.0] * 30, [0.0] * 30, {"delta": 1.0}, "delta"),
        ([1.0] * 30, [0.0] * 30, {"min_count": 0}, "min_count"),
        # Overlapping only in a tie, so every threshold leaves some cell empty.
        ([0.0, 1.0], [1.0, 2.0], {}, "in_scores"),
        ([1.0] * 30, [1.0] * 30, {}, "in_scores"),
    ],
)
def test_bad_input_rejected(ins, outs, kwargs, name):
    kwargs = {"delta": 1e-5, **kwargs}
    with pytest.raises(ValueError, match=name):
        gdp_fit(ins, outs, **kwargs)
