"""GDP (CLT) accountant and the mu-GDP <-> (epsilon, delta) conversions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis import gdp as opacus_gdp
from scipy import stats

from privaudit.accounting import (
    ComposedEvent,
    GaussianEvent,
    GDPAccountant,
    LaplaceEvent,
    PoissonSampledEvent,
    RDPAccountant,
    SampledWithoutReplacementEvent,
    UnsupportedEventError,
    dpsgd_event,
    make_accountant,
)
from privaudit.accounting._gdp_math import gdp_delta, gdp_epsilon, poisson_gaussian_mu


def _naive_delta(mu: float, eps: float) -> float:
    """arXiv:1905.02383, Corollary 2.13, written as printed (fine while delta is not tiny)."""
    return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)


# --------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(mu=st.floats(0.05, 5.0), eps=st.floats(0.0, 8.0))
def test_delta_matches_the_formula_as_printed(mu, eps):
    naive = _naive_delta(mu, eps)
    assume(naive > 1e-8)  # below that the printed form loses digits to cancellation
    assert gdp_delta(mu, eps) == pytest.approx(naive, rel=1e-7)


def test_delta_against_high_precision():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    for mu, eps in [(0.1, 3.0), (1.0, 12.0), (30.0, 900.0), (100.0, 5000.0), (100.0, 8000.0)]:
        m, e = mpmath.mpf(mu), mpmath.mpf(eps)
        exact = mpmath.ncdf(-e / m + m / 2) - mpmath.exp(e) * mpmath.ncdf(-e / m - m / 2)
        assert gdp_delta(mu, eps) == pytest.approx(float(exact), rel=1e-8)


@settings(max_examples=60, deadline=None)
@given(mu=st.floats(0.01, 100.0), log10_delta=st.floats(-15.0, -0.5))
def test_epsilon_delta_round_trip(mu, log10_delta):
    delta = 10.0**log10_delta
    eps = gdp_epsilon(mu, delta)
    if eps == 0.0:
        assert gdp_delta(mu, 0.0) <= delta
    else:
        assert gdp_delta(mu, eps) == pytest.approx(delta, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    mu1=st.floats(0.01, 50.0), mu2=st.floats(0.01, 50.0), e1=st.floats(0.0, 100.0), e2=st.floats(0.0, 100.0)
)
def test_delta_is_monotone(mu1, mu2, e1, e2):
    (lo_mu, hi_mu), (lo_e, hi_e) = sorted((mu1, mu2)), sorted((e1, e2))
    assert gdp_delta(lo_mu, lo_e) >= gdp_delta(lo_mu, hi_e)  # decreasing in epsilon
    assert gdp_delta(lo_mu, lo_e) <= gdp_delta(hi_mu, lo_e)  # increasing in mu


@settings(max_examples=40, deadline=None)
@given(
    mu1=st.floats(0.01, 50.0), mu2=st.floats(0.01, 50.0), d1=st.floats(1e-14, 0.5), d2=st.floats(1e-14, 0.5)
)
def test_epsilon_is_monotone(mu1, mu2, d1, d2):
    (lo_mu, hi_mu), (lo_d, hi_d) = sorted((mu1, mu2)), sorted((d1, d2))
    assert gdp_epsilon(lo_mu, hi_d) <= gdp_epsilon(lo_mu, lo_d)  # decreasing in delta
    assert gdp_epsilon(lo_mu, lo_d) <= gdp_epsilon(hi_mu, lo_d)  # increasing in mu


def test_conversion_edges_and_validation():
    assert gdp_delta(0.0, 0.0) == 0.0 and gdp_epsilon(0.0, 1e-5) == 0.0
    assert gdp_epsilon(1e-9, 1e-5) == 0.0  # delta(0) = 2 Phi(mu/2) - 1 is already below 1e-5
    assert 0.0 < gdp_delta(100.0, 1.0) <= 1.0
    with pytest.raises(ValueError, match="mu"):
        gdp_delta(-1.0, 1.0)
    with pytest.raises(ValueError, match="epsilon"):
        gdp_delta(1.0, -0.1)
    with pytest.raises(ValueError, match="delta"):
        gdp_epsilon(1.0, 1.0)
    with pytest.raises(ValueError, match="steps"):
        poisson_gaussian_mu(noise_multiplier=1.0, sampling_rate=0.1, steps=2.5)


# --------------------------------------------------------------------------------------
# The accountant against Opacus and the exact q = 1 case
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.5, 0.8, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("q", [1e-3, 1e-2, 0.1])
@pytest.mark.parametrize("steps", [100, 10_000])
def test_matches_opacus_clt(sigma, q, steps):
    ours = GDPAccountant().compose(dpsgd_event(sigma, steps, sampling_rate=q))
    mu = opacus_gdp.compute_mu_poisson(steps=steps, noise_multiplier=sigma, sample_rate=q)
    assert ours.mu == pytest.approx(mu, rel=1e-12)
    try:
        theirs = opacus_gdp.compute_eps_poisson(
            steps=steps, noise_multiplier=sigma, sample_rate=q, delta=1e-5
        )
    except ValueError:  # Opacus brackets its root in [0, 500]
        assert ours.get_epsilon(1e-5) > 500
        return
    assert ours.get_epsilon(1e-5) == pytest.approx(theirs, rel=1e-8, abs=1e-10)


def test_unsampled_gaussian_is_exact():
    # REFERENCES.md: sigma = 0.5, q = 1, T = 100 is exactly mu-GDP with mu = 20; epsilon 284.3918 at 1e-5.
    acct = GDPAccountant().compose(dpsgd_event(0.5, 100, sampling_rate=1.0))
    assert acct.is_exact and acct.mu == pytest.approx(20.0, rel=1e-14)
    assert acct.get_epsilon(1e-5) == pytest.approx(284.3918, abs=1e-4)
    # Heterogeneous unsampled steps: mu^2 = sum count / sigma^2.
    mixed = GDPAccountant().compose(ComposedEvent((GaussianEvent(2.0), GaussianEvent(0.5))), 3)
    assert mixed.is_exact and mixed.mu == pytest.approx(math.sqrt(3 / 4 + 3 * 4), rel=1e-14)


def test_heterogeneous_clt_adds_mu_squared():
    a, b = dpsgd_event(1.0, 400, sampling_rate=0.01), dpsgd_event(3.0, 900, sampling_rate=0.05)
    acct = GDPAccountant().compose(ComposedEvent((a, b, GaussianEvent(4.0))))
    expected = 400 * 0.01**2 * math.expm1(1.0) + 900 * 0.05**2 * math.expm1(1 / 9) + 1 / 16
    assert acct.mu == pytest.approx(math.sqrt(expected), rel=1e-13)
    assert not acct.is_exact
    assert poisson_gaussian_mu(noise_multiplier=1.0, sampling_rate=0.01, steps=400) == pytest.approx(
        0.01 * math.sqrt(400 * math.expm1(1.0))
    )


def test_clt_can_under_report_at_small_steps():
    # REFERENCES.md: one step at sigma = 1, q = 0.1 has exact epsilon 1.684544 at delta = 1e-5;
    # the CLT estimate is far below it, which is why is_upper_bound is False.
    acct = GDPAccountant().compose(dpsgd_event(1.0, 1, sampling_rate=0.1))
    assert not GDPAccountant.is_upper_bound
    assert acct.get_epsilon(1e-5) < 0.5 * 1.684544
    rdp = RDPAccountant().compose(dpsgd_event(1.0, 1, sampling_rate=0.1)).get_epsilon(1e-5)
    assert acct.get_epsilon(1e-5) < rdp


def test_relations_and_support():
    rep = GDPAccountant(neighboring_relation="replace_one").compose(GaussianEvent(2.0), 4)
    assert rep.mu == pytest.approx(2.0)  # sensitivity 2: mu = 2/sigma per step
    with pytest.raises(UnsupportedEventError, match="PoissonSampledEvent"):
        GDPAccountant(neighboring_relation="replace_one").compose(dpsgd_event(1.0, 10, sampling_rate=0.1))
    acct = GDPAccountant()
    assert not acct.supports(LaplaceEvent(1.0))
    assert not acct.supports(SampledWithoutReplacementEvent(100, 10, GaussianEvent(1.0)))
    assert acct.supports(PoissonSampledEvent(0.5, PoissonSampledEvent(0.2, GaussianEvent(1.0))))
    nested = GDPAccountant().compose(PoissonSampledEvent(0.5, PoissonSampledEvent(0.2, GaussianEvent(1.0))))
    flat = GDPAccountant().compose(PoissonSampledEvent(0.1, GaussianEvent(1.0)))
    assert nested.mu == pytest.approx(flat.mu, rel=1e-14)
    assert make_accountant("gdp").name == "gdp"


@settings(max_examples=25, deadline=None)
@given(sigma=st.floats(0.5, 10.0), q=st.floats(1e-3, 0.5), half=st.integers(1, 20_000))
def test_composing_halves_equals_the_whole(sigma, q, half):
    whole = GDPAccountant().compose(dpsgd_event(sigma, 2 * half, sampling_rate=q))
    halves = GDPAccountant().compose(dpsgd_event(sigma, half, sampling_rate=q))
    halves.compose(dpsgd_event(sigma, half, sampling_rate=q))
    assert whole.mu == halves.mu
    assert np.isclose(whole.get_epsilon(1e-5), halves.get_epsilon(1e-5), rtol=1e-12)
