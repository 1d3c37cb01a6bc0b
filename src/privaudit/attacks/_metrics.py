"""How well an attack's scores separate members from non-members.

Conventions: P members (positives) and N non-members (negatives); a threshold
t predicts "member" for every score >= t. The ROC curve has one point per
distinct score (ties move together, never split), plus the point (0, 0) for
t = +inf. Nothing is interpolated: every reported rate is achieved by some
threshold on these scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _validate
from ._base import as_membership, as_real_array

__all__ = [
    "AttackMetrics",
    "EmpiricalEpsilon",
    "RocCurve",
    "attack_metrics",
    "downsample_roc",
    "empirical_epsilon",
    "roc_auc",
    "roc_curve",
    "tpr_at_fpr",
]

DEFAULT_FPRS: tuple[float, ...] = (0.001, 0.01, 0.1)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class RocCurve:
    """ROC curve over distinct score thresholds, in decreasing order of threshold.

    Attributes:
        thresholds: (L,) float, thresholds[0] = +inf, then each distinct score, descending.
        true_positives, false_positives: (L,) int counts with score >= threshold.
        tpr, fpr: (L,) rates, true_positives / positives and false_positives / negatives.
        positives, negatives: P and N.
    """

    thresholds: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    tpr: np.ndarray
    fpr: np.ndarray
    positives: int
    negatives: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmpiricalEpsilon:
    """An empirical lower bound on epsilon from the attack's best threshold.

    Clopper-Pearson intervals at each Pareto-optimal threshold (Jagielski,
    Ullman, Oprea 2020, arXiv 2006.07709), with `alpha` split by Bonferroni
    over all `thresholds_tried` distinct thresholds, so choosing the best one
    on the same data is paid for. Holds with probability >= 1 - alpha.

    Attributes:
        epsilon: the bound (max over thresholds).
        delta, alpha: as passed in.
        thresholds_tried: the Bonferroni count (distinct finite thresholds).
        threshold: the score threshold that gave `epsilon`.
        true_positives, false_positives: counts at that threshold.
        positives, negatives: P and N.
    """

    epsilon: float
    delta: float
    alpha: float
    thresholds_tried: int
    threshold: float
    true_positives: int
    false_positives: int
    positives: int
    negatives: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (I/O edge only)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackMetrics:
    """Summary of an attack's scores against true membership.

    Attributes:
        auc: area under the ROC curve (Mann-Whitney U / (P N), ties count 1/2).
        balanced_accuracy: max over thresholds of (TPR + TNR) / 2.
        advantage: membership advantage, max over thresholds of TPR - FPR.
        tpr_at_fpr: {target FPR: largest TPR at a threshold with FPR <= target},
            or None where N * target < `min_false_positives` (too few negatives
            for that FPR to mean anything); see `unreported`.
        unreported: {target FPR: why its TPR is None}.
        positives, negatives: P and N.
        epsilon: the empirical epsilon lower bound, or None when no delta was given.
    """

    auc: float
    balanced_accuracy: float
    advantage: float
    tpr_at_fpr: Mapping[float, float | None]
    unreported: Mapping[float, str]
    positives: int
    negatives: int
    epsilon: EmpiricalEpsilon | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (I/O edge only): FPR keys become strings such as "0.01"."""
        return {
            "auc": self.auc,
            "balanced_accuracy": self.balanced_accuracy,
            "advantage": self.advantage,
            "tpr_at_fpr": {repr(float(k)): v for k, v in self.tpr_at_fpr.items()},
            "unreported": {repr(float(k)): v for k, v in self.unreported.items()},
            "positives": self.positives,
            "negatives": self.negatives,
            "epsilon": None if self.epsilon is None else self.epsilon.to_dict(),
        }


def _check(scores: Any, membership: Any) -> tuple[np.ndarray, np.ndarray]:
    s = as_real_array("scores", scores, ndims=(1,))
    m = as_membership("membership", membership, ndim=1)
    if s.shape != m.shape:
        raise ValueError(f"Expected scores and membership of the same length, got {s.shape} and {m.shape}.")
    if m.all() or not m.any():
        raise ValueError("Expected membership to contain both members (True) and non-members (False).")
    return s, m


def roc_curve(*, scores: npt.ArrayLike, membership: npt.ArrayLike) -> RocCurve:
    """ROC curve with one point per distinct score (ties handled as one threshold).

    >>> roc = roc_curve(scores=[0.9, 0.5, 0.5, 0.1], membership=[1, 1, 0, 0])
    >>> roc.tpr.tolist(), roc.fpr.tolist()
    ([0.0, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0])
    """
    s, m = _check(scores, membership)
    order = np.argsort(-s, kind="stable")
    s_sorted, m_sorted = s[order], m[order]
    # Last index of each run of equal scores: a threshold takes a whole tie group or none of it.
    ends = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
    tp = np.concatenate(([0], np.cumsum(m_sorted)[ends]))
    fp = np.concatenate(([0], ends + 1 - tp[1:]))
    positives, negatives = int(m.sum()), int((~m).sum())
    return RocCurve(
        thresholds=np.concatenate(([np.inf], s_sorted[ends])),
        true_positives=tp,
        false_positives=fp,
        tpr=tp / positives,
        fpr=fp / negatives,
        positives=positives,
        negatives=negatives,
    )


#: Points kept by `downsample_roc` by default (attack.json's stored ROC curves).
ROC_MAX_POINTS = 500


def downsample_roc(roc: RocCurve, *, max_points: int = ROC_MAX_POINTS) -> RocCurve:
    """At most `max_points` of the curve's own points, chosen to keep its shape on linear and log-log axes.

    The curve is a monotone staircase of one point per distinct threshold; a
    subset of its points is still monotone, and every kept point is still
    achieved by a threshold (nothing is interpolated). The first point (0, 0)
    and the last (1, 1) are always kept. The rest are spread evenly along the
    curve's length twice: half by length on log-log axes (log FPR, log TPR,
    rates below 1/N or 1/P drawn at that floor), which keeps the low-FPR end
    that log-log plots show, and half by length on linear axes, which keeps
    the trapezoid area close to the full curve's AUC (each dropped point
    changes it by at most half the product of its neighbours' FPR and TPR gaps).
    A point picked by both counts once, so fewer than `max_points` may be kept.
    A curve with no more than `max_points` points is returned as it is.

    >>> roc = roc_curve(scores=np.arange(1000.0), membership=np.arange(1000) % 3 == 0)
    >>> small = downsample_roc(roc, max_points=50)
    >>> len(small.fpr) <= 50, small.fpr[[0, -1]].tolist(), small.tpr[[0, -1]].tolist()
    (True, [0.0, 1.0], [0.0, 1.0])
    """
    _validate.integer(minimum=2, max_points=max_points)
    size = int(roc.fpr.shape[0])
    if size <= max_points:
        return roc

    def spread(x: np.ndarray, y: np.ndarray, count: int) -> np.ndarray:
        # Indices of the points nearest to `count` evenly spaced positions along the polyline (x, y).
        length = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
        if count < 1 or length[-1] <= 0:
            return np.zeros(0, dtype=np.int64)
        marks = np.linspace(0.0, length[-1], count)
        right = np.clip(np.searchsorted(length, marks), 1, size - 1)
        nearer_left = (marks - length[right - 1]) <= (length[right] - marks)
        return np.where(nearer_left, right - 1, right)

    log_fpr = np.log10(np.maximum(roc.fpr, 1.0 / max(roc.negatives, 1)))
    log_tpr = np.log10(np.maximum(roc.tpr, 1.0 / max(roc.positives, 1)))
    budget = max_points - 2
    chosen = {0, size - 1}
    chosen.update(spread(log_fpr, log_tpr, budget // 2).tolist())
    chosen.update(spread(roc.fpr, roc.tpr, budget - budget // 2).tolist())  # a point picked twice counts once
    keep = np.array(sorted(chosen), dtype=np.int64)
    return RocCurve(thresholds=roc.thresholds[keep], true_positives=roc.true_positives[keep],
                    false_positives=roc.false_positives[keep], tpr=roc.tpr[keep], fpr=roc.fpr[keep],
                    positives=roc.positives, negatives=roc.negatives)


def _auc(roc: RocCurve) -> float:
    # Trapezoids over the tie-grouped curve = Mann-Whitney U / (P N) with ties counting 1/2.
    return float(np.sum(np.diff(roc.fpr) * (roc.tpr[1:] + roc.tpr[:-1])) / 2)


def roc_auc(*, scores: npt.ArrayLike, membership: npt.ArrayLike) -> float:
    """Area under the ROC curve = Pr[score(member) > score(non-member)] + Pr[tie] / 2.

    >>> roc_auc(scores=[0.9, 0.5, 0.5, 0.1], membership=[1, 1, 0, 0])
    0.875
    """
    return _auc(roc_curve(scores=scores, membership=membership))


def _tpr_at(roc: RocCurve, fpr: float) -> float:
    # Largest TPR over thresholds with FPR <= target; fpr is non-decreasing along the curve.
    last = int(np.searchsorted(roc.fpr, fpr, side="right")) - 1
    return float(roc.tpr[last])


def tpr_at_fpr(*, scores: npt.ArrayLike, membership: npt.ArrayLike, fpr: float) -> float:
    """The largest TPR achieved by a threshold whose FPR is at most `fpr` (no interpolation)."""
    _validate.in_range(0, 1, fpr=fpr)
    return _tpr_at(roc_curve(scores=scores, membership=membership), fpr)


def _epsilon(roc: RocCurve, *, delta: float, alpha: float) -> EmpiricalEpsilon:
    # Supplied by the audit package; imported here so the attacks import without it.
    from privaudit.audit._bounds import clopper_pearson_epsilon

    tp, fp = roc.true_positives, roc.false_positives
    tried = len(tp) - 1  # every distinct score is a threshold we could have picked (t = +inf is not)
    per_threshold_alpha = alpha / tried  # Bonferroni: alpha is split over all of them

    def bound(true_pos: int, false_pos: int) -> float:
        return float(
            clopper_pearson_epsilon(
                tp=int(true_pos),
                fp=int(false_pos),
                positives=roc.positives,
                negatives=roc.negatives,
                delta=delta,
                alpha=per_threshold_alpha,
            )
        )

    # The Clopper-Pearson bound never decreases with more TP or fewer FP. So its max over all
    # thresholds is attained on the Pareto-optimal ones (most TP for their FP, fewest FP for their
    # TP), and over a run of those, sorted by FP, it is at most bound(last TP, first FP). A
    # branch-and-bound over runs finds the max (earliest threshold on ties) with a few calls per
    # near-best run instead of one per threshold.
    idx = np.arange(1, len(tp))
    next_fp = np.append(fp[2:], np.iinfo(np.int64).max)
    pareto = idx[(next_fp > fp[1:]) & (tp[1:] > tp[:-1])]
    best_eps, best_i = -np.inf, len(tp)
    stack = [(0, len(pareto) - 1, np.inf)]
    while stack:
        lo, hi, upper = stack.pop()
        if upper < best_eps or (upper == best_eps and pareto[lo] > best_i):
            continue
        if lo == hi:
            eps = bound(tp[pareto[lo]], fp[pareto[lo]])
            if eps > best_eps or (eps == best_eps and pareto[lo] < best_i):
                best_eps, best_i = eps, int(pareto[lo])
            continue
        mid = (lo + hi) // 2
        halves = [
            (lo, mid, bound(tp[pareto[mid]], fp[pareto[lo]])),
            (mid + 1, hi, bound(tp[pareto[hi]], fp[pareto[mid + 1]])),
        ]
        # Explore the more promising half first (pushed last); the earlier half on ties.
        halves.sort(key=lambda h: (h[2], -h[0]))
        stack.extend(halves)
    return EmpiricalEpsilon(
        epsilon=best_eps,
        delta=float(delta),
        alpha=float(alpha),
        thresholds_tried=tried,
        threshold=float(roc.thresholds[best_i]),
        true_positives=int(tp[best_i]),
        false_positives=int(fp[best_i]),
        positives=roc.positives,
        negatives=roc.negatives,
    )


def empirical_epsilon(
    *, scores: npt.ArrayLike, membership: npt.ArrayLike, delta: float, alpha: float = 0.05
) -> EmpiricalEpsilon:
    """Clopper-Pearson epsilon lower bound at the best threshold, Bonferroni over thresholds.

    Members are the canaries that were IN, non-members those held OUT; see
    `EmpiricalEpsilon`. Needs `privaudit.audit._bounds`.
    """
    _validate.in_range(0, 1, hi_open=True, delta=delta)
    _validate.in_range(0, 1, lo_open=True, hi_open=True, alpha=alpha)
    return _epsilon(roc_curve(scores=scores, membership=membership), delta=delta, alpha=alpha)


def attack_metrics(
    *,
    scores: npt.ArrayLike,
    membership: npt.ArrayLike,
    fprs: Sequence[float] = DEFAULT_FPRS,
    min_false_positives: int = 10,
    delta: float | None = None,
    alpha: float = 0.05,
) -> AttackMetrics:
    """All of an attack's metrics in one `AttackMetrics`.

    Args:
        scores: (n,) attack scores, higher = more likely member.
        membership: (n,) bool (or 0/1) truth.
        fprs: target false-positive rates for `tpr_at_fpr`.
        min_false_positives: TPR at an FPR is reported only when N * FPR >= this
            many false positives; below that a "TPR at 0.1% FPR" would rest on a
            handful of negatives (REFERENCES.md: 0.1% needs ~10,000 negatives).
        delta: the DP delta for the empirical epsilon bound; None skips the bound.
        alpha: significance of the epsilon bound (1 - confidence).

    >>> m = attack_metrics(scores=[0.9, 0.8, 0.3, 0.1], membership=[1, 0, 1, 0])
    >>> m.auc, m.advantage, m.tpr_at_fpr[0.1]
    (0.75, 0.5, None)
    """
    _validate.integer(minimum=1, min_false_positives=min_false_positives)
    _validate.in_range(0, 1, lo_open=True, hi_open=True, alpha=alpha)
    if delta is not None:
        _validate.in_range(0, 1, hi_open=True, delta=delta)
    targets = [float(f) for f in fprs]
    for f in targets:
        _validate.in_range(0, 1, lo_open=True, fpr=f)
    roc = roc_curve(scores=scores, membership=membership)

    tpr_at: dict[float, float | None] = {}
    unreported: dict[float, str] = {}
    for f in targets:
        # Tolerance so that e.g. 10,000 * 0.001 counts as 10 despite rounding.
        if roc.negatives * f >= min_false_positives * (1 - 1e-9):
            tpr_at[f] = _tpr_at(roc, f)
        else:
            tpr_at[f] = None
            needed = int(np.ceil(min_false_positives / f - 1e-9))
            unreported[f] = (
                f"needs >= {needed} negatives for {min_false_positives} false positives at FPR {f:g}; "
                f"have {roc.negatives}"
            )
    gap = roc.tpr - roc.fpr
    return AttackMetrics(
        auc=_auc(roc),
        balanced_accuracy=float(np.max((roc.tpr + 1 - roc.fpr) / 2)),
        advantage=float(np.max(gap)),
        tpr_at_fpr=tpr_at,
        unreported=unreported,
        positives=roc.positives,
        negatives=roc.negatives,
        epsilon=None if delta is None else _epsilon(roc, delta=delta, alpha=alpha),
    )
