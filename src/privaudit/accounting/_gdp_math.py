"""mu-Gaussian DP: the (epsilon, delta) curve of mu-GDP, and the CLT mu of Poisson-subsampled Gaussians.

`gdp_delta` and `gdp_epsilon` are exact conversions for a mechanism that *is* mu-GDP
(the Gaussian mechanism, or the estimate of an audit). `poisson_gaussian_mu` is the
central-limit approximation of Bu, Dong, Long, Su and is not a bound.

>>> round(gdp_delta(1.0, 1.0), 6)
0.126937
>>> round(gdp_epsilon(1.0, gdp_delta(1.0, 1.0)), 9)
1.0
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special

from .. import _validate

__all__ = ["gdp_delta", "gdp_epsilon", "poisson_gaussian_mu"]


def _log_delta(mu: float, epsilon: float) -> float:
    """log delta(epsilon) of mu-GDP, for mu > 0; -inf where delta underflows."""
    # arXiv:1905.02383, Corollary 2.13: mu-GDP is (eps, delta(eps))-DP for all eps >= 0 with
    # delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2). In logs, with
    # lb - la < 0: log delta = la + log(1 - e^{lb - la}).
    la = special.log_ndtr(-epsilon / mu + mu / 2)
    lb = epsilon + special.log_ndtr(-epsilon / mu - mu / 2)
    diff = lb - la
    if not diff < 0:  # the two terms agree to rounding: delta is below double precision
        return -math.inf
    return float(la + np.log(-np.expm1(diff)))


def gdp_delta(mu: float, epsilon: float) -> float:
    """Smallest delta such that mu-GDP implies (epsilon, delta)-DP.

    Args:
        mu: the GDP parameter, >= 0 (0 means perfectly private).
        epsilon: >= 0.

    Returns:
        delta in [0, 1]; stable in log space for mu up to several hundred.

    >>> gdp_delta(0.0, 0.5)
    0.0
    """
    _validate.non_negative(mu=mu, epsilon=epsilon)
    if mu == 0:
        return 0.0
    return float(min(math.exp(_log_delta(float(mu), float(epsilon))), 1.0))


def gdp_epsilon(mu: float, delta: float) -> float:
    """Smallest epsilon >= 0 such that mu-GDP implies (epsilon, delta)-DP.

    Args:
        mu: the GDP parameter, >= 0.
        delta: target delta in (0, 1).

    Returns:
        epsilon, found by root-finding on the monotone log delta(epsilon).
    """
    _validate.non_negative(mu=mu)
    _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, delta=delta)
    mu, log_target = float(mu), math.log(delta)
    if mu == 0 or _log_delta(mu, 0.0) <= log_target:
        return 0.0
    # delta(eps) < Phi(-eps/mu + mu/2), which equals delta at eps_hi: a bracket for the root.
    eps_hi = mu * mu / 2 - mu * float(special.ndtri(delta))
    if _log_delta(mu, eps_hi) > log_target:  # pragma: no cover - guaranteed by the inequality
        raise ArithmeticError(f"Failed to bracket the epsilon of mu={mu} at delta={delta}.")
    return float(
        optimize.brentq(
            lambda e: _log_delta(mu, e) - log_target, 0.0, eps_hi, xtol=1e-13, rtol=4 * np.finfo(float).eps
        )
    )


def poisson_gaussian_mu(*, noise_multiplier: float, sampling_rate: float, steps: int) -> float:
    """CLT estimate of mu for `steps` Poisson-subsampled Gaussian steps (an approximation, not a bound).

    Args:
        noise_multiplier: sigma > 0.
        sampling_rate: q in [0, 1].
        steps: T >= 0.

    Returns:
        mu = q sqrt(T (e^{1/sigma^2} - 1)).
    """
    _validate.positive(noise_multiplier=noise_multiplier)
    _validate.in_range(0.0, 1.0, sampling_rate=sampling_rate)
    _validate.integer(minimum=0, steps=steps)
    # arXiv:1911.11607 (Bu, Dong, Long, Su 2019), the central limit theorem for NoisySGD with
    # Poisson subsampling: T steps are asymptotically mu-GDP as T -> inf with q sqrt(T) fixed.
    return float(sampling_rate * math.sqrt(steps * math.expm1(noise_multiplier**-2)))
