"""Bayesian credible interval for epsilon from one threshold's counts (Zanella-Beguelin et al. 2023).

Jeffreys posteriors on the two error rates are pushed through the (epsilon, delta)
region. The result is a CREDIBLE interval under that prior, not a frequentist
confidence bound: report it apart from ``EpsilonBound`` and ``OneRunBound``.

Pure numpy/scipy, no torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from privaudit import _validate

from ._bounds import _region_epsilon

__all__ = ["BayesianEpsilon", "bayesian_epsilon_interval"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BayesianEpsilon:
    """Equal-tailed posterior credible interval for epsilon (not a confidence bound).

    Attributes:
        lower, upper: The ``alpha/2`` and ``1 - alpha/2`` posterior quantiles of epsilon.
        median: The posterior median.
        alpha: One minus the credibility.
        delta: The delta epsilon refers to.
        samples: Monte Carlo draws from the posterior.
        seed: Seed of those draws.
        method: ``"jeffreys-posterior"``.
        is_bound: Always False.
    """

    lower: float
    upper: float
    median: float
    alpha: float
    delta: float
    samples: int
    seed: int
    method: str = "jeffreys-posterior"
    is_bound: bool = dataclasses.field(default=False, init=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the I/O edge (reports, JSON)."""
        return dataclasses.asdict(self)


def bayesian_epsilon_interval(
    *,
    tp: int,
    fp: int,
    positives: int,
    negatives: int,
    delta: float,
    alpha: float = 0.05,
    samples: int = 100_000,
    seed: int = 0,
) -> BayesianEpsilon:
    """Posterior interval of epsilon at one threshold chosen in advance.

    ``FPR ~ Beta(FP + 1/2, TN + 1/2)`` and ``FNR ~ Beta(FN + 1/2, TP + 1/2)``, independent
    (Jeffreys prior), each draw mapped to ``max(log((1-delta-FNR)/FPR),
    log((1-delta-FPR)/FNR), 0)``; quantiles by Monte Carlo.

    >>> b = bayesian_epsilon_interval(tp=500, fp=5, positives=1000, negatives=1000, delta=1e-5)
    >>> 3.7 < b.lower < b.median < b.upper < 6.0
    True

    Raises:
        ValueError: on counts out of range, alpha outside (0, 1), delta outside [0, 1),
            samples < 100 or a negative seed.
    """
    _validate.integer(minimum=1, positives=positives, negatives=negatives)
    _validate.integer(tp=tp, fp=fp, seed=seed)
    _validate.integer(minimum=100, samples=samples)
    if tp > positives:
        raise ValueError(f"Expected tp={tp} in [0, positives={positives}].")
    if fp > negatives:
        raise ValueError(f"Expected fp={fp} in [0, negatives={negatives}].")
    _validate.in_range(0, 1, lo_open=True, hi_open=True, alpha=alpha)
    _validate.in_range(0, 1, hi_open=True, delta=delta)

    rng = np.random.default_rng(seed)
    fn, tn = positives - tp, negatives - fp
    # Zanella-Beguelin et al. 2023 (arXiv:2206.05199), Jeffreys posteriors of the error
    # rates pushed through the region of Kairouz et al. 2015.
    fpr = rng.beta(fp + 0.5, tn + 0.5, size=samples)
    fnr = rng.beta(fn + 0.5, tp + 0.5, size=samples)
    eps = _region_epsilon(fpr, fnr, float(delta))
    lower, median, upper = np.quantile(eps, [alpha / 2, 0.5, 1 - alpha / 2])
    return BayesianEpsilon(lower=float(lower), upper=float(upper), median=float(median),
                           alpha=alpha, delta=delta, samples=samples, seed=seed)
