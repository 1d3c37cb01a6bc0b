"""The (epsilon, delta) hypothesis-testing region and Clopper-Pearson lower bounds.

Notation (as in REFERENCES.md): P held-in canaries (positives), N held-out
canaries (negatives). A threshold ``t`` guesses IN for every score ``>= t``;
TP and FP count the IN and OUT canaries guessed IN, FN = P - TP, TN = N - FP.

Pure numpy/scipy, no torch.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np
import scipy.special

from privaudit import _validate

__all__ = [
    "Bonferroni",
    "EpsilonBound",
    "Explicit",
    "Split",
    "ThresholdStrategy",
    "clopper_pearson_epsilon",
    "epsilon_from_rates",
    "epsilon_lower_bound",
]


# --------------------------------------------------------------------------
# Threshold strategies


@dataclasses.dataclass(frozen=True)
class ThresholdStrategy:
    """Says how the decision threshold is chosen without making the bound invalid."""


@dataclasses.dataclass(frozen=True)
class Bonferroni(ThresholdStrategy):
    """Try every candidate threshold on the same data and split alpha evenly among them.

    The bound is valid at level alpha because each threshold is tested at level
    ``alpha / thresholds_tried`` (union bound).
    """


@dataclasses.dataclass(frozen=True)
class Split(ThresholdStrategy):
    """Choose the threshold on a random part of the canaries and compute the bound on the rest.

    Attributes:
        fraction: Share of the canaries used only to choose the threshold, in (0, 1).
        seed: Seed for the random split, recorded so that the audit can be repeated.
    """

    fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        _validate.in_range(0, 1, lo_open=True, hi_open=True, fraction=self.fraction)
        _validate.integer(seed=self.seed)


@dataclasses.dataclass(frozen=True)
class Explicit(ThresholdStrategy):
    """A threshold fixed before the scores were seen: one test at the full alpha.

    Attributes:
        threshold: Scores ``>= threshold`` are guessed IN.
    """

    threshold: float

    def __post_init__(self) -> None:
        # +-inf are allowed (guess nothing / everything); NaN is not.
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, numbers.Real)
            or math.isnan(float(self.threshold))
        ):
            raise ValueError(
                f"Expected threshold to be a real number in [-inf, inf], got {self.threshold!r}."
            )


# --------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpsilonBound:
    """A rigorous lower bound on epsilon, valid with probability at least ``1 - alpha``.

    Attributes:
        epsilon: The lower bound (``>= 0``).
        threshold: The threshold that attained it (scores ``>= threshold`` guessed IN);
            ``nan`` when no threshold was evaluated.
        tp, fp: Counts at that threshold on the data the bound was computed from.
        positives, negatives: Number of IN and OUT canaries the bound was computed from.
        alpha: Overall significance of the bound (before any correction).
        delta: The delta being audited.
        method: How the threshold was paid for, e.g. ``"clopper-pearson/bonferroni"``.
        thresholds_tried: How many thresholds alpha was divided among (1 unless Bonferroni).
    """

    epsilon: float
    threshold: float
    tp: int
    fp: int
    positives: int
    negatives: int
    alpha: float
    delta: float
    method: str
    thresholds_tried: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the I/O edge (reports, JSON)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------
# Region and intervals


def _region_epsilon(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """Vectorised epsilon_from_rates, no validation: inf where a rate is 0 and the other side is > 0."""
    fpr = np.asarray(fpr, dtype=float)
    fnr = np.asarray(fnr, dtype=float)

    def one_side(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        # log(num / den) where num > 0; -inf (no constraint) where num <= 0; +inf where den == 0 < num.
        with np.errstate(divide="ignore"):
            val = np.log(np.where(num > 0, num, 1.0)) - np.log(den)
        return np.where(num > 0, val, -np.inf)

    # Kairouz, Oh, Viswanath 2015 (arXiv:1311.0776), Theorem 2.1: an (eps, delta)-DP
    # mechanism satisfies FPR + e^eps FNR >= 1 - delta and FNR + e^eps FPR >= 1 - delta.
    first = one_side(1.0 - delta - fnr, fpr)
    second = one_side(1.0 - delta - fpr, fnr)
    return np.maximum(np.maximum(first, second), 0.0)


def epsilon_from_rates(fpr: float, fnr: float, *, delta: float) -> float:
    """Smallest epsilon whose (epsilon, delta) region contains the point (FPR, FNR).

    ``max(log((1-delta-FNR)/FPR), log((1-delta-FPR)/FNR), 0)``. A side whose
    numerator is ``<= 0`` constrains nothing; a zero rate facing a positive
    numerator gives ``inf`` (no finite epsilon allows that point). This is a
    point estimate: plug in confidence bounds (``clopper_pearson_epsilon``) for a
    guarantee.

    >>> round(epsilon_from_rates(0.01, 0.5, delta=0.0), 4)
    3.912
    >>> epsilon_from_rates(0.0, 0.5, delta=1e-5)
    inf
    >>> epsilon_from_rates(0.5, 0.5, delta=0.0)
    0.0

    Raises:
        ValueError: if a rate is outside [0, 1] or delta outside [0, 1).
    """
    _validate.in_range(0, 1, fpr=fpr, fnr=fnr)
    _validate.in_range(0, 1, hi_open=True, delta=delta)
    return float(_region_epsilon(np.array(fpr), np.array(fnr), float(delta)))


def _cp_upper(k: np.ndarray, n: int | np.ndarray, alpha: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound on a binomial rate from k successes out of n.

    ``BetaInv(1 - alpha; k + 1, n - k)``, and 1 when ``k == n`` (Clopper & Pearson 1934).
    """
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    full = k >= n
    b = np.where(full, 1.0, n - k)
    return np.where(full, 1.0, scipy.special.betaincinv(k + 1.0, b, 1.0 - alpha))


def _cp_epsilon(
    tp: np.ndarray, fp: np.ndarray, positives: int, negatives: int, delta: float, alpha: float
) -> np.ndarray:
    """Vectorised Clopper-Pearson epsilon lower bound, no validation."""
    # Jagielski, Ullman, Oprea 2020 (arXiv:2006.07709), Monte Carlo estimation of epsilon:
    # one-sided Clopper-Pearson upper bounds on FPR and FNR, alpha/2 each.
    # The mirrored direction (guessing OUT for scores below the threshold: its false positives
    # are our FN, its false negatives our FP) is the region's second inequality. It uses the
    # same two upper bounds, so it costs no further correction: when both intervals hold
    # (probability >= 1 - alpha) both inequalities hold at once.
    fpr_ub = _cp_upper(fp, negatives, alpha / 2)
    fnr_ub = _cp_upper(positives - np.asarray(tp), positives, alpha / 2)
    return _region_epsilon(fpr_ub, fnr_ub, delta)


def _check_alpha_delta(alpha: float, delta: float) -> None:
    _validate.in_range(0, 1, lo_open=True, hi_open=True, alpha=alpha)
    _validate.in_range(0, 1, hi_open=True, delta=delta)


def clopper_pearson_epsilon(
    *, tp: int, fp: int, positives: int, negatives: int, delta: float, alpha: float
) -> float:
    """Epsilon lower bound at one threshold fixed in advance, valid with probability >= 1 - alpha.

    ``FPR_ub = BetaInv(1-a; FP+1, N-FP)``, ``FNR_ub = BetaInv(1-a; FN+1, P-FN)`` with
    ``a = alpha/2``, then ``max(log((1-FNR_ub-delta)/FPR_ub), log((1-FPR_ub-delta)/FNR_ub), 0)``.
    The second term is the mirrored test (guess OUT below the threshold); it needs no
    extra correction because it uses the same two upper bounds.

    >>> round(clopper_pearson_epsilon(tp=500, fp=5, positives=1000, negatives=1000,
    ...                               delta=1e-5, alpha=0.05), 3)
    3.696

    Raises:
        ValueError: on counts out of range, alpha outside (0, 1) or delta outside [0, 1).
    """
    _validate.integer(minimum=1, positives=positives, negatives=negatives)
    _validate.integer(tp=tp, fp=fp)
    if tp > positives:
        raise ValueError(f"Expected tp={tp} in [0, positives={positives}].")
    if fp > negatives:
        raise ValueError(f"Expected fp={fp} in [0, negatives={negatives}].")
    _check_alpha_delta(alpha, delta)
    return float(_cp_epsilon(np.array(tp), np.array(fp), positives, negatives, delta, alpha))


# --------------------------------------------------------------------------
# Scores -> counts at every threshold


def _as_scores(name: str, values: Any, *, allow_empty: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"Expected {name} to be a 1-D array of real numbers.") from e
    if arr.ndim != 1:
        raise ValueError(f"Expected {name} to be a 1-D array, got shape {arr.shape}.")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"Expected {name} to be non-empty (at least 1 score).")
    if np.isnan(arr).any():
        raise ValueError(f"Expected {name} without NaN (scores in [-inf, inf]).")
    return arr


def _counts_at_thresholds(
    in_scores: np.ndarray, out_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores in decreasing order, with TP and FP when guessing IN for scores >= each.

    Sort once and cumulate: O((P + N) log(P + N)).
    """
    thresholds, inverse = np.unique(np.concatenate([in_scores, out_scores]), return_inverse=True)
    n_in = in_scores.size
    tp_at = np.bincount(inverse[:n_in], minlength=thresholds.size)
    fp_at = np.bincount(inverse[n_in:], minlength=thresholds.size)
    return thresholds[::-1], np.cumsum(tp_at[::-1]), np.cumsum(fp_at[::-1])


def _stratified_split(
    scores: np.ndarray, fraction: float, rng: np.random.Generator, name: str
) -> tuple[np.ndarray, np.ndarray]:
    n_select = int(fraction * scores.size)
    if n_select < 1 or n_select > scores.size - 1:
        raise ValueError(
            f"Split(fraction={fraction}) leaves one part of {name} (size {scores.size}) empty; "
            "use more canaries or a fraction in (1/size, 1 - 1/size)."
        )
    perm = rng.permutation(scores.size)
    return scores[perm[:n_select]], scores[perm[n_select:]]


def epsilon_lower_bound(
    in_scores: Any,
    out_scores: Any,
    *,
    delta: float,
    alpha: float = 0.05,
    threshold: ThresholdStrategy = Bonferroni(),
) -> EpsilonBound:
    """Clopper-Pearson epsilon lower bound from canary scores (higher score = more likely IN).

    Valid with probability at least ``1 - alpha`` when the IN and OUT scores are
    independent draws from the mechanism run with and without the canary. The
    threshold is never chosen on the bound's own data for free:

    * ``Bonferroni()``: every distinct score is tried as a threshold, each at
      level ``alpha / thresholds_tried``, and the best bound is returned.
    * ``Split(fraction, seed)``: a random ``fraction`` of the IN and of the OUT
      scores chooses the threshold; the bound is computed on the rest at level alpha.
    * ``Explicit(threshold)``: one threshold fixed in advance, level alpha.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> b = epsilon_lower_bound(rng.normal(3, 1, 2000), rng.normal(0, 1, 2000), delta=1e-5)
    >>> round(b.epsilon, 3), b.thresholds_tried   # the true epsilon of 3-GDP here is 16.7
    (4.113, 4000)

    Raises:
        ValueError: on empty or NaN scores, alpha outside (0, 1), delta outside [0, 1),
            or an unknown threshold strategy.
    """
    ins = _as_scores("in_scores", in_scores)
    outs = _as_scores("out_scores", out_scores)
    _check_alpha_delta(alpha, delta)

    if isinstance(threshold, Explicit):
        t = float(threshold.threshold)
        tp, fp = int(np.sum(ins >= t)), int(np.sum(outs >= t))
        eps = float(_cp_epsilon(np.array(tp), np.array(fp), ins.size, outs.size, delta, alpha))
        return EpsilonBound(
            epsilon=eps, threshold=t, tp=tp, fp=fp, positives=ins.size, negatives=outs.size,
            alpha=alpha, delta=delta, method="clopper-pearson/explicit", thresholds_tried=1,
        )
    if isinstance(threshold, Split):
        rng = np.random.default_rng(threshold.seed)
        ins_sel, ins_rest = _stratified_split(ins, threshold.fraction, rng, "in_scores")
        outs_sel, outs_rest = _stratified_split(outs, threshold.fraction, rng, "out_scores")
        chosen = _best_threshold(ins_sel, outs_sel, delta=delta, alpha=alpha)
        bound = epsilon_lower_bound(
            ins_rest, outs_rest, delta=delta, alpha=alpha, threshold=Explicit(chosen)
        )
        return dataclasses.replace(bound, method="clopper-pearson/split")
    if isinstance(threshold, Bonferroni):
        thresholds, tp, fp = _counts_at_thresholds(ins, outs)
        k = thresholds.size
        eps = _cp_epsilon(tp, fp, ins.size, outs.size, delta, alpha / k)
        best = int(np.argmax(eps))
        return EpsilonBound(
            epsilon=float(eps[best]), threshold=float(thresholds[best]), tp=int(tp[best]),
            fp=int(fp[best]), positives=ins.size, negatives=outs.size, alpha=alpha,
            delta=delta, method="clopper-pearson/bonferroni", thresholds_tried=k,
        )
    raise ValueError(
        f"Expected threshold to be Bonferroni(), Split(...) or Explicit(...), got {threshold!r}."
    )


def _best_threshold(ins: np.ndarray, outs: np.ndarray, *, delta: float, alpha: float) -> float:
    """The threshold with the largest Clopper-Pearson bound (at level alpha) on this data.

    Ties, including the all-zero case, go to the threshold with the largest
    point estimate of epsilon, then to the highest threshold.
    """
    thresholds, tp, fp = _counts_at_thresholds(ins, outs)
    eps = _cp_epsilon(tp, fp, ins.size, outs.size, delta, alpha)
    point = _region_epsilon(fp / outs.size, 1.0 - tp / ins.size, delta)
    point = np.where(np.isinf(point), np.finfo(float).max, point)
    order = np.lexsort((-np.arange(eps.size), point, eps))  # last key is primary
    return float(thresholds[order[-1]])
