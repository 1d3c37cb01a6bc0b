"""ROC, AUC, TPR at FPR and the empirical epsilon bound, checked against loop oracles (ties included)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.stats import beta

from privaudit.attacks import attack_metrics, downsample_roc, empirical_epsilon, roc_auc, roc_curve, tpr_at_fpr

# --- loop oracles -------------------------------------------------------------------------


def _naive_points(scores, membership):
    """[(threshold, tp, fp)] for t = +inf and every distinct score, predicting member iff score >= t."""
    points = []
    for t in [math.inf] + sorted(set(scores), reverse=True):
        tp = sum(1 for s, m in zip(scores, membership) if m and s >= t)
        fp = sum(1 for s, m in zip(scores, membership) if not m and s >= t)
        points.append((t, tp, fp))
    return points


def _naive_auc(scores, membership):
    pos = [s for s, m in zip(scores, membership) if m]
    neg = [s for s, m in zip(scores, membership) if not m]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def _naive_tpr_at(scores, membership, target):
    p, n = sum(membership), len(membership) - sum(membership)
    return max(tp / p for _, tp, fp in _naive_points(scores, membership) if fp / n <= target)


def _cp_epsilon(*, tp, fp, positives, negatives, delta, alpha):
    """Clopper-Pearson bound of Jagielski et al. 2020 (REFERENCES.md), alpha/2 per interval, floored at 0."""
    fn = positives - tp
    fpr_ub = 1.0 if fp == negatives else beta.ppf(1 - alpha / 2, fp + 1, negatives - fp)
    fnr_ub = 1.0 if fn == positives else beta.ppf(1 - alpha / 2, fn + 1, positives - fn)
    num = 1 - fnr_ub - delta
    return max(0.0, math.log(num / fpr_ub)) if num > 0 else 0.0


@pytest.fixture
def fake_bounds(monkeypatch):
    """Stands in for privaudit.audit._bounds (written elsewhere) and records each call."""
    calls = []

    def clopper_pearson_epsilon(*, tp, fp, positives, negatives, delta, alpha):
        calls.append(dict(tp=tp, fp=fp, positives=positives, negatives=negatives, delta=delta, alpha=alpha))
        return _cp_epsilon(tp=tp, fp=fp, positives=positives, negatives=negatives, delta=delta, alpha=alpha)

    module = types.ModuleType("privaudit.audit._bounds")
    module.clopper_pearson_epsilon = clopper_pearson_epsilon
    monkeypatch.setitem(sys.modules, "privaudit.audit._bounds", module)
    return calls


tied_scores = st.lists(st.integers(0, 5), min_size=2, max_size=30)


def _membership(data, n):
    membership = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    assume(any(membership) and not all(membership))
    return membership


# --- the curve and its summaries ----------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(data=st.data(), scores=tied_scores)
def test_roc_matches_threshold_loop(data, scores):
    membership = _membership(data, len(scores))
    roc = roc_curve(scores=scores, membership=membership)
    points = _naive_points(scores, membership)
    assert roc.thresholds.tolist() == [t for t, _, _ in points]
    assert roc.true_positives.tolist() == [tp for _, tp, _ in points]
    assert roc.false_positives.tolist() == [fp for _, _, fp in points]
    p, n = sum(membership), len(membership) - sum(membership)
    np.testing.assert_allclose(roc.tpr, [tp / p for _, tp, _ in points])
    np.testing.assert_allclose(roc.fpr, [fp / n for _, _, fp in points])
    assert (roc.positives, roc.negatives) == (p, n)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), scores=tied_scores)
def test_auc_matches_pairwise_loop_and_flips_with_the_sign(data, scores):
    membership = _membership(data, len(scores))
    auc = roc_auc(scores=scores, membership=membership)
    assert auc == pytest.approx(_naive_auc(scores, membership), abs=1e-12)
    assert roc_auc(scores=[-s for s in scores], membership=membership) == pytest.approx(1 - auc, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), scores=tied_scores, target=st.sampled_from([0.0, 0.05, 0.1, 0.25, 1 / 3, 0.5, 1.0]))
def test_tpr_at_fpr_matches_loop(data, scores, target):
    membership = _membership(data, len(scores))
    assert tpr_at_fpr(scores=scores, membership=membership, fpr=target) == _naive_tpr_at(scores, membership, target)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), scores=tied_scores)
def test_advantage_and_balanced_accuracy_match_loop(data, scores):
    membership = _membership(data, len(scores))
    p, n = sum(membership), len(membership) - sum(membership)
    points = _naive_points(scores, membership)
    m = attack_metrics(scores=scores, membership=membership)
    assert m.advantage == pytest.approx(max(tp / p - fp / n for _, tp, fp in points), abs=1e-12)
    assert m.balanced_accuracy == pytest.approx(max((tp / p + 1 - fp / n) / 2 for _, tp, fp in points), abs=1e-12)
    assert m.auc == pytest.approx(_naive_auc(scores, membership), abs=1e-12)


def _trapezoid(fpr, tpr):
    return float(np.sum(np.diff(fpr) * (np.asarray(tpr[1:]) + np.asarray(tpr[:-1]))) / 2)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 4000), shift=st.floats(-1, 3),
       max_points=st.integers(2, 600), ties=st.booleans())
def test_downsampled_roc_is_a_monotone_subset_with_the_extremes_and_the_auc(seed, n, shift, max_points, ties):
    rng = np.random.default_rng(seed)
    membership = rng.random(n) < 0.5
    assume(membership.any() and not membership.all())
    scores = rng.normal(size=n) + shift * membership
    if ties:
        scores = np.round(scores, 1)
    full = roc_curve(scores=scores, membership=membership)
    small = downsample_roc(full, max_points=max_points)
    assert len(small.fpr) <= max(max_points, 2) and len(small.fpr) == min(len(full.fpr), len(small.fpr))
    if len(full.fpr) <= max_points:
        assert small is full
    # Every kept point is one of the curve's own (threshold, TP, FP) points, in the curve's order.
    index = {t: i for i, t in enumerate(full.thresholds.tolist())}
    kept = [index[t] for t in small.thresholds.tolist()]
    assert kept == sorted(set(kept)) and kept[0] == 0 and kept[-1] == len(full.fpr) - 1
    np.testing.assert_array_equal(small.true_positives, full.true_positives[kept])
    np.testing.assert_array_equal(small.false_positives, full.false_positives[kept])
    assert (small.fpr[0], small.tpr[0], small.fpr[-1], small.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert (np.diff(small.fpr) >= 0).all() and (np.diff(small.tpr) >= 0).all()
    # The trapezoid area under the kept points stays close to the AUC (exact when nothing is dropped).
    auc = attack_metrics(scores=scores, membership=membership).auc
    tolerance = 1e-12 if small is full else (0.01 if max_points >= 100 else 0.5)
    assert _trapezoid(small.fpr, small.tpr) == pytest.approx(auc, abs=tolerance)


def test_downsampled_roc_keeps_the_low_fpr_end():
    # 100,000 examples: the log-log half of the budget keeps points below FPR 1e-3.
    rng = np.random.default_rng(0)
    membership = rng.random(100_000) < 0.5
    scores = rng.normal(size=membership.size) + 1.5 * membership
    full = roc_curve(scores=scores, membership=membership)
    small = downsample_roc(full, max_points=500)
    assert 400 <= len(small.fpr) <= 500  # points picked twice count once
    assert ((small.fpr > 0) & (small.fpr < 1e-3)).sum() >= 20
    assert _trapezoid(small.fpr, small.tpr) == pytest.approx(roc_auc(scores=scores, membership=membership), abs=1e-4)
    # Log-log shape: on a grid of FPRs from 1e-4 to 1, the kept staircase is within 10% of the full one.
    grid = np.logspace(-4, 0, 30)
    full_at = full.tpr[np.searchsorted(full.fpr, grid, side="right") - 1]
    small_at = small.tpr[np.searchsorted(small.fpr, grid, side="right") - 1]
    np.testing.assert_allclose(small_at, full_at, rtol=0.1)
    with pytest.raises(ValueError, match="max_points"):
        downsample_roc(full, max_points=1)


def test_tpr_at_fpr_never_interpolates():
    scores, membership = [4, 3, 2, 1], [1, 0, 1, 0]
    # Achievable points: (FPR, TPR) = (0, 0), (0, .5), (.5, .5), (.5, 1), (1, 1).
    assert tpr_at_fpr(scores=scores, membership=membership, fpr=0.49) == 0.5
    assert tpr_at_fpr(scores=scores, membership=membership, fpr=0.5) == 1.0
    # A tie between a member and a non-member cannot be split by any threshold.
    assert tpr_at_fpr(scores=[1, 1, 0, 0], membership=[1, 0, 0, 1], fpr=0.49) == 0.0


def test_separable_and_reversed_scores():
    m = attack_metrics(scores=[3, 2, 1, 0], membership=[1, 1, 0, 0])
    assert (m.auc, m.advantage, m.balanced_accuracy) == (1.0, 1.0, 1.0)
    r = attack_metrics(scores=[0, 1, 2, 3], membership=[1, 1, 0, 0])
    assert (r.auc, r.advantage, r.balanced_accuracy) == (0.0, 0.0, 0.5)


# --- when TPR at an FPR is reported -------------------------------------------------------


def test_tpr_at_low_fpr_needs_enough_negatives():
    rng = np.random.default_rng(0)

    def metrics(negatives):
        membership = np.r_[np.ones(500, bool), np.zeros(negatives, bool)]
        scores = rng.normal(size=membership.size) + membership
        return attack_metrics(scores=scores, membership=membership)

    small = metrics(9_999)
    assert small.tpr_at_fpr[0.001] is None
    assert "10000 negatives" in small.unreported[0.001] and "9999" in small.unreported[0.001]
    assert small.tpr_at_fpr[0.01] is not None and small.tpr_at_fpr[0.1] is not None
    assert set(small.unreported) == {0.001}

    enough = metrics(10_000)
    assert enough.tpr_at_fpr[0.001] is not None and not enough.unreported

    tiny = metrics(999)
    assert tiny.tpr_at_fpr[0.001] is None and tiny.tpr_at_fpr[0.01] is None and tiny.tpr_at_fpr[0.1] is not None

    strict = attack_metrics(scores=[1.0] * 50 + [0.0] * 150, membership=[1] * 50 + [0] * 150, fprs=[0.1],
                            min_false_positives=20)
    assert strict.tpr_at_fpr == {0.1: None}


def test_to_dict_is_json_ready_with_string_keys():
    m = attack_metrics(scores=np.arange(200.0), membership=np.arange(200) % 2 == 0, fprs=(0.001, 0.01, 0.1))
    d = m.to_dict()
    assert list(d["tpr_at_fpr"]) == ["0.001", "0.01", "0.1"]
    assert d["tpr_at_fpr"]["0.001"] is None and d["tpr_at_fpr"]["0.1"] == m.tpr_at_fpr[0.1]
    assert set(d["unreported"]) == {"0.001", "0.01"}
    assert d["epsilon"] is None
    json.dumps(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.auc = 0.0  # type: ignore[misc]


# --- empirical epsilon --------------------------------------------------------------------


# The fixture only installs a stand-in module and a call log, which the test clears per example.
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), scores=tied_scores, delta=st.sampled_from([0.0, 1e-5, 0.01]))
def test_epsilon_is_the_best_bonferroni_bound_over_all_thresholds(fake_bounds, data, scores, delta):
    membership = _membership(data, len(scores))
    fake_bounds.clear()
    result = attack_metrics(scores=scores, membership=membership, delta=delta, alpha=0.05).epsilon
    points = _naive_points(scores, membership)[1:]  # t = +inf (predict nobody) is not a choice
    tried = len(set(scores))
    p, n = sum(membership), len(membership) - sum(membership)
    want = max(_cp_epsilon(tp=tp, fp=fp, positives=p, negatives=n, delta=delta, alpha=0.05 / tried)
               for _, tp, fp in points)
    assert result.thresholds_tried == tried
    assert result.epsilon == pytest.approx(want, abs=1e-12)
    assert all(c["alpha"] == pytest.approx(0.05 / tried) and c["delta"] == delta for c in fake_bounds)
    assert all((c["positives"], c["negatives"]) == (p, n) for c in fake_bounds)
    chosen = [(tp, fp) for t, tp, fp in points if t == result.threshold]
    assert chosen == [(result.true_positives, result.false_positives)]
    assert (result.delta, result.alpha, result.positives, result.negatives) == (delta, 0.05, p, n)


@pytest.mark.parametrize("shift", [2.0, 4.0])
def test_epsilon_matches_the_loop_when_it_is_positive(fake_bounds, shift):
    rng = np.random.default_rng(3)
    membership = rng.random(400) < 0.5
    scores = np.round(rng.normal(size=400) + shift * membership, 1)  # rounded: many ties
    result = empirical_epsilon(scores=scores, membership=membership, delta=1e-5, alpha=0.05)
    points = _naive_points(scores.tolist(), membership.tolist())[1:]
    tried = len(set(scores.tolist()))
    p, n = int(membership.sum()), int((~membership).sum())
    bounds = [_cp_epsilon(tp=tp, fp=fp, positives=p, negatives=n, delta=1e-5, alpha=0.05 / tried)
              for _, tp, fp in points]
    assert result.epsilon > 0.5
    assert result.epsilon == pytest.approx(max(bounds), abs=1e-12)
    assert result.thresholds_tried == tried


def test_epsilon_from_separated_scores(fake_bounds):
    rng = np.random.default_rng(1)
    membership = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    scores = rng.normal(size=2000) + 4.0 * membership
    eps = empirical_epsilon(scores=scores, membership=membership, delta=1e-5)
    assert eps.epsilon > 1.0
    assert eps.thresholds_tried == 2000
    # Only the Pareto-optimal thresholds are evaluated, far fewer than all 2000.
    assert len(fake_bounds) < 2000
    d = attack_metrics(scores=scores, membership=membership, delta=1e-5).to_dict()["epsilon"]
    assert d["epsilon"] == eps.epsilon and d["thresholds_tried"] == 2000
    json.dumps(d)


def test_epsilon_with_the_real_bounds_module_if_present():
    bounds = pytest.importorskip("privaudit.audit._bounds")
    assert hasattr(bounds, "clopper_pearson_epsilon")
    rng = np.random.default_rng(2)
    membership = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    strong = rng.normal(size=1000) + 4.0 * membership
    null = rng.normal(size=1000)
    e_strong = empirical_epsilon(scores=strong, membership=membership, delta=1e-5).epsilon
    e_null = empirical_epsilon(scores=null, membership=membership, delta=1e-5).epsilon
    assert math.isfinite(e_strong) and e_strong > 0.5
    assert 0 <= e_null < e_strong
    looser = empirical_epsilon(scores=strong, membership=membership, delta=1e-5, alpha=0.5).epsilon
    assert looser >= e_strong


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "membership", "match"),
    [
        ([0.1, np.nan, 0.3], [1, 0, 1], "scores"),
        ([0.1, np.inf, 0.3], [1, 0, 1], "scores"),
        ([], [], "scores"),
        ([[0.1, 0.2]], [[1, 0]], "scores"),
        ([0.1, 0.2, 0.3], [1, 0], "length"),
        ([0.1, 0.2], [1, 1], "membership"),
        ([0.1, 0.2], [0, 0], "membership"),
        ([0.1, 0.2], [1, 2], "membership"),
        ([0.1, 0.2], [1, -1], "membership"),
        ([0.1, 0.2], [1.0, np.nan], "membership"),
        (["a", "b"], [1, 0], "scores"),
    ],
)
def test_bad_scores_or_membership(scores, membership, match):
    for fn in (roc_curve, roc_auc, attack_metrics):
        with pytest.raises(ValueError, match=match):
            fn(scores=scores, membership=membership)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(fprs=[0.0]), "fpr"),
        (dict(fprs=[1.5]), "fpr"),
        (dict(delta=1.0), "delta"),
        (dict(delta=-1e-5), "delta"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=1.0), "alpha"),
        (dict(min_false_positives=0), "min_false_positives"),
        (dict(min_false_positives=2.5), "min_false_positives"),
    ],
)
def test_bad_metric_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attack_metrics(scores=[0.1, 0.2], membership=[1, 0], **kwargs)


def test_bad_tpr_at_fpr_and_epsilon_arguments():
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(scores=[0.1, 0.2], membership=[1, 0], fpr=-0.1)
    with pytest.raises(ValueError, match="delta"):
        empirical_epsilon(scores=[0.1, 0.2], membership=[1, 0], delta=2.0)
    with pytest.raises(ValueError, match="alpha"):
        empirical_epsilon(scores=[0.1, 0.2], membership=[1, 0], delta=1e-5, alpha=1.5)
