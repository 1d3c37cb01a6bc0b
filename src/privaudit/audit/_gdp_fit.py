"""Gaussian-DP fit of canary scores: an ESTIMATE of epsilon, never a bound.

Nasr et al. 2023 (arXiv:2302.07956) read the privacy of DP-SGD off the
trade-off curve of the audit: if the mechanism is mu-GDP and the attack is
optimal, every threshold satisfies ``mu = Phi^-1(1 - FPR) - Phi^-1(FNR)``.
The fitted mu is then converted to epsilon at delta with the mu-GDP formula.

Pure numpy/scipy, no torch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import scipy.special

from privaudit import _validate
from privaudit.accounting._gdp_math import gdp_epsilon

from ._bounds import _as_scores, _counts_at_thresholds

__all__ = ["GdpEstimate", "gdp_fit"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GdpEstimate:
    """A point ESTIMATE of mu and epsilon: it carries no confidence level and is not a bound.

    Report it apart from ``EpsilonBound`` and ``OneRunBound``: it can exceed the true
    epsilon by chance or when the scores are not Gaussian.

    Attributes:
        mu: Fitted Gaussian-DP parameter (``inf`` for perfectly separated scores).
        epsilon: The epsilon of mu-GDP at ``delta``.
        delta: The delta epsilon is reported at.
        method: How mu was fitted.
        thresholds_used: Number of thresholds the median was taken over.
        is_bound: Always False: a reminder for readers of ``to_dict()`` output.
    """

    mu: float
    epsilon: float
    delta: float
    method: str
    thresholds_used: int
    is_bound: bool = dataclasses.field(default=False, init=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the I/O edge (reports, JSON)."""
        return dataclasses.asdict(self)


def gdp_fit(
    in_scores: Any, out_scores: Any, *, delta: float, min_count: int = 10
) -> GdpEstimate:
    """Estimate mu-GDP (and epsilon at delta) from canary scores (higher score = more likely IN).

    Estimator: the median, over every threshold that leaves at least ``min_count``
    canaries in each of TP, FP, TN and FN, of ``Phi^-1(TN/N) - Phi^-1(FN/P)``
    (Nasr et al. 2023, arXiv:2302.07956, the GDP fit of their audits; the Gaussian
    trade-off function G_mu of Dong, Roth, Su, arXiv:1905.02383, Section 2). Why this one:

    * it depends on the scores only through their ranks, so any monotone
      transform of the attack score (loss, log-loss, likelihood ratio) gives
      the same mu, unlike a mean/variance fit;
    * exactly Gaussian scores with unit variance give the same mu at every
      threshold, so the median is consistent there, and it ignores the noisy
      extreme tails (the ``min_count`` cells) and outlying thresholds.

    If the attack is reversed (IN canaries score lower) mu is reported as the
    absolute value: GDP is symmetric in IN and OUT.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> est = gdp_fit(rng.normal(1.0, 1, 5000), rng.normal(0, 1, 5000), delta=1e-5)
    >>> round(est.mu, 1), est.is_bound
    (1.0, False)

    When no threshold leaves ``min_count`` canaries in every cell (a strong
    attack on few canaries), the largest count that some threshold reaches is
    used instead and named in ``method``. Perfectly separated scores give
    ``mu = epsilon = inf``.

    Raises:
        ValueError: on empty or NaN scores, delta outside (0, 1), min_count < 1, or
            overlapping scores where no threshold leaves a canary in every cell.
    """
    ins = _as_scores("in_scores", in_scores)
    outs = _as_scores("out_scores", out_scores)
    _validate.in_range(0, 1, lo_open=True, hi_open=True, delta=delta)
    _validate.integer(minimum=1, min_count=min_count)
    p, n = ins.size, outs.size
    if ins.min() > outs.max() or outs.min() > ins.max():
        return GdpEstimate(mu=math.inf, epsilon=math.inf, delta=delta,
                           method="perfect separation", thresholds_used=0)

    _, tp, fp = _counts_at_thresholds(ins, outs)
    fn, tn = p - tp, n - fp
    cells = np.minimum(np.minimum(tp, fn), np.minimum(fp, tn))
    if cells.max() == 0:
        raise ValueError(
            "Expected in_scores and out_scores with a threshold that leaves at least one "
            "canary in each of TP, FP, TN and FN; these are too few or too tied to fit."
        )
    # Strong attacks on few canaries may leave fewer than min_count in some cell at every
    # threshold: fall back to the most central thresholds the data have.
    used = min(min_count, int(cells.max()))
    ok = cells >= used
    method = f"median over thresholds with >= {used} canaries per cell"
    # Dong, Roth, Su (arXiv:1905.02383), Section 2: G_mu(FPR) = Phi(Phi^-1(1 - FPR) - mu)
    # is the FNR of mu-GDP at FPR, so mu = Phi^-1(1 - FPR) - Phi^-1(FNR) = Phi^-1(TNR) - Phi^-1(FNR).
    mus = scipy.special.ndtri(tn[ok] / n) - scipy.special.ndtri(fn[ok] / p)
    mu = abs(float(np.median(mus)))
    return GdpEstimate(mu=mu, epsilon=gdp_epsilon(mu, delta), delta=delta, method=method,
                       thresholds_used=int(ok.sum()))
