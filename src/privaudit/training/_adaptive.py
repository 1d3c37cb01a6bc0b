"""Adaptive clipping (Andrew et al. 2021, arXiv 1905.03871), shared by DP-FedAvg and DP-SGD.

The clipping norm follows a target quantile of the norms it clips: each round
(or step) also releases a noisy count of the contributions that were not
clipped, and C moves geometrically towards the quantile. The count is a second
Gaussian query on the same people; together with the noisy sum it is one
Gaussian mechanism (`effective_noise_multiplier`), which is what the ledger
records, so the adaptive norm costs no budget beyond what the accountant sees.
"""

from __future__ import annotations

import dataclasses
import math

from .. import _validate

__all__ = ["AdaptiveClipping", "default_count_noise_std", "effective_noise_multiplier", "next_clipping_norm",
           "update_noise_multiplier"]


def effective_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """The one Gaussian mechanism that a round of adaptive clipping amounts to.

    The update sum (sensitivity S, noise sigma*S) and the count of unclipped
    clients (each contributes b - 1/2, sensitivity 1/2, noise sigma_b) are two
    Gaussian queries on the same clients; together they are the Gaussian
    mechanism with multiplier (sigma^-2 + (2 sigma_b)^-2)^(-1/2) (Andrew et al.
    2021, arXiv 1905.03871, Sec. 3).

    >>> round(effective_noise_multiplier(1.0, 10.0), 6)
    0.998752
    """
    _validate.positive(noise_multiplier=noise_multiplier, count_noise_std=count_noise_std)
    return (noise_multiplier ** -2 + (2.0 * count_noise_std) ** -2) ** -0.5


def update_noise_multiplier(total_noise_multiplier: float, count_noise_std: float) -> float:
    """The update noise sigma whose round, with count noise sigma_b, costs `total_noise_multiplier`.

    Inverts `effective_noise_multiplier`: sigma = (z^-2 - (2 sigma_b)^-2)^(-1/2), which needs 2 sigma_b > z.
    """
    _validate.positive(total_noise_multiplier=total_noise_multiplier, count_noise_std=count_noise_std)
    rest = total_noise_multiplier ** -2 - (2.0 * count_noise_std) ** -2
    if rest <= 0:
        raise ValueError(f"Expected count_noise_std={count_noise_std!r} > total_noise_multiplier / 2 = "
                         f"{total_noise_multiplier / 2:g}: the count alone would cost more than the budget "
                         "(raise count_noise_std, or the noise budget).")
    return rest ** -0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaptiveClipping:
    """Clipping norm that tracks a quantile of the norms (Andrew et al. 2021, arXiv 1905.03871, Alg. 1).

    After each round (DP-FedAvg) or step (DP-SGD), C <- C * exp(-learning_rate *
    (b - target_quantile)), where b is the noisy fraction of the clients' updates
    (or the examples' gradients) whose norm was at most C.

    Args:
        target_quantile: gamma in (0, 1), the fraction of updates to leave unclipped (0.5: the median).
        learning_rate: eta_C > 0 of the geometric update (the paper recommends 0.2).
        count_noise_std: sigma_b, the std of the noise on the count; None picks the
            paper's expected number of clients per round (or examples per batch) / 20, raised
            to 5 z where DP-SGD calibrates a total multiplier z for a target epsilon
            (`default_count_noise_std`).
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float | None = None

    def __post_init__(self) -> None:
        _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, target_quantile=self.target_quantile)
        _validate.positive(learning_rate=self.learning_rate)
        if self.count_noise_std is not None:
            _validate.positive(count_noise_std=self.count_noise_std)


#: With a calibrated total multiplier z, the automatic sigma_b is at least this times z, so that
#: the count takes little of the budget: the update's multiplier is z / sqrt(1 - (2 * 5)^-2) ~ 1.005 z.
COUNT_NOISE_PER_Z = 5.0


def default_count_noise_std(adaptive: AdaptiveClipping, expected_count: float,
                            total_noise_multiplier: float | None = None) -> float:
    """sigma_b: the configured one, or the paper's expected count / 20 (Andrew et al. 2021, Sec. 3),
    raised to `COUNT_NOISE_PER_Z` * z when a total multiplier z is given (small budgets, where
    expected count / 20 would leave the update no budget at all)."""
    if adaptive.count_noise_std is not None:
        return adaptive.count_noise_std
    _validate.positive(expected_count=expected_count)
    if total_noise_multiplier is None:
        return expected_count / 20.0
    return max(expected_count / 20.0, COUNT_NOISE_PER_Z * total_noise_multiplier)


def next_clipping_norm(clipping_norm: float, noisy_unclipped_fraction: float, adaptive: AdaptiveClipping) -> float:
    """C * exp(-eta_C * (b - gamma)) (Andrew et al. 2021, arXiv 1905.03871, Alg. 1, geometric update).

    >>> round(next_clipping_norm(1.0, 0.5, AdaptiveClipping()), 12)  # at the target quantile: unchanged
    1.0
    >>> next_clipping_norm(1.0, 1.0, AdaptiveClipping()) < 1.0  # nothing clipped: C shrinks
    True
    """
    return clipping_norm * math.exp(-adaptive.learning_rate * (noisy_unclipped_fraction - adaptive.target_quantile))
