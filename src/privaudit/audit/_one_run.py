"""Epsilon lower bounds from a single training run (Steinke, Nasr, Jagielski 2023).

m canaries are each included independently with probability 1/2; the auditor
looks at the trained model, guesses IN or OUT on r of them and abstains on the
rest; v guesses are right. Under (epsilon, delta)-DP the number of right
guesses is stochastically dominated (arXiv:2305.08846 v1, Section 3's main
theorem in its approximate-DP form), which gives the p-value computed in the
paper's Appendix D and below.

Pure numpy/scipy, no torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

from privaudit import _validate

from ._bounds import (
    Bonferroni,
    Explicit,
    Split,
    ThresholdStrategy,
    _as_scores,
    _counts_at_thresholds,
)

__all__ = [
    "OneRunBound",
    "one_run_epsilon",
    "one_run_epsilon_from_scores",
    "one_run_p_value",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneRunBound:
    """A one-run epsilon lower bound, valid with probability at least ``1 - alpha``.

    Attributes:
        epsilon: The lower bound (``>= 0``).
        threshold: Canaries scoring ``>= threshold`` were guessed IN, the rest abstained on.
        guesses: r, the number of guesses at that threshold.
        correct: v, the number of right guesses.
        m: Number of canaries (each included with probability 1/2) the bound refers to.
        alpha: Overall significance (before any correction).
        delta: The delta being audited.
        method: ``"one-run/bonferroni"``, ``"one-run/split"`` or ``"one-run/explicit"``.
        thresholds_tried: How many (r, v) points alpha was divided among.
    """

    epsilon: float
    threshold: float
    guesses: int
    correct: int
    m: int
    alpha: float
    delta: float
    method: str
    thresholds_tried: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the I/O edge (reports, JSON)."""
        return dataclasses.asdict(self)


def _p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """one_run_p_value without validation."""
    if v <= 0:
        return 1.0
    q = scipy.special.expit(epsilon)
    # Steinke, Nasr, Jagielski 2023 (arXiv:2305.08846 v1), Appendix D, p-value of the
    # approximate-DP main theorem: P[W >= v] <= P[Binom(r, q) >= v]
    #                        + 2 m delta max_{1<=i<=v} P[v-i <= Binom(r, q) < v] / i.
    tail = float(scipy.stats.binom.sf(v - 1, r, q))
    if delta == 0:
        return min(tail, 1.0)
    # window[i-1] = P[v-i <= B <= v-1], summed from the top so no cancellation occurs.
    window = np.cumsum(scipy.stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    worst = float(np.max(window / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * worst, 1.0)


def _check_counts(m: int, r: int, v: int) -> None:
    _validate.integer(minimum=1, m=m)
    _validate.integer(r=r, v=v)
    if r > m:
        raise ValueError(f"Expected r={r} in [0, m={m}].")
    if v > r:
        raise ValueError(f"Expected v={v} in [0, r={r}].")


def one_run_p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least v right guesses out of r under (epsilon, delta)-DP.

    ``p = P[Binom(r, q) >= v] + 2 m delta max_{1<=i<=v} P[v-i <= Binom(r, q) < v] / i``
    with ``q = e^eps / (1 + e^eps)``, capped at 1.

    >>> f"{one_run_p_value(m=1000, r=100, v=100, epsilon=2.0, delta=0.0):.4e}"  # q**100
    '3.0732e-06'
    >>> f"{one_run_p_value(m=1000, r=100, v=90, epsilon=1.0, delta=1e-5):.4e}"
    '8.4129e-04'

    Raises:
        ValueError: unless ``0 <= v <= r <= m``, ``m >= 1``, epsilon finite ``>= 0``
            and delta in [0, 1].
    """
    _check_counts(m, r, v)
    _validate.non_negative(epsilon=epsilon)
    _validate.in_range(0, 1, delta=delta)
    return _p_value(m, r, v, float(epsilon), float(delta))


def _epsilon(m: int, r: int, v: int, delta: float, alpha: float, floor: float = 0.0) -> float:
    """one_run_epsilon without validation; returns ``floor`` if p(floor) > alpha."""

    def excess(eps: float) -> float:
        return _p_value(m, r, v, eps, delta) - alpha

    if excess(floor) > 0:
        return floor
    lo, hi = floor, max(1.0, 2.0 * floor)
    while excess(hi) <= 0:  # p -> 1 as eps -> inf (q rounds to 1 by eps ~ 37)
        lo, hi = hi, 2.0 * hi
    return float(scipy.optimize.brentq(excess, lo, hi, xtol=1e-10, rtol=1e-12))


def one_run_epsilon(*, m: int, r: int, v: int, delta: float, alpha: float = 0.05) -> float:
    """Largest epsilon that ``v`` right guesses out of ``r`` reject at level alpha.

    p(epsilon) increases with epsilon (checked in the tests), so the root of
    ``p(epsilon) = alpha`` is found by doubling, then Brent's method. Returns 0
    when even epsilon = 0 is not rejected.

    Every guess right, delta = 0, alpha = 0.05 (Steinke et al. 2023, Figure 1 ceilings):

    >>> [round(one_run_epsilon(m=r, r=r, v=r, delta=0.0), 2) for r in (100, 1000, 10000)]
    [3.49, 5.81, 8.11]

    Raises:
        ValueError: unless ``0 <= v <= r <= m``, ``m >= 1``, delta in [0, 1) and alpha in (0, 1).
    """
    _check_counts(m, r, v)
    _validate.in_range(0, 1, hi_open=True, delta=delta)
    _validate.in_range(0, 1, lo_open=True, hi_open=True, alpha=alpha)
    return _epsilon(m, r, v, float(delta), float(alpha))


def _pareto_vertices(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Indices of the vertices of the upper concave hull of the path (w[k], v[k]).

    ``w`` (wrong guesses) and ``v`` (right guesses) are non-decreasing along the path,
    which starts at (0, 0). A point strictly below or on a chord between two other
    points is dominated: mixing those two thresholds at random would do at least as
    well. Andrew's monotone chain, O(len(w)). Both end points are kept.
    """
    hull: list[int] = []
    for k in range(w.size):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (w[b] - w[a]) * (v[k] - v[a]) - (v[b] - v[a]) * (w[k] - w[a])
            if cross < 0:
                break
            hull.pop()
        hull.append(k)
    return np.array(hull, dtype=int)


def _best_point(
    tp: np.ndarray, fp: np.ndarray, candidates: np.ndarray, m: int, delta: float, alpha: float
) -> tuple[float, int]:
    """Largest one-run bound over candidate thresholds, each tested at level alpha."""
    precision = tp[candidates] / np.maximum(tp[candidates] + fp[candidates], 1)
    order = candidates[np.argsort(-precision, kind="stable")]
    best_eps, best = 0.0, int(order[0])  # if nothing rejects eps = 0: the most precise point
    for k in order:
        r, v = int(tp[k] + fp[k]), int(tp[k])
        # p is increasing in eps: if best_eps is not rejected here, nothing larger is.
        if v == 0 or _p_value(m, r, v, best_eps, delta) > alpha:
            continue
        eps = _epsilon(m, r, v, delta, alpha, floor=best_eps)
        if eps > best_eps:
            best_eps, best = eps, int(k)
    return best_eps, best


def _path(scores: np.ndarray, member: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds (+inf first, then distinct scores decreasing) with TP and FP at each."""
    thresholds, tp, fp = _counts_at_thresholds(scores[member], scores[~member])
    return (np.concatenate([[np.inf], thresholds]), np.concatenate([[0], tp]),
            np.concatenate([[0], fp]))


def _as_membership(membership: Any, size: int) -> np.ndarray:
    arr = np.asarray(membership)
    if arr.ndim != 1 or arr.size != size:
        raise ValueError(
            f"Expected membership to be a 1-D array with one entry per score ({size}), "
            f"got shape {arr.shape}."
        )
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise ValueError("Expected membership to hold booleans or 0/1 (1 = IN).")
        arr = arr.astype(bool)
    return arr


def one_run_epsilon_from_scores(
    scores: Any,
    membership: Any,
    *,
    delta: float,
    alpha: float = 0.05,
    m: int | None = None,
    threshold: ThresholdStrategy = Bonferroni(),
) -> OneRunBound:
    """One-run epsilon lower bound from canary scores (higher score = more likely IN).

    The auditor guesses IN for every canary scoring ``>= threshold`` and abstains
    on the rest (the one-sided rule, k_- = 0 in Steinke et al. 2023). With
    ``Bonferroni()`` the thresholds searched are the vertices of the upper concave
    hull of the (wrong, right) path over all thresholds (including "guess nothing"
    and "guess all"), each at level ``alpha / thresholds_tried``. Thresholds off the
    hull are dominated, in the ROC sense, by a random mix of two hull thresholds
    (a heuristic for the one-run bound, which is not linear in the counts).

    Caveat: the hull depends on the data, so the number of tests is itself random;
    this matches the published reference values (REFERENCES.md, jax_privacy) but
    is a slightly optimistic reading of the union bound. ``Split`` (threshold
    chosen on a random, membership-blind part of the canaries, which are then
    left out, so ``m`` shrinks by their number) and ``Explicit`` have no caveat.

    Args:
        scores: One attack score per canary.
        membership: True (or 1) where the canary was included in training.
        delta: The delta being audited, in [0, 1).
        alpha: Significance, in (0, 1).
        m: Total number of canaries, each included with probability 1/2; defaults to
            ``len(scores)``. Larger than ``len(scores)`` if some canaries were not scored.
        threshold: ``Bonferroni()``, ``Split(fraction, seed)`` or ``Explicit(t)``.

    Raises:
        ValueError: on empty or NaN scores, membership of another shape or not 0/1,
            m < len(scores), alpha outside (0, 1), delta outside [0, 1), or an unknown
            threshold strategy.
    """
    s = _as_scores("scores", scores)
    member = _as_membership(membership, s.size)
    if m is None:
        m = s.size
    _validate.integer(minimum=s.size, m=m)
    _validate.in_range(0, 1, hi_open=True, delta=delta)
    _validate.in_range(0, 1, lo_open=True, hi_open=True, alpha=alpha)
    common = dict(alpha=alpha, delta=delta)

    if isinstance(threshold, Explicit):
        t = float(threshold.threshold)
        guessed = s >= t
        r, v = int(guessed.sum()), int((guessed & member).sum())
        eps = _epsilon(m, r, v, delta, alpha)
        return OneRunBound(epsilon=eps, threshold=t, guesses=r, correct=v, m=m,
                           method="one-run/explicit", thresholds_tried=1, **common)
    if isinstance(threshold, Split):
        rng = np.random.default_rng(threshold.seed)
        n_select = int(threshold.fraction * s.size)
        if n_select < 1 or n_select > s.size - 1:
            raise ValueError(
                f"Split(fraction={threshold.fraction}) leaves one part of the {s.size} "
                "canaries empty; use more canaries or another fraction."
            )
        perm = rng.permutation(s.size)  # blind to membership: the rest stay i.i.d. coin flips
        sel, rest = perm[:n_select], perm[n_select:]
        thresholds, tp, fp = _path(s[sel], member[sel])
        hull = _pareto_vertices(fp, tp)
        _, k = _best_point(tp, fp, hull, n_select, delta, alpha)
        bound = one_run_epsilon_from_scores(
            s[rest], member[rest], m=m - n_select, threshold=Explicit(float(thresholds[k])),
            **common,
        )
        return dataclasses.replace(bound, method="one-run/split")
    if isinstance(threshold, Bonferroni):
        thresholds, tp, fp = _path(s, member)
        hull = _pareto_vertices(fp, tp)
        eps, k = _best_point(tp, fp, hull, m, delta, alpha / hull.size)
        return OneRunBound(epsilon=eps, threshold=float(thresholds[k]),
                           guesses=int(tp[k] + fp[k]), correct=int(tp[k]), m=m,
                           method="one-run/bonferroni", thresholds_tried=int(hull.size),
                           **common)
    raise ValueError(
        f"Expected threshold to be Bonferroni(), Split(...) or Explicit(...), got {threshold!r}."
    )
