"""(epsilon, delta) region and Clopper-Pearson bounds: oracles, properties, bad input."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

import privaudit.audit as audit
from privaudit.accounting._gdp_math import gdp_epsilon
from privaudit.audit import (
    Bonferroni,
    bayesian_epsilon_interval,
    Explicit,
    Split,
    clopper_pearson_epsilon,
    epsilon_from_rates,
    epsilon_lower_bound,
)

# ---------------------------------------------------------------- oracles


def _naive_region(fpr: float, fnr: float, delta: float) -> float:
    """Kairouz et al. 2015, both inequalities, written out with math.log."""
    best = 0.0
    for num, den in ((1 - delta - fnr, fpr), (1 - delta - fpr, fnr)):
        if num > 0:
            best = max(best, math.inf if den == 0 else math.log(num) - math.log(den))
    return best


def _naive_cp(tp: int, fp: int, p: int, n: int, delta: float, alpha: float) -> float:
    """Jagielski et al. 2020 as printed: BetaInv(1 - alpha/2; k + 1, n - k), 1 at k == n."""
    fn = p - tp
    fpr_ub = 1.0 if fp == n else stats.beta.ppf(1 - alpha / 2, fp + 1, n - fp)
    fnr_ub = 1.0 if fn == p else stats.beta.ppf(1 - alpha / 2, fn + 1, p - fn)
    return _naive_region(fpr_ub, fnr_ub, delta)


def _naive_bonferroni(ins, outs, delta, alpha):
    """Loop over every distinct score as a threshold, alpha split evenly."""
    thresholds = sorted(set(ins) | set(outs))
    best = 0.0
    for t in thresholds:
        tp = sum(1 for x in ins if x >= t)
        fp = sum(1 for x in outs if x >= t)
        best = max(best, _naive_cp(tp, fp, len(ins), len(outs), delta, alpha / len(thresholds)))
    return best, len(thresholds)


# ---------------------------------------------------------------- region


def test_region_known_values():
    # Prepare / Execute / Assert in one line each: log(0.5/0.01), its mirror, and the diagonal.
    assert epsilon_from_rates(0.01, 0.5, delta=0.0) == pytest.approx(math.log(50))
    assert epsilon_from_rates(0.5, 0.01, delta=0.0) == pytest.approx(math.log(50))
    assert epsilon_from_rates(0.3, 0.7, delta=0.0) == pytest.approx(0.0, abs=1e-12)
    assert epsilon_from_rates(0.01, 0.5, delta=0.1) == pytest.approx(math.log(40))


def test_region_zero_rates():
    assert epsilon_from_rates(0.0, 0.5, delta=1e-5) == math.inf
    assert epsilon_from_rates(0.5, 0.0, delta=1e-5) == math.inf
    # The numerator facing the zero rate is <= 0: no constraint from that side.
    assert epsilon_from_rates(0.0, 1.0, delta=0.0) == 0.0
    assert epsilon_from_rates(0.0, 0.99, delta=0.02) == 0.0


@settings(max_examples=200, deadline=None)
@given(fpr=st.floats(0, 1), fnr=st.floats(0, 1), delta=st.floats(0, 0.999))
def test_region_matches_naive(fpr, fnr, delta):
    got = epsilon_from_rates(fpr, fnr, delta=delta)
    want = _naive_region(fpr, fnr, delta)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12) or got == want


@settings(max_examples=100, deadline=None)
@given(eps=st.floats(0, 5), delta=st.floats(0, 0.5), fpr=st.floats(1e-6, 1))
def test_region_point_on_boundary_gives_eps(eps, delta, fpr):
    # The point FNR = (1 - delta - FPR) e^-eps lies on the boundary of the (eps, delta) region.
    fnr = (1 - delta - fpr) * math.exp(-eps)
    if fnr <= 0 or fpr > fnr * math.exp(eps):  # other side binding; skip
        return
    assert epsilon_from_rates(fpr, fnr, delta=delta) >= eps - 1e-9


# ---------------------------------------------------------------- Clopper-Pearson, one threshold


@settings(max_examples=150, deadline=None)
@given(
    p=st.integers(1, 300), n=st.integers(1, 300), data=st.data(),
    delta=st.sampled_from([0.0, 1e-5, 0.01, 0.2]), alpha=st.sampled_from([0.01, 0.05, 0.3]),
)
def test_cp_matches_naive(p, n, data, delta, alpha):
    tp = data.draw(st.integers(0, p))
    fp = data.draw(st.integers(0, n))
    got = clopper_pearson_epsilon(tp=tp, fp=fp, positives=p, negatives=n, delta=delta, alpha=alpha)
    assert got == pytest.approx(_naive_cp(tp, fp, p, n, delta, alpha), rel=1e-9, abs=1e-12)


def test_cp_mirrored_direction_is_symmetric():
    # Guessing OUT above the threshold: swapping FPR (5/1000 -> 500/1000) and FNR
    # (500/1000 -> 5/1000) gives the same bound through the mirrored inequality.
    a = clopper_pearson_epsilon(tp=995, fp=500, positives=1000, negatives=1000, delta=1e-5, alpha=0.05)
    b = clopper_pearson_epsilon(tp=500, fp=5, positives=1000, negatives=1000, delta=1e-5, alpha=0.05)
    assert a == pytest.approx(b) and a > 3


def test_cp_tighter_with_more_data_and_larger_alpha():
    small = clopper_pearson_epsilon(tp=50, fp=1, positives=100, negatives=100, delta=0, alpha=0.05)
    big = clopper_pearson_epsilon(tp=500, fp=10, positives=1000, negatives=1000, delta=0, alpha=0.05)
    loose = clopper_pearson_epsilon(tp=50, fp=1, positives=100, negatives=100, delta=0, alpha=0.3)
    assert 0 < small < big and small < loose


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(tp=11, fp=0, positives=10, negatives=10), "tp"),
        (dict(tp=0, fp=11, positives=10, negatives=10), "fp"),
        (dict(tp=-1, fp=0, positives=10, negatives=10), "tp"),
        (dict(tp=1.5, fp=0, positives=10, negatives=10), "tp"),
        (dict(tp=0, fp=0, positives=0, negatives=10), "positives"),
        (dict(tp=0, fp=0, positives=10, negatives=0), "negatives"),
    ],
)
def test_cp_rejects_bad_counts(kwargs, name):
    with pytest.raises(ValueError, match=name):
        clopper_pearson_epsilon(**kwargs, delta=1e-5, alpha=0.05)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, float("nan")])
def test_cp_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson_epsilon(tp=1, fp=1, positives=10, negatives=10, delta=1e-5, alpha=alpha)


@pytest.mark.parametrize("delta", [1.0, -1e-9, float("nan")])
def test_bad_delta_everywhere(delta):
    with pytest.raises(ValueError, match="delta"):
        clopper_pearson_epsilon(tp=1, fp=1, positives=10, negatives=10, delta=delta, alpha=0.05)
    with pytest.raises(ValueError, match="delta"):
        epsilon_from_rates(0.1, 0.1, delta=delta)
    with pytest.raises(ValueError, match="delta"):
        epsilon_lower_bound([1.0, 2.0], [0.0, 1.0], delta=delta)


def test_region_rejects_rates_out_of_range():
    with pytest.raises(ValueError, match="fpr"):
        epsilon_from_rates(1.5, 0.1, delta=0)
    with pytest.raises(ValueError, match="fnr"):
        epsilon_from_rates(0.1, float("nan"), delta=0)


# ---------------------------------------------------------------- scores -> bound


@settings(max_examples=60, deadline=None)
@given(
    ins=st.lists(st.integers(-5, 8), min_size=1, max_size=40),
    outs=st.lists(st.integers(-8, 5), min_size=1, max_size=40),
    delta=st.sampled_from([0.0, 1e-3, 0.1]),
)
def test_bonferroni_matches_naive_loop(ins, outs, delta):
    # Integer scores, so ties between and within the groups are common.
    got = epsilon_lower_bound(ins, outs, delta=delta, alpha=0.1)
    want, k = _naive_bonferroni(ins, outs, delta, 0.1)
    assert got.thresholds_tried == k
    assert got.epsilon == pytest.approx(want, rel=1e-9, abs=1e-12)
    # The reported threshold and counts reproduce the bound.
    again = clopper_pearson_epsilon(tp=got.tp, fp=got.fp, positives=len(ins), negatives=len(outs),
                                    delta=delta, alpha=0.1 / k)
    assert again == pytest.approx(got.epsilon, rel=1e-9, abs=1e-12)
    assert got.tp == sum(x >= got.threshold for x in ins)


def test_explicit_is_one_threshold_at_full_alpha():
    ins, outs = np.arange(100) + 30.0, np.arange(100.0)
    got = epsilon_lower_bound(ins, outs, delta=1e-5, threshold=Explicit(90.0))
    assert (got.tp, got.fp, got.thresholds_tried, got.method) == (40, 10, 1, "clopper-pearson/explicit")
    assert got.epsilon == clopper_pearson_epsilon(tp=40, fp=10, positives=100, negatives=100,
                                                  delta=1e-5, alpha=0.05)
    # +inf guesses nothing, -inf everything: neither can prove anything.
    assert epsilon_lower_bound(ins, outs, delta=0, threshold=Explicit(math.inf)).epsilon == 0
    assert epsilon_lower_bound(ins, outs, delta=0, threshold=Explicit(-math.inf)).epsilon == 0


def test_split_uses_only_the_held_out_part():
    rng = np.random.default_rng(1)
    ins, outs = rng.normal(2, 1, 401), rng.normal(0, 1, 300)
    got = epsilon_lower_bound(ins, outs, delta=1e-5, threshold=Split(fraction=0.25, seed=7))
    assert (got.positives, got.negatives) == (401 - 100, 300 - 75)
    assert got.thresholds_tried == 1 and got.method == "clopper-pearson/split"
    assert got == epsilon_lower_bound(ins, outs, delta=1e-5, threshold=Split(fraction=0.25, seed=7))
    assert got.epsilon > 0


def test_result_types_are_frozen_and_serialisable():
    got = epsilon_lower_bound([3.0, 4.0], [0.0, 1.0], delta=0.0)
    with pytest.raises(AttributeError):
        got.epsilon = 1.0  # type: ignore[misc]
    assert set(got.to_dict()) >= {"epsilon", "threshold", "tp", "fp", "thresholds_tried"}


@pytest.mark.parametrize(
    "ins, outs, name",
    [
        ([], [1.0], "in_scores"),
        ([1.0], [], "out_scores"),
        ([1.0, float("nan")], [1.0], "in_scores"),
        ([[1.0, 2.0]], [1.0], "in_scores"),
        ([1.0], ["a"], "out_scores"),
    ],
)
def test_scores_rejected(ins, outs, name):
    with pytest.raises(ValueError, match=name):
        epsilon_lower_bound(ins, outs, delta=1e-5)


def test_strategies_validate():
    with pytest.raises(ValueError, match="fraction"):
        Split(fraction=1.0)
    with pytest.raises(ValueError, match="seed"):
        Split(seed=-1)
    with pytest.raises(ValueError, match="threshold"):
        Explicit(float("nan"))
    with pytest.raises(ValueError, match="threshold"):
        epsilon_lower_bound([1.0], [0.0], delta=0, threshold="bonferroni")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fraction"):
        epsilon_lower_bound([1.0, 2.0], [0.0, 1.0, 2.0], delta=0, threshold=Split(fraction=0.2))


# ---------------------------------------------------------------- statistical properties


@pytest.mark.parametrize("strategy", [Bonferroni(), Split(seed=3)], ids=["bonferroni", "split"])
def test_no_signal_gives_zero(strategy):
    # Prepare: 200 audits where IN and OUT scores come from one distribution.
    rng = np.random.default_rng(2024)
    zeros = 0
    for _ in range(200):
        ins, outs = rng.normal(size=60), rng.normal(size=60)
        # Execute
        zeros += epsilon_lower_bound(ins, outs, delta=1e-5, threshold=strategy).epsilon == 0
    # Assert: a level-0.05 bound is positive in at most ~5% of null audits.
    assert zeros >= 190


@pytest.mark.parametrize("strategy", [Bonferroni(), Split(seed=0)], ids=["bonferroni", "split"])
def test_never_exceeds_true_epsilon_of_gaussian_mechanism(strategy):
    # IN ~ N(mu, 1), OUT ~ N(0, 1) is exactly the Gaussian mechanism, mu-GDP.
    rng = np.random.default_rng(7)
    checked = 0
    for mu in (0.5, 1.0, 2.0, 4.0):
        for delta in (1e-5, 0.05, 0.3):
            true_eps = gdp_epsilon(mu, delta)
            for _ in range(15):
                ins, outs = rng.normal(mu, 1, 400), rng.normal(0, 1, 400)
                got = epsilon_lower_bound(ins, outs, delta=delta, alpha=0.05, threshold=strategy)
                assert got.epsilon <= true_eps, (mu, delta, got)
                checked += got.epsilon > 0
    assert checked > 100  # the bound is not vacuous on most of these audits


def test_monotone_in_shift():
    n = 400
    out = stats.norm.ppf((np.arange(n) + 0.5) / n)
    bonf = [epsilon_lower_bound(out + s, out, delta=1e-5).epsilon for s in np.linspace(0.1, 5, 25)]
    expl = [epsilon_lower_bound(out + s, out, delta=1e-5, threshold=Explicit(1.5)).epsilon
            for s in np.linspace(0.1, 5, 25)]
    assert np.all(np.diff(bonf) >= 0) and bonf[-1] > 3
    assert np.all(np.diff(expl) >= 0) and expl[-1] > 3


# ---------------------------------------------------------------- Bayesian (Jeffreys) interval


def _posterior_cdf(x, tp, fp, p, n, delta):
    """P[eps <= x] by quadrature: eps <= x iff FNR >= max(1-delta-e^x FPR, (1-delta-FPR) e^-x)."""
    fpr_post = stats.beta(fp + 0.5, n - fp + 0.5)
    fnr_post = stats.beta(p - tp + 0.5, tp + 0.5)

    def integrand(f):
        need = max(1 - delta - math.exp(x) * f, (1 - delta - f) * math.exp(-x))
        return fpr_post.pdf(f) * fnr_post.sf(need)

    lo, hi = fpr_post.ppf([1e-12, 1 - 1e-12])
    return integrate.quad(integrand, lo, hi, limit=200, epsabs=1e-10)[0]


@pytest.mark.parametrize("tp, fp, p, n", [(500, 5, 1000, 1000), (80, 20, 100, 150)])
def test_bayes_quantiles_match_quadrature(tp, fp, p, n):
    got = bayesian_epsilon_interval(tp=tp, fp=fp, positives=p, negatives=n, delta=1e-5,
                                    alpha=0.1, samples=200_000, seed=1)
    assert 0 < got.lower < got.median < got.upper and got.is_bound is False
    # Monte Carlo error of a quantile's level with 200k draws is ~7e-4 at 0.05.
    assert _posterior_cdf(got.lower, tp, fp, p, n, 1e-5) == pytest.approx(0.05, abs=3e-3)
    assert _posterior_cdf(got.median, tp, fp, p, n, 1e-5) == pytest.approx(0.5, abs=5e-3)
    assert _posterior_cdf(got.upper, tp, fp, p, n, 1e-5) == pytest.approx(0.95, abs=3e-3)


def test_bayes_no_signal_and_reproducible():
    a = bayesian_epsilon_interval(tp=50, fp=50, positives=100, negatives=100, delta=1e-5)
    assert a.lower == 0.0 and a.upper < 0.5
    assert a == bayesian_epsilon_interval(tp=50, fp=50, positives=100, negatives=100, delta=1e-5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(tp=11), "tp"), (dict(fp=-1), "fp"), (dict(alpha=1.0), "alpha"),
        (dict(delta=1.0), "delta"), (dict(samples=10), "samples"), (dict(seed=-3), "seed"),
    ],
)
def test_bayes_rejects_bad_input(kwargs, name):
    args = {**dict(tp=5, fp=1, positives=10, negatives=10, delta=1e-5), **kwargs}
    with pytest.raises(ValueError, match=name):
        bayesian_epsilon_interval(**args)


# ---------------------------------------------------------------- package door


def test_audit_all_is_sorted_and_complete():
    assert audit.__all__ == sorted(audit.__all__)
    public = {n for n in vars(audit) if not n.startswith("_")
              and not isinstance(getattr(audit, n), type(sys))}
    assert public <= set(audit.__all__) | {"annotations"}


def test_audit_statistics_never_import_torch():
    code = "import sys, privaudit.audit; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
