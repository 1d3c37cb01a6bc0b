"""One-run audit (Steinke, Nasr, Jagielski 2023): oracles, published values, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from privaudit.audit import (
    Explicit,
    Split,
    one_run_epsilon,
    one_run_epsilon_from_scores,
    one_run_p_value,
)
from privaudit.audit._one_run import _pareto_vertices

# ---------------------------------------------------------------- oracles


def _naive_p_value(m, r, v, eps, delta):
    """The loop exactly as written in arXiv:2305.08846, Appendix D."""
    q = 1 / (1 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, q)
    worst, window = 0.0, 0.0
    for i in range(1, v + 1):
        window += stats.binom.pmf(v - i, r, q)
        worst = max(worst, window / i)
    return min(beta + worst * delta * 2 * m, 1.0)


def _naive_hull(w, v):
    """Point i survives unless some chord j < i < k passes on or above it."""
    keep = []
    n = len(w)
    for i in range(n):
        dominated = False
        for j in range(i):
            for k in range(i + 1, n):
                if w[k] == w[j]:
                    dominated |= v[k] >= v[i] or v[j] >= v[i]
                else:
                    a = (w[i] - w[j]) / (w[k] - w[j])
                    dominated |= v[i] <= (1 - a) * v[j] + a * v[k] + 1e-12
        if not dominated:
            keep.append(i)
    return keep


def _naive_path(scores, member):
    """(+inf, then each distinct score descending) -> (r, v) guessing IN for scores >= t."""
    thresholds = [math.inf] + sorted(set(scores), reverse=True)
    r = [sum(1 for s in scores if s >= t) for t in thresholds]
    v = [sum(1 for s, b in zip(scores, member) if s >= t and b) for t in thresholds]
    return thresholds, r, v


def _quantile_audit(shift, n=10_000):
    out = stats.norm.ppf((np.arange(n) + 0.5) / n)
    scores = np.concatenate([out + shift, out])
    member = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    return scores, member


def _randomized_response(rng, m, eps, delta):
    """Exactly (eps, delta)-DP per canary: reveal the bit w.p. delta, else eps-randomized response.

    Scores are a post-processing (+ Gaussian jitter), so they stay (eps, delta)-DP.
    """
    member = rng.random(m) < 0.5
    reveal = rng.random(m) < delta
    truthful = rng.random(m) < special.expit(eps)
    said = np.where(truthful, member, ~member)
    base = np.where(reveal, 3.0 * (2 * member - 1), 2.0 * said - 1)
    return base + rng.normal(0, 0.3, m), member


# ---------------------------------------------------------------- p-value


@settings(max_examples=120, deadline=None)
@given(
    r=st.integers(1, 300), data=st.data(), eps=st.floats(0, 8),
    delta=st.sampled_from([0.0, 1e-6, 1e-3, 0.05]),
)
def test_p_value_matches_naive_loop(r, data, eps, delta):
    v = data.draw(st.integers(0, r))
    m = data.draw(st.integers(r, 3 * r))
    got = one_run_p_value(m=m, r=r, v=v, epsilon=eps, delta=delta)
    assert got == pytest.approx(_naive_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


@settings(max_examples=80, deadline=None)
@given(r=st.integers(1, 400), data=st.data(), delta=st.sampled_from([0.0, 1e-6, 1e-3]))
def test_p_value_increases_with_epsilon(r, data, delta):
    # The bisection in one_run_epsilon relies on this.
    v = data.draw(st.integers(0, r))
    m = data.draw(st.integers(r, 5 * r))
    ps = [one_run_p_value(m=m, r=r, v=v, epsilon=e, delta=delta) for e in np.linspace(0, 10, 60)]
    assert np.all(np.diff(ps) >= -1e-12)


# ---------------------------------------------------------------- epsilon from counts


@pytest.mark.parametrize("r, ceiling", [(100, 3.49), (1_000, 5.81), (10_000, 8.11)])
def test_ceilings_with_every_guess_right(r, ceiling):
    assert round(one_run_epsilon(m=r, r=r, v=r, delta=0.0, alpha=0.05), 2) == ceiling


@pytest.mark.parametrize("r, v, delta", [(100, 90, 1e-5), (1000, 700, 1e-6), (50, 50, 0.0)])
def test_epsilon_is_the_root(r, v, delta):
    eps = one_run_epsilon(m=2000, r=r, v=v, delta=delta, alpha=0.05)
    assert eps > 0
    assert one_run_p_value(m=2000, r=r, v=v, epsilon=eps - 1e-6, delta=delta) <= 0.05
    assert one_run_p_value(m=2000, r=r, v=v, epsilon=eps + 1e-6, delta=delta) > 0.05


def test_epsilon_zero_when_not_rejected():
    assert one_run_epsilon(m=100, r=10, v=6, delta=0.0) == 0.0
    assert one_run_epsilon(m=100, r=0, v=0, delta=0.0) == 0.0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(m=10, r=11, v=0), "r"),
        (dict(m=10, r=5, v=6), "v"),
        (dict(m=0, r=0, v=0), "m"),
        (dict(m=10, r=-1, v=0), "r"),
        (dict(m=10.0, r=5, v=5), "m"),
    ],
)
def test_counts_rejected(kwargs, name):
    with pytest.raises(ValueError, match=name):
        one_run_epsilon(**kwargs, delta=1e-5)
    with pytest.raises(ValueError, match=name):
        one_run_p_value(**kwargs, epsilon=1.0, delta=1e-5)


def test_parameters_rejected():
    with pytest.raises(ValueError, match="alpha"):
        one_run_epsilon(m=10, r=5, v=5, delta=0, alpha=1.0)
    with pytest.raises(ValueError, match="delta"):
        one_run_epsilon(m=10, r=5, v=5, delta=1.0)
    with pytest.raises(ValueError, match="epsilon"):
        one_run_p_value(m=10, r=5, v=5, epsilon=-0.1, delta=0)
    with pytest.raises(ValueError, match="epsilon"):
        one_run_p_value(m=10, r=5, v=5, epsilon=float("nan"), delta=0)


# ---------------------------------------------------------------- from scores


@settings(max_examples=100, deadline=None)
@given(
    w_steps=st.lists(st.integers(0, 3), min_size=1, max_size=25),
    v_steps=st.lists(st.integers(0, 3), min_size=25, max_size=25),
)
def test_pareto_matches_naive_definition(w_steps, v_steps):
    # Monotone paths from (0, 0), with flat and vertical runs allowed (but no repeated point).
    steps = [(a, b) for a, b in zip(w_steps, v_steps) if a or b]
    w = np.concatenate([[0], np.cumsum([a for a, _ in steps])]).astype(float)
    v = np.concatenate([[0], np.cumsum([b for _, b in steps])]).astype(float)
    assert list(_pareto_vertices(w, v)) == _naive_hull(list(w), list(v))


@settings(max_examples=30, deadline=None)
@given(
    scores=st.lists(st.integers(-6, 6), min_size=2, max_size=40),
    bits=st.lists(st.booleans(), min_size=40, max_size=40),
    delta=st.sampled_from([0.0, 1e-4]),
)
def test_bonferroni_search_matches_brute_force(scores, bits, delta):
    member = bits[: len(scores)]
    got = one_run_epsilon_from_scores(scores, member, delta=delta, alpha=0.2)
    thresholds, r, v = _naive_path(scores, member)
    hull = _naive_hull([a - b for a, b in zip(r, v)], v)
    alpha = 0.2 / len(hull)
    want = max(one_run_epsilon(m=len(scores), r=r[k], v=v[k], delta=delta, alpha=alpha) for k in hull)
    assert got.thresholds_tried == len(hull)
    assert got.epsilon == pytest.approx(want, rel=1e-6, abs=1e-9)
    if got.epsilon > 0:
        k = thresholds.index(got.threshold)
        assert (got.guesses, got.correct) == (r[k], v[k])


@pytest.mark.parametrize("shift, published", [(1, 1.13346), (2, 2.311945), (4, 4.395568)])
def test_reproduces_published_values(shift, published):
    # REFERENCES.md: the values jax_privacy's tests pin (m = 20,000, alpha = 0.05, delta = 1e-6).
    scores, member = _quantile_audit(shift)
    got = one_run_epsilon_from_scores(scores, member, delta=1e-6, alpha=0.05)
    assert got.m == 20_000
    assert got.epsilon == pytest.approx(published, rel=1e-4)


def test_explicit_and_split():
    scores, member = _quantile_audit(2, n=500)
    exp = one_run_epsilon_from_scores(scores, member, delta=1e-6, threshold=Explicit(2.5))
    r, v = int(np.sum(scores >= 2.5)), int(np.sum((scores >= 2.5) & member))
    assert (exp.guesses, exp.correct, exp.thresholds_tried) == (r, v, 1)
    assert exp.epsilon == one_run_epsilon(m=1000, r=r, v=v, delta=1e-6)
    spl = one_run_epsilon_from_scores(scores, member, delta=1e-6, threshold=Split(fraction=0.3, seed=1))
    assert spl.m == 1000 - 300 and spl.method == "one-run/split" and spl.epsilon > 0
    assert spl == one_run_epsilon_from_scores(scores, member, delta=1e-6,
                                              threshold=Split(fraction=0.3, seed=1))


def test_unscored_canaries_count_in_m():
    scores, member = _quantile_audit(2, n=500)
    small = one_run_epsilon_from_scores(scores, member, delta=1e-5)
    large = one_run_epsilon_from_scores(scores, member, delta=1e-5, m=100_000)
    assert large.m == 100_000 and large.epsilon < small.epsilon


@pytest.mark.parametrize(
    "scores, member, kwargs, name",
    [
        ([], [], {}, "scores"),
        ([1.0, float("nan")], [1, 0], {}, "scores"),
        ([1.0, 2.0], [1], {}, "membership"),
        ([1.0, 2.0], [1, 2], {}, "membership"),
        ([1.0, 2.0], ["a", "b"], {}, "membership"),
        ([1.0, 2.0], [1, 0], {"m": 1}, "m"),
        ([1.0, 2.0], [1, 0], {"alpha": 0.0}, "alpha"),
        ([1.0, 2.0], [1, 0], {"delta": -1.0}, "delta"),
        ([1.0, 2.0], [1, 0], {"threshold": 0.5}, "threshold"),
    ],
)
def test_scores_rejected(scores, member, kwargs, name):
    kwargs = {"delta": 1e-5, **kwargs}
    with pytest.raises(ValueError, match=name):
        one_run_epsilon_from_scores(scores, member, **kwargs)


# ---------------------------------------------------------------- statistical properties


def test_no_signal_gives_zero():
    # Prepare: 200 one-run audits whose scores ignore membership.
    rng = np.random.default_rng(11)
    zeros = 0
    for _ in range(200):
        scores, member = rng.normal(size=100), rng.random(100) < 0.5
        # Execute
        zeros += one_run_epsilon_from_scores(scores, member, delta=1e-5).epsilon == 0
    # Assert
    assert zeros >= 190


@pytest.mark.parametrize("eps, delta", [(1.0, 1e-5), (2.0, 0.0), (0.5, 1e-4)])
def test_never_exceeds_claim_of_randomized_response(eps, delta):
    # Prepare: 100 audits of a mechanism that is exactly (eps, delta)-DP per canary.
    rng = np.random.default_rng(5)
    below, positive = 0, 0
    for _ in range(100):
        scores, member = _randomized_response(rng, 1000, eps, delta)
        # Execute
        got = one_run_epsilon_from_scores(scores, member, delta=delta, alpha=0.05).epsilon
        below += got <= eps
        positive += got > 0
    # Assert: valid at level 0.05, and not vacuous.
    assert below >= 95
    assert positive >= 50


def test_monotone_in_shift():
    shifts = np.linspace(0.5, 5, 10)
    fixed, searched = [], []
    for s in shifts:
        scores, member = _quantile_audit(s, n=400)
        fixed.append(one_run_epsilon_from_scores(scores, member, delta=1e-5,
                                                 threshold=Explicit(1.0)).epsilon)
        searched.append(one_run_epsilon_from_scores(scores, member, delta=1e-5).epsilon)
    assert np.all(np.diff(fixed) >= 0)
    # The number of hull points (the Bonferroni factor) changes with the shift, so the
    # searched bound can dip by a hair between close shifts; on this grid it rises.
    assert np.all(np.diff(searched) > 0)
