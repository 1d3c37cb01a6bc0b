"""Rényi-DP of the mechanisms privaudit accounts for, and RDP -> (epsilon, delta).

Pure numpy/scipy functions over an array of orders; the stateful accountant is
in `rdp.py`. Every mechanism is normalised to sensitivity 1 under the
add/remove relation; a replace-one neighbour moves the query by up to 2.

>>> orders = np.array([2.0, 4.5, 32.0])
>>> rdp = 1000 * rdp_poisson_subsampled_gaussian(
...     noise_multiplier=1.0, sampling_rate=0.01, orders=orders)
>>> eps, order = epsilon_from_rdp(orders=orders, rdp=rdp, delta=1e-5)
>>> round(eps, 3), order
(3.023, 4.5)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import special

from .. import _validate

__all__ = [
    "DEFAULT_ORDERS",
    "MAX_ORDER",
    "delta_from_rdp",
    "epsilon_from_rdp",
    "rdp_gaussian",
    "rdp_laplace",
    "rdp_poisson_subsampled_gaussian",
    "rdp_sampled_without_replacement",
    "validate_orders",
]


def _default_orders() -> tuple[float, ...]:
    near_one = [1.01, 1.02, 1.03, 1.05, 1.075]
    # Opacus' default grid (1.1, 1.2, ..., 10.9 and 12, ..., 63), written the same
    # way so the floats are identical and our grid is a superset of theirs.
    fine = [1 + x / 10.0 for x in range(1, 100)]
    mid = [11 + x / 2.0 for x in range(0, 19)]  # 11, 11.5, ..., 20
    integers = list(range(12, 65))
    coarse = [72, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024]
    return tuple(sorted({float(a) for a in near_one + fine + mid + integers + coarse}))


#: 1.01 ... 20 finely (fractional and integer), then integers up to 1024.
#: A superset of Opacus' default orders.
DEFAULT_ORDERS: tuple[float, ...] = _default_orders()
#: The largest order accepted.
MAX_ORDER = 100_000.0


def validate_orders(orders: Sequence[float] | np.ndarray) -> np.ndarray:
    """Returns `orders` as a float array, or raises ValueError naming `orders`.

    Every order must be a real number in (1, MAX_ORDER]; integer orders cost time
    and memory linear in the order.
    """
    try:
        arr = np.asarray(orders, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"Expected orders to be a sequence of real numbers > 1, got {orders!r}.") from None
    if arr.size == 0:
        raise ValueError("Expected orders to hold at least one order > 1, got an empty sequence.")
    bad = arr[~(np.isfinite(arr) & (arr > 1.0) & (arr <= MAX_ORDER))]
    if bad.size:
        raise ValueError(f"Expected every order in (1, {MAX_ORDER:g}], got {float(bad[0])!r} in orders.")
    return arr


def _log_expm1(x: np.ndarray) -> np.ndarray:
    """log(exp(x) - 1) for x > 0 without overflow or cancellation."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return x + np.log(-np.expm1(-x))


# --------------------------------------------------------------------------------------
# Unsampled mechanisms
# --------------------------------------------------------------------------------------
def rdp_gaussian(*, noise_multiplier: float, orders: np.ndarray, sensitivity: float = 1.0) -> np.ndarray:
    """RDP of the Gaussian mechanism N(0, noise_multiplier^2) on a query of L2 sensitivity `sensitivity`.

    Args:
        noise_multiplier: noise standard deviation per unit of sensitivity 1.
        orders: RDP orders (> 1).
        sensitivity: 1 for add/remove, 2 for replace-one.

    Returns:
        alpha * sensitivity^2 / (2 noise_multiplier^2) at every order.
    """
    _validate.positive(noise_multiplier=noise_multiplier, sensitivity=sensitivity)
    orders = validate_orders(orders)
    # arXiv:1702.07476 (v3), Proposition 7 / Table II.
    return orders * sensitivity**2 / (2.0 * noise_multiplier**2)


def rdp_laplace(*, noise_multiplier: float, orders: np.ndarray, sensitivity: float = 1.0) -> np.ndarray:
    """RDP of the Laplace mechanism with scale `noise_multiplier` on a query of L1 sensitivity `sensitivity`.

    Args:
        noise_multiplier: Laplace scale b per unit of sensitivity 1.
        orders: RDP orders (> 1).
        sensitivity: 1 for add/remove, 2 for replace-one.

    Returns:
        The RDP at every order; it increases with the order towards sensitivity / b.
    """
    _validate.positive(noise_multiplier=noise_multiplier, sensitivity=sensitivity)
    a = validate_orders(orders)
    inv_b = sensitivity / noise_multiplier
    # arXiv:1702.07476 (v3), Proposition 6 / Table II: for alpha > 1,
    # D_alpha = log( alpha/(2alpha-1) e^{(alpha-1)/b} + (alpha-1)/(2alpha-1) e^{-alpha/b} ) / (alpha-1).
    log_sum = np.logaddexp(
        np.log(a / (2 * a - 1)) + (a - 1) * inv_b,
        np.log((a - 1) / (2 * a - 1)) - a * inv_b,
    )
    return np.clip(log_sum / (a - 1), 0.0, inv_b)


# --------------------------------------------------------------------------------------
# Poisson-subsampled Gaussian (add/remove)
# --------------------------------------------------------------------------------------
def rdp_poisson_subsampled_gaussian(
    *, noise_multiplier: float, sampling_rate: float, orders: np.ndarray
) -> np.ndarray:
    """RDP of one step of the Poisson-subsampled Gaussian mechanism (add/remove relation).

    Exact (the Rényi divergence itself, not a bound on it) at every order, integer
    or fractional, computed in log space.

    Args:
        noise_multiplier: sigma, the noise standard deviation per unit of L2 sensitivity.
        sampling_rate: q, the probability that a record joins the sample.
        orders: RDP orders (> 1).

    Returns:
        The RDP at every order.
    """
    _validate.positive(noise_multiplier=noise_multiplier)
    _validate.in_range(0.0, 1.0, sampling_rate=sampling_rate)
    orders = validate_orders(orders)
    sigma, q = float(noise_multiplier), float(sampling_rate)
    if q == 0.0:
        return np.zeros_like(orders)
    if q == 1.0:
        return rdp_gaussian(noise_multiplier=sigma, orders=orders)
    # arXiv:1908.10530 (v1), Section 3: the RDP is log(A_alpha)/(alpha-1) with
    # A_alpha = E_{z~N(0,s^2)}[(1 - q + q e^{(2z-1)/(2s^2)})^alpha]; removal (B_alpha) never exceeds it.
    out = np.empty_like(orders)
    is_int = orders == np.round(orders)
    if is_int.any():
        out[is_int] = _log_a_int(q, sigma, orders[is_int].astype(np.int64)) / (orders[is_int] - 1)
    if (~is_int).any():
        out[~is_int] = _log_a_frac(q, sigma, orders[~is_int]) / (orders[~is_int] - 1)
    return np.maximum(out, 0.0)


def _ragged(alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For integer alphas >= 2: flat (alpha, k) pairs with k = 2..alpha, and each alpha's start."""
    alphas = alphas.astype(np.int64)
    lengths = alphas - 1
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    a = np.repeat(alphas, lengths)
    k = np.arange(a.size) - np.repeat(starts, lengths) + 2
    return a, k, starts


def _log_binom_int(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """log C(a, k) for integer arrays 0 <= k <= a."""
    lg = special.gammaln(np.arange(int(a.max()) + 1, dtype=np.float64) + 1)  # lg[m] = log m!
    return lg[a] - lg[k] - lg[a - k]


def _segment_logsumexp(terms: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """logsumexp of each run terms[starts[n]:starts[n+1]] (runs non-empty and finite)."""
    peak = np.maximum.reduceat(terms, starts)
    lengths = np.diff(np.append(starts, terms.size))
    return peak + np.log(np.add.reduceat(np.exp(terms - np.repeat(peak, lengths)), starts))


def _log_a_int(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """log A_alpha at integer orders >= 2, by the binomial expansion.

    arXiv:1908.10530 (v1), Section 3.3: A_alpha = sum_k C(alpha,k) (1-q)^{alpha-k} q^k e^{(k^2-k)/(2s^2)}.
    Writing e^x = 1 + expm1(x), the k=0 and k=1 terms and every "1" sum to exactly 1,
    so log A_alpha = log1p(sum_{k>=2} C(alpha,k) (1-q)^{alpha-k} q^k expm1((k^2-k)/(2s^2))),
    a sum of positive terms that keeps full relative precision even when A_alpha - 1 is tiny.
    """
    a, k, starts = _ragged(alphas)
    kf = k.astype(np.float64)
    terms = (
        _log_binom_int(a, k)
        + kf * np.log(q)
        + (a - kf) * np.log1p(-q)
        + _log_expm1((kf * kf - kf) / (2.0 * sigma**2))
    )
    return np.logaddexp(0.0, _segment_logsumexp(terms, starts))


def _crvz_weights(n: int) -> np.ndarray:
    """Weights w_k with sum_k w_k a_k ~ sum_k (-1)^k a_k (Cohen, Rodriguez Villegas, Zagier 2000,
    "Convergence acceleration of alternating series", Algorithm 1)."""
    d = (3 + np.sqrt(8.0)) ** n
    d = (d + 1 / d) / 2
    b, c = -1.0, -d
    w = np.empty(n)
    for k in range(n):
        c = b - c
        w[k] = c / d
        b = (k + n) * (k - n) * b / ((k + 0.5) * (k + 1))
    return w


# For a Hausdorff moment sequence a_k = int_0^1 x^k dmu(x) with S = sum_k (-1)^k a_k, the
# accelerated sum with these weights is within 2 S / (3 + sqrt 8)^n <= 2 a_0 / (3 + sqrt 8)^n
# of S (ibid., Proposition 1); 40 terms make that 4.5e-31 a_0.
_CRVZ_TERMS = 40
_CRVZ_WEIGHTS = _crvz_weights(_CRVZ_TERMS)
_CRVZ_LOG_ERROR = np.log(2.0) - _CRVZ_TERMS * np.log(3 + np.sqrt(8.0))


def _log_a_frac(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """log A_alpha at fractional orders, by the two series of arXiv:1908.10530 (v1), Section 3.3.

    Split the integral at z0 = s^2 log(1/q - 1) + 1/2, where q e^{(2z-1)/(2s^2)} = 1 - q.
    Below z0 expand (1-q + qL)^alpha in powers of qL, above it in powers of (1-q):
      A = sum_i C(alpha,i) [ (1-q)^{alpha-i} q^i e^{(i^2-i)/(2s^2)} Phi((z0-i)/s)
                             + q^{alpha-i} (1-q)^i e^{(j^2-j)/(2s^2)} Phi((j-z0)/s) ],  j = alpha - i.
    The terms i < ceil(alpha) are positive and summed directly. From i = ceil(alpha) on, the
    signs alternate and the magnitudes form a Hausdorff moment sequence in i: each bracketed
    part is (1-q)^alpha E[r^i; z <= z0] or q^alpha E[L^alpha r'^i; z > z0] with ratios r, r' in
    (0, 1], and |C(alpha,i)| = (|sin pi alpha|/pi) int_0^1 t^i t^{-alpha-1}(1-t)^alpha dt for
    i > alpha; products and sums of moment sequences are moment sequences. So the slowly
    converging tail (it decays only like i^{-alpha-2} when z0 is near 0) is summed by the
    Cohen-Rodriguez Villegas-Zagier acceleration, and its error bound is added: the result is
    an upper bound on A_alpha, above it by about 1e-30 of the first tail term.
    """
    log_q, log_1mq = np.log(q), np.log1p(-q)
    z0 = sigma**2 * (log_1mq - log_q) + 0.5
    inv_2s2 = 1.0 / (2.0 * sigma**2)
    a = alphas[:, None]

    def log_terms(i: np.ndarray) -> np.ndarray:
        j = a - i
        log_coef = special.gammaln(a + 1) - special.gammaln(i + 1) - special.gammaln(j + 1)
        t0 = i * log_q + j * log_1mq + (i * i - i) * inv_2s2 + special.log_ndtr((z0 - i) / sigma)
        t1 = j * log_q + i * log_1mq + (j * j - j) * inv_2s2 + special.log_ndtr((j - z0) / sigma)
        return log_coef + np.logaddexp(t0, t1)

    first_tail = np.ceil(alphas)[:, None]
    head_i = np.arange(int(first_tail.max()), dtype=np.float64)[None, :]
    head = np.where(head_i < first_tail, log_terms(head_i), -np.inf)
    tail = log_terms(first_tail + np.arange(_CRVZ_TERMS, dtype=np.float64)[None, :])
    lead = tail[:, :1]
    tail_sum = np.exp(tail - lead) @ _CRVZ_WEIGHTS  # in (0, 1]: the tail over its first term
    log_tail = lead[:, 0] + np.log(np.maximum(tail_sum, 0.0) + np.exp(_CRVZ_LOG_ERROR))
    return np.logaddexp(special.logsumexp(head, axis=1), log_tail)


# --------------------------------------------------------------------------------------
# Sampling without replacement (replace-one)
# --------------------------------------------------------------------------------------
def rdp_sampled_without_replacement(
    *,
    sampling_rate: float,
    base_rdp: Callable[[np.ndarray], np.ndarray],
    base_pure_epsilon: float,
    orders: np.ndarray,
) -> np.ndarray:
    """RDP upper bound for a mechanism run on a uniformly random subset of fixed size (replace-one).

    Args:
        sampling_rate: gamma = sample size / dataset size, in [0, 1].
        base_rdp: maps integer orders (as floats, >= 2) to the base mechanism's
            replace-one RDP at those orders.
        base_pure_epsilon: the base mechanism's replace-one RDP at order infinity
            (its pure-DP epsilon; `inf` for the Gaussian).
        orders: RDP orders (> 1).

    Returns:
        An upper bound on the subsampled mechanism's RDP at every order.
    """
    _validate.in_range(0.0, 1.0, sampling_rate=sampling_rate)
    _validate.positive(allow_inf=True, base_pure_epsilon=base_pure_epsilon)
    orders = validate_orders(orders)
    gamma = float(sampling_rate)
    if gamma == 0.0:
        return np.zeros_like(orders)
    if gamma == 1.0:
        return np.asarray(base_rdp(orders), dtype=np.float64)
    needed = np.unique(np.concatenate([np.floor(orders), np.ceil(orders)]))
    needed = needed[needed >= 2].astype(np.int64)
    log_a = dict(zip(needed.tolist(), _wbk_log_a_int(gamma, base_rdp, base_pure_epsilon, needed)))
    out = np.empty_like(orders)
    for n, alpha in enumerate(orders):
        lo, hi = int(np.floor(alpha)), int(np.ceil(alpha))
        if lo == hi:
            out[n] = log_a[lo] / (alpha - 1)
            continue
        # arXiv:1808.00087 (v2), Corollary 10: (alpha-1) eps(alpha) is convex in alpha,
        # so the chord between neighbouring integer orders bounds it (and log A_1 = 0).
        t = alpha - lo
        out[n] = ((1 - t) * (0.0 if lo == 1 else log_a[lo]) + t * log_a[hi]) / (alpha - 1)
    return out


def _wbk_log_a_int(
    gamma: float,
    base_rdp: Callable[[np.ndarray], np.ndarray],
    eps_inf: float,
    alphas: np.ndarray,
) -> np.ndarray:
    """(alpha-1) times the bound of arXiv:1808.00087 (v2), Theorem 9, at integer alphas >= 2:

    log(1 + g^2 C(a,2) min{4(e^{e(2)}-1), e^{e(2)} min{2, (e^{e(inf)}-1)^2}}
           + sum_{j=3}^{a} g^j C(a,j) e^{(j-1)e(j)} min{2, (e^{e(inf)}-1)^j}).
    """
    top = np.arange(2, int(alphas.max()) + 1, dtype=np.float64)
    eps_j = np.asarray(base_rdp(top), dtype=np.float64)
    log_em1_inf = float(_log_expm1(eps_inf)) if np.isfinite(eps_inf) else np.inf
    inner = np.empty_like(top)  # indexed by j - 2
    inner[0] = min(
        np.log(4.0) + float(_log_expm1(eps_j[0])),
        eps_j[0] + min(np.log(2.0), 2 * log_em1_inf),
    )
    inner[1:] = (top[1:] - 1) * eps_j[1:] + np.minimum(np.log(2.0), top[1:] * log_em1_inf)
    a, j, starts = _ragged(alphas)
    terms = _log_binom_int(a, j) + j * np.log(gamma) + inner[j - 2]
    return np.logaddexp(0.0, _segment_logsumexp(terms, starts))


# --------------------------------------------------------------------------------------
# RDP -> (epsilon, delta)
# --------------------------------------------------------------------------------------
def _check_curve(orders: np.ndarray, rdp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    orders = validate_orders(orders)
    rdp = np.asarray(rdp, dtype=np.float64).reshape(-1)
    if rdp.shape != orders.shape:
        raise ValueError(f"Expected rdp to have one value per order ({orders.size}), got {rdp.size}.")
    if np.isnan(rdp).any() or (rdp < 0).any():
        raise ValueError("Expected every rdp value in [0, inf].")
    return orders, rdp


def epsilon_from_rdp(*, orders: np.ndarray, rdp: np.ndarray, delta: float) -> tuple[float, float]:
    """Smallest epsilon, over the orders, such that the RDP curve implies (epsilon, delta)-DP.

    Args:
        orders: RDP orders (> 1).
        rdp: the RDP at each order (may be inf).
        delta: target delta in (0, 1).

    Returns:
        (epsilon, the order that attains it).
    """
    _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, delta=delta)
    orders, rdp = _check_curve(orders, rdp)
    # Conversion of arXiv:2004.00010 (v4), Proposition 12 (also arXiv:1905.09982, Theorem 21):
    # eps = rdp + log(1 - 1/alpha) - (log delta + log alpha)/(alpha - 1). The looser
    # arXiv:1702.07476 (v3), Proposition 3 (eps = rdp + log(1/delta)/(alpha-1)) is kept in the tests.
    with np.errstate(invalid="ignore"):
        eps = rdp + np.log1p(-1.0 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    eps = np.where(np.isnan(eps), np.inf, eps)
    best = int(np.argmin(eps))
    # delta(0) <= TV <= sqrt(1 - e^{-KL}) <= sqrt(1 - e^{-D_alpha}) (Bretagnolle-Huber; D_alpha >= KL):
    # when that is already below delta, epsilon = 0 suffices.
    low = int(np.argmin(rdp))
    if np.sqrt(-np.expm1(-rdp[low])) <= delta:
        return 0.0, float(orders[low])
    return float(max(eps[best], 0.0)), float(orders[best])


def delta_from_rdp(*, orders: np.ndarray, rdp: np.ndarray, epsilon: float) -> tuple[float, float]:
    """Smallest delta, over the orders, such that the RDP curve implies (epsilon, delta)-DP.

    Args:
        orders: RDP orders (> 1).
        rdp: the RDP at each order (may be inf).
        epsilon: target epsilon >= 0.

    Returns:
        (delta in [0, 1], the order that attains it).
    """
    _validate.non_negative(epsilon=epsilon)
    orders, rdp = _check_curve(orders, rdp)
    # arXiv:2004.00010 (v4), Proposition 12, solved for delta:
    # log delta = (alpha - 1)(rdp - eps + log(1 - 1/alpha)) - log alpha.
    with np.errstate(invalid="ignore"):
        log_delta = (orders - 1) * (rdp - epsilon + np.log1p(-1.0 / orders)) - np.log(orders)
    log_delta = np.where(np.isnan(log_delta), np.inf, log_delta)
    best = int(np.argmin(log_delta))
    # Bretagnolle-Huber, as in epsilon_from_rdp: delta(eps) <= delta(0) <= sqrt(1 - e^{-D_alpha}).
    low = int(np.argmin(rdp))
    with np.errstate(divide="ignore"):
        log_bh = 0.5 * np.log(-np.expm1(-rdp[low]))
    if log_bh < log_delta[best]:
        return float(min(np.exp(log_bh), 1.0)), float(orders[low])
    return float(min(np.exp(log_delta[best]), 1.0)), float(orders[best])
