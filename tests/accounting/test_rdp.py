"""RDP accountant: per-order values against Opacus, dp_accounting and quadrature;
epsilon never looser than Opacus' RDP; invariants as hypothesis properties."""

from __future__ import annotations

import functools
import logging
import math
import warnings

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant as OpacusRDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy import integrate, stats

from privaudit.accounting import (
    ComposedEvent,
    GaussianEvent,
    LaplaceEvent,
    NoOpEvent,
    PoissonSampledEvent,
    RDPAccountant,
    SampledWithoutReplacementEvent,
    SelfComposedEvent,
    UnsupportedEventError,
    dpsgd_event,
    make_accountant,
)
from privaudit.accounting._rdp_math import (
    DEFAULT_ORDERS,
    delta_from_rdp,
    epsilon_from_rdp,
    rdp_gaussian,
    rdp_laplace,
    rdp_poisson_subsampled_gaussian,
    rdp_sampled_without_replacement,
)

SIGMAS = [0.5, 0.8, 1.0, 2.0, 5.0]
RATES = [1e-3, 1e-2, 0.1, 1.0]
STEPS = [1, 100, 10**4]
ORDERS = np.array(DEFAULT_ORDERS)
OPACUS_ORDERS = np.array(OpacusRDPAccountant.DEFAULT_ALPHAS, dtype=float)


@functools.lru_cache(maxsize=None)
def _opacus_rdp(sigma: float, q: float, orders: tuple[float, ...]) -> np.ndarray:
    """Opacus' per-step RDP (its fractional series logs warnings when it gives up on an order)."""
    logging.disable(logging.WARNING)
    try:
        return np.asarray(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders)))
    finally:
        logging.disable(logging.NOTSET)


@functools.lru_cache(maxsize=None)
def _ours(sigma: float, q: float, orders: tuple[float, ...]) -> np.ndarray:
    return rdp_poisson_subsampled_gaussian(noise_multiplier=sigma, sampling_rate=q, orders=np.array(orders))


def _opacus_epsilon(rdp: np.ndarray, orders: np.ndarray, delta: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, _ = opacus_rdp.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def _rdp_by_quadrature(sigma: float, q: float, alpha: float) -> float:
    """D_alpha((1-q)N(0,s^2) + qN(1,s^2) || N(0,s^2)) by direct numerical integration of
    A - 1 = E_{z~N(0,s^2)}[(1 - q + q e^{(2z-1)/(2s^2)})^alpha - 1], written with expm1/log1p."""

    def integrand(z: float) -> float:
        x = alpha * math.log1p(q * math.expm1((2 * z - 1) / (2 * sigma**2)))
        log_pdf = stats.norm.logpdf(z, scale=sigma)
        if x < 500:
            return math.exp(log_pdf) * math.expm1(x)
        return math.exp(log_pdf + x)

    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    lo, hi = -40 * sigma, alpha + 40 * sigma
    points = sorted(p for p in {0.0, 0.5, z0, alpha} if lo < p < hi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        a_minus_1, _ = integrate.quad(integrand, lo, hi, points=points, epsabs=0, epsrel=1e-13, limit=500)
    return math.log1p(a_minus_1) / (alpha - 1)


# --------------------------------------------------------------------------------------
# Per-order RDP against oracles
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("q", RATES)
def test_rdp_matches_opacus_per_order(sigma, q):
    ours = _ours(sigma, q, DEFAULT_ORDERS)
    theirs = _opacus_rdp(sigma, q, DEFAULT_ORDERS)
    is_int = ORDERS == np.round(ORDERS)
    np.testing.assert_allclose(ours[is_int], theirs[is_int], rtol=1e-9, atol=0)
    # Opacus stops its fractional series once terms fall below e^-30 in absolute terms,
    # which near alpha = 1 leaves errors up to ~5e-6 relative (see the quadrature test).
    np.testing.assert_allclose(ours[~is_int], theirs[~is_int], rtol=1e-5, atol=0)


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("q", RATES)
def test_rdp_matches_dp_accounting_per_order(sigma, q):
    acct = dp_accounting.rdp.RdpAccountant(list(DEFAULT_ORDERS))
    logging.disable(logging.WARNING)
    try:
        acct.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)))
    finally:
        logging.disable(logging.NOTSET)
    theirs = np.asarray(acct._rdp)
    ours = _ours(sigma, q, DEFAULT_ORDERS)
    is_int = ORDERS == np.round(ORDERS)
    np.testing.assert_allclose(ours[is_int], theirs[is_int], rtol=1e-9, atol=0)
    # dp_accounting 0.6 adds the *magnitudes* of the alternating fractional-order terms
    # (an upper bound on the series, inf when it gives up), so ours can only be lower.
    assert np.all(ours[~is_int] <= theirs[~is_int] * (1 + 1e-9))


@pytest.mark.parametrize(
    ("sigma", "q", "alpha"),
    [(1.0, 0.01, 1.01), (1.0, 0.01, 2.5), (0.5, 0.1, 1.7), (0.8, 0.1, 3.3), (2.0, 0.1, 1.9),
     (2.0, 0.1, 12.5), (1.0, 0.62, 1.05), (5.0, 1e-3, 4.5), (0.3, 0.5, 7.5), (30.0, 0.5, 1.3)],
)
def test_fractional_order_matches_quadrature(sigma, q, alpha):
    ours = _ours(sigma, q, (alpha,))[0]
    assert ours == pytest.approx(_rdp_by_quadrature(sigma, q, alpha), rel=1e-8)


@pytest.mark.parametrize("alpha", [2.0, 3.0, 8.0, 32.0])
def test_integer_order_matches_quadrature(alpha):
    ours = _ours(1.5, 0.05, (alpha,))[0]
    assert ours == pytest.approx(_rdp_by_quadrature(1.5, 0.05, alpha), rel=1e-8)


def test_edge_rates_and_extreme_parameters():
    orders = np.array([1.5, 2.0, 64.0, 1024.0])
    np.testing.assert_array_equal(
        rdp_poisson_subsampled_gaussian(noise_multiplier=0.7, sampling_rate=0.0, orders=orders), 0.0
    )
    np.testing.assert_allclose(
        rdp_poisson_subsampled_gaussian(noise_multiplier=0.7, sampling_rate=1.0, orders=orders),
        orders / (2 * 0.7**2),
    )
    for sigma in [0.3, 1.0, 50.0]:
        for q in [1e-6, 0.3, 0.999]:
            rdp = rdp_poisson_subsampled_gaussian(noise_multiplier=sigma, sampling_rate=q, orders=ORDERS)
            assert np.all(np.isfinite(rdp)) and np.all(rdp >= 0)
            # Subsampling never costs more than the unsampled Gaussian.
            assert np.all(rdp <= ORDERS / (2 * sigma**2) * (1 + 1e-9))


def test_laplace_matches_dp_accounting_and_pure_dp_cap():
    acct = dp_accounting.rdp.RdpAccountant(list(DEFAULT_ORDERS))
    acct.compose(dp_accounting.LaplaceDpEvent(0.7))
    ours = rdp_laplace(noise_multiplier=0.7, orders=ORDERS)
    np.testing.assert_allclose(ours, acct._rdp, rtol=1e-9)
    assert np.all(np.diff(ours) >= 0) and ours[-1] <= 1 / 0.7
    assert ours[-1] == pytest.approx(1 / 0.7, rel=1e-2)


# --------------------------------------------------------------------------------------
# Epsilon against Opacus and the published reference values
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("q", RATES)
def test_epsilon_never_looser_than_opacus(sigma, q):
    for steps in STEPS:
        # Same orders: the same curve and the same conversion, so the same epsilon.
        for orders in (ORDERS, OPACUS_ORDERS):
            key = tuple(float(a) for a in orders)
            acct = RDPAccountant(orders=key).compose(dpsgd_event(sigma, steps, sampling_rate=q))
            ours = acct.get_epsilon(1e-5)
            theirs = _opacus_epsilon(steps * _opacus_rdp(sigma, q, key), orders, 1e-5)
            # Opacus truncates its fractional series, which can land slightly *below* the
            # true RDP (-3.6e-11 relative at sigma=2, q=0.1, alpha=1.9 against quadrature);
            # ours is an upper bound, so allow that much beyond the absolute 1e-9.
            assert ours <= theirs + 1e-9 + 1e-10 * theirs
            assert ours == pytest.approx(theirs, rel=1e-5)
        # Default against default: our grid is a superset of Opacus', so never looser.
        ours_default = RDPAccountant().compose(dpsgd_event(sigma, steps, sampling_rate=q)).get_epsilon(1e-5)
        theirs_default = _opacus_epsilon(
            steps * _opacus_rdp(sigma, q, tuple(OPACUS_ORDERS)), OPACUS_ORDERS, 1e-5
        )
        assert ours_default <= theirs_default + 1e-9 + 1e-10 * theirs_default


def test_default_orders_cover_opacus_defaults():
    assert set(OPACUS_ORDERS.tolist()) <= set(DEFAULT_ORDERS)
    assert min(DEFAULT_ORDERS) < 1.1 and max(DEFAULT_ORDERS) >= 1024
    fractional = [a for a in DEFAULT_ORDERS if a != round(a)]
    assert len(fractional) > 50


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "pld_epsilon"),
    # REFERENCES.md, delta = 1e-5: dp_accounting's PLD, an upper bound within ~1e-4 of the true epsilon.
    [(1.0, 0.01, 1000, 1.82824), (1.0, 0.01, 10_000, 6.18774), (0.8, 0.01, 10_000, 10.0537),
     (0.5, 0.001, 10_000, 5.22683), (1.0, 0.1, 1, 1.684544), (0.5, 1.0, 100, 284.3918)],
)
def test_rdp_bounds_the_reference_epsilon(sigma, q, steps, pld_epsilon):
    eps = RDPAccountant().compose(dpsgd_event(sigma, steps, sampling_rate=q)).get_epsilon(1e-5)
    # RDP is an upper bound, looser than PLD by at most the ~1.7x REFERENCES.md reports.
    assert pld_epsilon - 1e-3 <= eps <= 1.7 * pld_epsilon


@settings(max_examples=30, deadline=None)
@given(
    sigma=st.floats(0.3, 20.0),
    q=st.floats(1e-4, 1.0),
    steps=st.integers(1, 100_000),
    delta=st.floats(1e-12, 0.1),
)
def test_improved_conversion_beats_the_loose_one(sigma, q, steps, delta):
    rdp = steps * rdp_poisson_subsampled_gaussian(noise_multiplier=sigma, sampling_rate=q, orders=ORDERS)
    eps, order = epsilon_from_rdp(orders=ORDERS, rdp=rdp, delta=delta)
    # arXiv:1702.07476 (v3), Proposition 3: eps = rdp + log(1/delta)/(alpha - 1).
    loose = np.min(rdp + np.log(1 / delta) / (ORDERS - 1))
    assert eps <= loose
    # ... and the returned (epsilon, order) pair converts back to delta at that order.
    if eps > 0:
        d, _ = delta_from_rdp(orders=ORDERS, rdp=rdp, epsilon=eps)
        assert d <= delta * (1 + 1e-9)


# --------------------------------------------------------------------------------------
# Invariants
# --------------------------------------------------------------------------------------
def _eps(sigma: float, q: float, steps: int, delta: float = 1e-5) -> float:
    return RDPAccountant().compose(dpsgd_event(sigma, steps, sampling_rate=q)).get_epsilon(delta)


@settings(max_examples=25, deadline=None)
@given(sigma=st.floats(0.4, 10.0), q=st.floats(1e-3, 1.0), t1=st.integers(1, 5000), t2=st.integers(1, 5000))
def test_epsilon_grows_with_steps(sigma, q, t1, t2):
    lo, hi = sorted((t1, t2))
    assert _eps(sigma, q, lo) <= _eps(sigma, q, hi) * (1 + 1e-12)


@settings(max_examples=25, deadline=None)
@given(
    sigma=st.floats(0.4, 10.0), q1=st.floats(1e-3, 1.0), q2=st.floats(1e-3, 1.0), steps=st.integers(1, 5000)
)
def test_epsilon_grows_with_sampling_rate(sigma, q1, q2, steps):
    lo, hi = sorted((q1, q2))
    assert _eps(sigma, lo, steps) <= _eps(sigma, hi, steps) * (1 + 1e-9)


@settings(max_examples=25, deadline=None)
@given(s1=st.floats(0.4, 10.0), s2=st.floats(0.4, 10.0), q=st.floats(1e-3, 1.0), steps=st.integers(1, 5000))
def test_epsilon_shrinks_with_noise(s1, s2, q, steps):
    lo, hi = sorted((s1, s2))
    assert _eps(hi, q, steps) <= _eps(lo, q, steps) * (1 + 1e-9)


@settings(max_examples=25, deadline=None)
@given(d1=st.floats(1e-12, 0.5), d2=st.floats(1e-12, 0.5))
def test_epsilon_shrinks_with_delta(d1, d2):
    acct = RDPAccountant().compose(dpsgd_event(1.1, 500, sampling_rate=0.02))
    lo, hi = sorted((d1, d2))
    assert acct.get_epsilon(hi) <= acct.get_epsilon(lo)
    # ... and delta shrinks with epsilon.
    assert acct.get_delta(acct.get_epsilon(hi)) >= acct.get_delta(acct.get_epsilon(lo))


@settings(max_examples=40, deadline=None)
# Below q ~ 1e-6 the RDP (~q^2) nears the double-precision floor of log A (~1e-16 / (alpha-1)).
@given(sigma=st.floats(0.3, 30.0), q=st.one_of(st.just(0.0), st.floats(1e-6, 1.0)))
def test_rdp_is_monotone_and_log_moment_convex_in_order(sigma, q):
    rdp = rdp_poisson_subsampled_gaussian(noise_multiplier=sigma, sampling_rate=q, orders=ORDERS)
    # D_alpha is non-decreasing in alpha (van Erven & Harremoes 2014, Theorem 3) ...
    assert np.all(np.diff(rdp) >= -1e-9 * rdp[1:])
    # ... and (alpha - 1) D_alpha = log A_alpha is convex: slopes between grid points never decrease.
    k = (ORDERS - 1) * rdp
    slopes = np.diff(k) / np.diff(ORDERS)
    assert np.all(np.diff(slopes) >= -1e-7 * np.abs(slopes[1:]) - 1e-14)


@settings(max_examples=20, deadline=None)
@given(sigma=st.floats(0.3, 10.0), q=st.floats(0.0, 1.0), half=st.integers(0, 50_000))
def test_composing_halves_equals_the_whole_exactly(sigma, q, half):
    whole = RDPAccountant().compose(dpsgd_event(sigma, 2 * half, sampling_rate=q))
    halves = RDPAccountant()
    half_event = dpsgd_event(sigma, half, sampling_rate=q)
    halves.compose(half_event).compose(half_event)
    np.testing.assert_array_equal(whole.rdp, halves.rdp)
    assert whole.get_epsilon(1e-6) == halves.get_epsilon(1e-6)


def test_heterogeneous_composition_adds_per_order():
    a = dpsgd_event(0.8, 300, sampling_rate=0.01)
    b = dpsgd_event(2.0, 700, sampling_rate=0.05)
    c = SelfComposedEvent(LaplaceEvent(3.0), 4)
    both = RDPAccountant().compose(ComposedEvent((a, b, c)))
    expected = (
        300 * _ours(0.8, 0.01, DEFAULT_ORDERS)
        + 700 * _ours(2.0, 0.05, DEFAULT_ORDERS)
        + 4 * rdp_laplace(noise_multiplier=3.0, orders=ORDERS)
    )
    np.testing.assert_allclose(both.rdp, expected, rtol=1e-13)
    parts = [RDPAccountant().compose(e).get_epsilon(1e-5) for e in (a, b, c)]
    assert max(parts) < both.get_epsilon(1e-5) < sum(parts)


# --------------------------------------------------------------------------------------
# Relations and event algebra
# --------------------------------------------------------------------------------------
def test_replace_one_doubles_the_sensitivity():
    g = RDPAccountant(neighboring_relation="replace_one").compose(GaussianEvent(1.3))
    np.testing.assert_allclose(g.rdp, ORDERS * 4 / (2 * 1.3**2))
    lap = RDPAccountant(neighboring_relation="replace_one").compose(LaplaceEvent(3.0))
    np.testing.assert_allclose(lap.rdp, rdp_laplace(noise_multiplier=1.5, orders=ORDERS))
    # Poisson sampling at rate 1 is the inner event; at any other rate replace-one is unsupported.
    full = RDPAccountant(neighboring_relation="replace_one")
    full.compose(PoissonSampledEvent(1.0, GaussianEvent(1.3)))
    np.testing.assert_array_equal(full.rdp, g.rdp)
    with pytest.raises(UnsupportedEventError, match="PoissonSampledEvent"):
        RDPAccountant(neighboring_relation="replace_one").compose(dpsgd_event(1.0, 10, sampling_rate=0.1))


def test_sampling_without_replacement_against_dp_accounting():
    n, m, sigma = 1000, 20, 1.2
    orders = [1.5, 2.0, 3.0, 4.5, 8.0, 16.0, 32.0, 64.0, 100.5, 300.0, 512.0, 1024.0]
    ours = RDPAccountant(orders=orders, neighboring_relation="replace_one").compose(
        SampledWithoutReplacementEvent(n, m, GaussianEvent(sigma))
    ).rdp
    # dp_accounting's noise_multiplier is relative to the replace-one sensitivity (2 here).
    theirs = dp_accounting.rdp.RdpAccountant(orders, dp_accounting.NeighboringRelation.REPLACE_ONE)
    theirs.compose(
        dp_accounting.SampledWithoutReplacementDpEvent(n, m, dp_accounting.GaussianDpEvent(sigma / 2))
    )
    ref = np.asarray(theirs._rdp)
    # Ours is arXiv:1808.00087 Theorem 9; theirs adds the Gaussian-specific Theorem 27
    # below order 256 and is Theorem 9 above it.
    assert np.all(ours >= ref * (1 - 1e-9))
    big = np.array(orders) > 256
    np.testing.assert_allclose(ours[big], ref[big], rtol=1e-9)
    assert np.all(ours <= np.array(orders) * 4 / (2 * sigma**2))  # never worse than no subsampling here


def test_sampling_without_replacement_laplace_is_monotone_in_rate():
    rates = [0.001, 0.01, 0.1, 0.5]
    curves = [
        rdp_sampled_without_replacement(
            sampling_rate=g,
            base_rdp=lambda a: rdp_laplace(noise_multiplier=2.0, orders=a, sensitivity=2.0),
            base_pure_epsilon=1.0,
            orders=ORDERS,
        )
        for g in rates
    ]
    for lo, hi in zip(curves, curves[1:]):
        assert np.all(lo <= hi)
    # At a tiny rate the bound is O(gamma^2) at order 2 and far below the unsampled Laplace.
    base = rdp_laplace(noise_multiplier=2.0, orders=ORDERS, sensitivity=2.0)
    assert curves[0][ORDERS == 2.0][0] <= 10 * 0.001**2
    assert np.all(curves[0] <= 0.01 * base)


def test_sampling_without_replacement_edges_and_relation():
    rel = "replace_one"
    everything = RDPAccountant(neighboring_relation=rel)
    everything.compose(SampledWithoutReplacementEvent(50, 50, GaussianEvent(1.0)))
    np.testing.assert_allclose(everything.rdp, ORDERS * 2.0)
    nothing = RDPAccountant(neighboring_relation=rel)
    nothing.compose(SampledWithoutReplacementEvent(50, 0, GaussianEvent(1.0)))
    assert nothing.get_epsilon(1e-5) == 0.0
    with pytest.raises(UnsupportedEventError):
        RDPAccountant().compose(SampledWithoutReplacementEvent(50, 5, GaussianEvent(1.0)))


def test_nested_and_degenerate_sampling():
    nested = RDPAccountant().compose(PoissonSampledEvent(0.5, PoissonSampledEvent(0.02, GaussianEvent(1.0))))
    flat = RDPAccountant().compose(PoissonSampledEvent(0.01, GaussianEvent(1.0)))
    np.testing.assert_allclose(nested.rdp, flat.rdp, rtol=1e-12)
    wrapped = RDPAccountant().compose(PoissonSampledEvent(0.01, SelfComposedEvent(GaussianEvent(1.0), 1)))
    np.testing.assert_array_equal(wrapped.rdp, flat.rdp)
    assert RDPAccountant().compose(PoissonSampledEvent(0.3, NoOpEvent())).get_epsilon(1e-5) == 0.0
    acct = RDPAccountant()
    # One sample, then two runs on that same sample: not a subsampled Gaussian, so unsupported.
    assert not acct.supports(PoissonSampledEvent(0.01, SelfComposedEvent(GaussianEvent(1.0), 2)))
    assert not acct.supports(PoissonSampledEvent(0.01, LaplaceEvent(1.0)))


# --------------------------------------------------------------------------------------
# Construction and validation
# --------------------------------------------------------------------------------------
def test_custom_orders_and_registry():
    acct = make_accountant("rdp", orders=[32, 2, 4.5, 2])
    np.testing.assert_array_equal(acct.orders, [2.0, 4.5, 32.0])
    acct.compose(dpsgd_event(1.0, 1000, sampling_rate=0.01))
    eps, order = acct.get_epsilon_and_order(1e-5)
    assert order == 4.5 and eps == pytest.approx(3.0232835, rel=1e-6)  # the module doctest's value
    assert RDPAccountant.is_upper_bound and RDPAccountant.name == "rdp"


@pytest.mark.parametrize("orders", [[], [1.0], [0.5, 2.0], [2.0, math.nan], [math.inf], ["a"]])
def test_bad_orders(orders):
    with pytest.raises(ValueError, match="order"):
        RDPAccountant(orders=orders)


def test_bad_math_arguments_are_named():
    with pytest.raises(ValueError, match="sampling_rate"):
        rdp_poisson_subsampled_gaussian(noise_multiplier=1.0, sampling_rate=1.5, orders=ORDERS)
    with pytest.raises(ValueError, match="noise_multiplier"):
        rdp_gaussian(noise_multiplier=0.0, orders=ORDERS)
    with pytest.raises(ValueError, match="delta"):
        epsilon_from_rdp(orders=ORDERS, rdp=np.zeros_like(ORDERS), delta=0.0)
    with pytest.raises(ValueError, match="rdp"):
        epsilon_from_rdp(orders=ORDERS, rdp=np.zeros(3), delta=1e-5)
    with pytest.raises(ValueError, match="epsilon"):
        delta_from_rdp(orders=ORDERS, rdp=np.zeros_like(ORDERS), epsilon=-1.0)
