"""Pure math of the privacy-loss-distribution (PLD) accountant (numpy/scipy only).

Vocabulary. A *dominating pair* (P, Q) of a mechanism (Zhu, Dong & Wang 2022,
arXiv:2106.08567 v2, Def. 7) has hockey-stick divergences
``delta(eps) = H_{e^eps}(P || Q) = E_P[(1 - e^{eps - L})_+] + P(L = inf)`` at least
those of every pair of neighbouring outputs, for every real eps; dominating pairs
compose (ibid., Thm. 10), so the T-fold product of the pairs' privacy loss
``L = log dP/dQ`` bounds T adaptive steps. Its law under P is the PLD.

The pipeline, for one neighbouring direction:

1. `PrivacyProfile.delta` — the exact delta(eps) of one step's dominating pair,
   for every real eps, in closed form (log space, so eps in the hundreds works).
2. `connect_the_dots` — a discrete PLD on the grid ``eps = k*h`` whose delta
   curve is the chord interpolation of the exact one in t = e^eps (Doroshenko,
   Ghazi, Kamath, Kumar & Manurangsi 2022, arXiv:2207.04380, Sec. 3, the
   "connect the dots" algorithm). delta is convex in t, so the chords lie above
   it: a pessimistic estimate. Loss beyond the last grid point is moved to +inf.
3. `compose` — convolution of heterogeneous steps and T-fold self-composition in
   one shot, as a pointwise power of the discrete Fourier transform (the FFT
   accountant of Koskela, Jälkö & Honkela 2020, arXiv:1906.03049). The FFT window
   is chosen from Chernoff bounds on the discrete composition; probability that
   would land above the window is bounded by that Chernoff bound and *added to
   delta*, and probability below wraps round into the window (adding mass, never
   removing it).
4. `ComposedPLD.delta` / `ComposedPLD.epsilon` read the exact delta curve of the
   discrete composition (piecewise linear in e^eps), plus small allowances for
   floating-point rounding, and invert it exactly.

Compositions of un-subsampled Gaussians are mu-GDP and are done in closed form
(`gdp_delta`, `gdp_epsilon`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import fft as sp_fft
from scipy import optimize, signal, special

__all__ = [
    "ComposedPLD",
    "DiscretePLD",
    "GridTooLargeError",
    "PrivacyProfile",
    "auto_interval",
    "compose",
    "connect_the_dots",
    "gdp_delta",
    "gdp_epsilon",
    "gdp_log_delta",
]

#: Largest FFT length the accountant will use (2^24 doubles = 128 MiB per array).
MAX_FFT_SIZE = 1 << 24
#: Largest number of grid points for one step's discrete PLD.
MAX_STEP_POINTS = 1 << 23



#: Probability masses below this are moved to +inf (subnormal doubles are slow).
_TINY = 1e-300


class GridTooLargeError(ValueError):
    """The requested discretisation interval needs more memory than allowed."""


# --------------------------------------------------------------------------------------
# small numerics
# --------------------------------------------------------------------------------------
def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 - e^x) for x <= 0, accurate on the whole range (Maechler 2012)."""
    x = np.asarray(x, dtype=float)
    out = np.full_like(x, -np.inf)
    small = x > -math.log(2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[small] = np.log(-np.expm1(x[small]))
        big = (~small) & (x < 0)
        out[big] = np.log1p(-np.exp(x[big]))
    return out


def _log_expm1_over_q(eps: np.ndarray, log_q: float) -> np.ndarray:
    """log(1 + (e^eps - 1)/q) for eps >= 0, without overflow for large eps."""
    eps = np.asarray(eps, dtype=float)
    q = math.exp(log_q)
    out = np.empty_like(eps)
    low = eps < 1.0
    out[low] = np.log1p(np.expm1(eps[low]) / q)
    hi = ~low
    # e^eps - 1 + q = e^eps (1 - (1-q) e^-eps)
    out[hi] = eps[hi] - log_q + np.log1p(-(1.0 - q) * np.exp(-eps[hi]))
    return out


# --------------------------------------------------------------------------------------
# closed form: mu-GDP
# --------------------------------------------------------------------------------------
def gdp_log_delta(epsilon: np.ndarray | float, mu: float) -> np.ndarray:
    """log delta(eps) of mu-GDP, i.e. of the pair (N(mu, 1), N(0, 1)).

    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)
    (Dong, Roth & Su 2019, arXiv:1905.02383 v3, Cor. 2.13; Balle & Wang 2018,
    arXiv:1805.06530, Thm. 8), evaluated as
    log Phi(a) + log(1 - exp(eps + log Phi(b) - log Phi(a))) so that it keeps full
    relative precision when delta is tiny and eps is large (eps ~ 1000 works).
    """
    eps = np.asarray(epsilon, dtype=float)
    a = -eps / mu + mu / 2.0
    b = -eps / mu - mu / 2.0
    la = special.log_ndtr(a)
    lb = special.log_ndtr(b)
    return la + _log1mexp(np.minimum(eps + lb - la, 0.0))


def gdp_delta(epsilon: float, mu: float) -> float:
    """delta(eps) of mu-GDP for any real eps (eps < 0 by the same formula)."""
    if mu == 0.0:
        return max(0.0, -math.expm1(epsilon))
    if epsilon >= 0:
        return float(np.exp(gdp_log_delta(epsilon, mu)))
    # The pair is symmetric: delta(eps) = 1 - e^eps + e^eps delta(-eps).
    return float(-math.expm1(epsilon) + math.exp(epsilon + float(gdp_log_delta(-epsilon, mu))))


def gdp_epsilon(delta: float, mu: float) -> float:
    """Smallest eps >= 0 with delta(eps) <= `delta` for mu-GDP (root of log delta)."""
    if mu == 0.0:
        return 0.0
    log_target = math.log(delta)
    if float(gdp_log_delta(0.0, mu)) <= log_target:
        return 0.0

    def f(e: float) -> float:
        return float(gdp_log_delta(e, mu)) - log_target

    hi = max(1.0, mu * mu)
    while f(hi) > 0:
        hi *= 2.0
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500))


# --------------------------------------------------------------------------------------
# single-step privacy profiles
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PrivacyProfile:
    """The dominating pair of one step of an additive-noise mechanism.

    The base pair is B_s = noise centred at `shift` against B_0 = noise centred at 0
    (`noise` "gaussian" with standard deviation `scale`, or "laplace" with scale
    `scale`). With sampling rate q the pair is, by `kind`:

    * "remove": P = (1-q) B_0 + q B_s, Q = B_0 — Poisson subsampling, the record is
      in the first dataset (Zhu, Dong & Wang 2022, arXiv:2106.08567 v2, Thm. 11).
    * "add": P = B_0, Q = (1-q) B_0 + q B_s — the record is in the second dataset
      (same theorem).
    * "symmetric": the pair whose delta(eps) is that of "remove" for eps >= 0 and,
      for eps < 0, the reflection 1 - e^eps + e^eps delta(-eps). It dominates a
      symmetric neighbouring relation whose every ordered pair has
      H_{e^eps} <= delta_remove(eps) for eps >= 0: for eps < 0 any pair obeys
      H_a(A||B) = 1 - a + a H_{1/a}(B||A), and (B, A) are neighbours too. With
      q = 1 it is the plain base pair, which is symmetric.
    """

    noise: str
    scale: float
    shift: float = 1.0
    sampling_rate: float = 1.0
    kind: str = "symmetric"

    def __post_init__(self) -> None:
        if self.noise not in ("gaussian", "laplace"):
            raise ValueError(f"Expected noise={self.noise!r} in ['gaussian', 'laplace'].")
        if self.kind not in ("remove", "add", "symmetric"):
            raise ValueError(f"Expected kind={self.kind!r} in ['remove', 'add', 'symmetric'].")
        if not (self.scale > 0 and self.shift > 0 and 0 < self.sampling_rate <= 1):
            raise ValueError(f"Invalid profile parameters: {self!r}.")

    # -- exact hockey-stick divergences -----------------------------------------------
    def _log_delta_base(self, eps: np.ndarray) -> np.ndarray:
        """log H_{e^eps}(B_s || B_0) for eps >= 0 (the base pair is symmetric)."""
        if self.noise == "gaussian":
            return gdp_log_delta(eps, self.shift / self.scale)
        # Laplace: L = (|x| - |x - s|)/b in [-r, r], r = s/b; integrating the two
        # densities over {L > eps} gives delta(eps) = 1 - exp((eps - r)/2), 0 <= eps < r.
        r = self.shift / self.scale
        out = np.full_like(eps, -np.inf)
        inside = eps < r
        with np.errstate(divide="ignore"):
            out[inside] = np.log(-np.expm1((eps[inside] - r) / 2.0))
        return out

    def _log_delta_remove(self, eps: np.ndarray) -> np.ndarray:
        q = self.sampling_rate
        if q == 1.0:
            return self._log_delta_base(eps)
        # H_{e^eps}((1-q) B_0 + q B_s || B_0) = q H_{e^eps'}(B_s || B_0) with
        # e^eps' = 1 + (e^eps - 1)/q: advanced joint convexity with mu_1' = mu_0
        # (Balle, Barthe & Gaboardi 2018, arXiv:1807.01647 v2, Thm. 2).
        log_q = math.log(q)
        return log_q + self._log_delta_base(_log_expm1_over_q(eps, log_q))

    def _log_delta_add(self, eps: np.ndarray) -> np.ndarray:
        q = self.sampling_rate
        if q == 1.0:
            return self._log_delta_base(eps)
        # H_a(B_0 || (1-q) B_0 + q B_s) = k H_{a q / k}(B_0 || B_s) with k = 1 - a (1-q)
        # (expand (B_0 - a(1-q) B_0 - a q B_s)_+ = k (B_0 - (a q/k) B_s)_+), zero once
        # k <= 0, i.e. eps >= -log(1-q); H(B_0||B_s) = H(B_s||B_0) by reflection.
        out = np.full_like(eps, -np.inf)
        log_k = np.full_like(eps, -np.inf)
        with np.errstate(over="ignore"):
            arg = -(1.0 - q) * np.exp(eps)
        ok = arg > -1.0
        log_k[ok] = np.log1p(arg[ok])
        ok &= np.isfinite(log_k)
        if np.any(ok):
            eps2 = eps[ok] + math.log(q) - log_k[ok]
            out[ok] = log_k[ok] + self._log_delta_base(np.maximum(eps2, 0.0))
        return out

    def log_delta_nonneg(self, eps: np.ndarray, *, reverse: bool = False) -> np.ndarray:
        """log H_{e^eps}(P||Q) (or (Q||P) if `reverse`) for eps >= 0."""
        eps = np.asarray(eps, dtype=float)
        if self.kind == "symmetric" or self.sampling_rate == 1.0:
            return self._log_delta_remove(eps)
        use_remove = (self.kind == "remove") != reverse
        return self._log_delta_remove(eps) if use_remove else self._log_delta_add(eps)

    def delta(self, eps: np.ndarray) -> np.ndarray:
        """H_{e^eps}(P || Q) for every real eps (vectorised)."""
        eps = np.asarray(eps, dtype=float)
        out = np.empty_like(eps)
        pos = eps >= 0
        out[pos] = np.exp(self.log_delta_nonneg(eps[pos]))
        neg = ~pos
        if np.any(neg):
            e = eps[neg]
            # delta(eps) = 1 - e^eps + e^eps delta_reverse(-eps) for eps < 0.
            out[neg] = -np.expm1(e) + np.exp(e + self.log_delta_nonneg(-e, reverse=True))
        return out

    def tail_point(self, tail_mass: float, *, reverse: bool = False) -> float:
        """An eps >= 0 with delta(eps) <= `tail_mass`, within 0.1 % of the smallest one."""
        log_t = math.log(tail_mass)
        if self.log_delta_nonneg(np.zeros(1), reverse=reverse)[0] <= log_t:
            return 0.0
        # Bracket on a geometric grid, then refine the bracket twice (vectorised).
        grid = np.ldexp(1.0, np.arange(-30, 24))
        ok = self.log_delta_nonneg(grid, reverse=reverse) <= log_t
        if not ok.any():  # pragma: no cover - unreachable for valid parameters
            raise ValueError(f"Cannot bound the privacy loss of {self!r}.")
        j = int(np.argmax(ok))
        lo, hi = (0.0 if j == 0 else grid[j - 1]), grid[j]
        for _ in range(2):
            pts = np.linspace(lo, hi, 33)
            ok = self.log_delta_nonneg(pts, reverse=reverse) <= log_t
            j = int(np.argmax(ok))
            lo, hi = pts[max(j - 1, 0)], pts[j]
        return float(hi)

    # -- moments (only used to pick the discretisation interval) ----------------------
    def loss_variance(self) -> float:
        """Variance of the privacy loss under P (numerical integration over the output)."""
        return _loss_variance(self)

    def _loss_variance(self) -> float:
        if self.noise == "gaussian" and (self.sampling_rate == 1.0):
            mu = self.shift / self.scale
            return mu * mu  # L ~ N(mu^2/2, mu^2)
        s, b, q = self.shift, self.scale, self.sampling_rate
        width = 14.0 * b if self.noise == "gaussian" else 40.0 * b
        x = np.linspace(min(0.0, s) - width, max(0.0, s) + width, 40_001)
        if self.noise == "gaussian":
            log_ratio = (2.0 * s * x - s * s) / (2.0 * b * b)
            p0 = np.exp(-0.5 * (x / b) ** 2)
            ps = np.exp(-0.5 * ((x - s) / b) ** 2)
        else:
            log_ratio = (np.abs(x) - np.abs(x - s)) / b
            p0 = np.exp(-np.abs(x) / b)
            ps = np.exp(-np.abs(x - s) / b)
        if q == 1.0:
            loss_remove = log_ratio
        else:
            loss_remove = np.logaddexp(math.log1p(-q), math.log(q) + log_ratio)
        p_remove = (1.0 - q) * p0 + q * ps
        if self.kind == "add" and q < 1.0:
            w, loss = p0, -np.logaddexp(math.log1p(-q), math.log(q) + log_ratio)
            m1 = np.trapezoid(w * loss, x) / np.trapezoid(w, x)
            m2 = np.trapezoid(w * loss * loss, x) / np.trapezoid(w, x)
        elif self.kind == "remove" or q == 1.0:
            w, loss = p_remove, loss_remove
            m1 = np.trapezoid(w * loss, x) / np.trapezoid(w, x)
            m2 = np.trapezoid(w * loss * loss, x) / np.trapezoid(w, x)
        else:  # symmetric: omega(-l) = e^{-l} omega(l) for l > 0
            z = np.trapezoid(p_remove, x)
            lp = np.where(loss_remove > 0, loss_remove, 0.0)
            m1 = np.trapezoid(p_remove * lp * (-np.expm1(-lp)), x) / z
            m2 = np.trapezoid(p_remove * lp * lp * (1.0 + np.exp(-lp)), x) / z
        return float(max(m2 - m1 * m1, 0.0))


@functools.lru_cache(maxsize=1024)
def _loss_variance(profile: PrivacyProfile) -> float:
    return profile._loss_variance()


# --------------------------------------------------------------------------------------
# discretisation
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DiscretePLD:
    """Probability `pmf[i]` at privacy loss ``(offset + i) * h``, plus `inf_mass` at +inf."""

    h: float
    offset: int
    pmf: np.ndarray
    inf_mass: float

    def losses(self) -> np.ndarray:
        return (self.offset + np.arange(self.pmf.size)) * self.h


def connect_the_dots(profile: PrivacyProfile, h: float, *, tail_mass: float) -> DiscretePLD:
    """Pessimistic discrete PLD on the grid ``k*h`` (Doroshenko et al. 2022, arXiv:2207.04380).

    With grid points eps_0 < ... < eps_n, t_i = e^{eps_i} and d_i = delta(eps_i), the
    discrete delta curve is the piecewise-linear interpolation in t of the points
    (0, 1), (t_0, d_0), ..., (t_n, d_n), constant d_n beyond t_n (ibid., Sec. 3;
    it dominates because delta is convex in t). The mass at eps_i is t_i
    times the jump of the slope there; with D_i = d_{i+1} - d_i this is
    omega_i = (D_i - D_{i-1})/(e^h - 1) - D_{i-1}, omega_0 = D_0/(e^h - 1) + 1 - d_0,
    omega_n = -e^h D_{n-1}/(e^h - 1) and the mass at +inf is d_n.
    The grid spans [-u', u] where delta_reverse(u') and delta(u) are at most
    `tail_mass`; loss above u is counted as +inf.
    """
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"Expected h={h!r} in (0, inf).")
    hi = profile.tail_point(tail_mass)
    lo = -profile.tail_point(tail_mass, reverse=True)
    k_lo = math.floor(lo / h)
    k_hi = max(math.ceil(hi / h), k_lo + 1)
    n = k_hi - k_lo + 1
    if n > MAX_STEP_POINTS:
        raise GridTooLargeError(
            f"value_discretization_interval={h!r} needs {n} grid points for one step "
            f"(limit {MAX_STEP_POINTS}); use a larger interval."
        )
    eps = np.arange(k_lo, k_hi + 1, dtype=float) * h
    d = profile.delta(eps)
    diff = np.diff(d)
    em1 = math.expm1(h)
    pmf = np.empty(n)
    pmf[0] = diff[0] / em1 + (1.0 - d[0])
    pmf[1:-1] = (diff[1:] - diff[:-1]) / em1 - diff[:-1]
    pmf[-1] = -math.exp(h) * diff[-1] / em1
    # Rounding can leave masses of order 1e-17 slightly negative; zero them
    # (adding, never removing, probability). Masses below 1e-300 (subnormal
    # numbers slow the FFT down tenfold) move to +inf, which is pessimistic.
    np.maximum(pmf, 0.0, out=pmf)
    tiny = pmf < _TINY
    inf_mass = float(d[-1]) + float(np.sum(pmf[tiny]))
    pmf[tiny] = 0.0
    nz = np.flatnonzero(pmf)
    if nz.size == 0:  # pragma: no cover - delta(eps) >= 1 - e^eps forbids it
        raise ValueError(f"Degenerate privacy loss distribution for {profile!r}.")
    first, last = int(nz[0]), int(nz[-1])
    return DiscretePLD(h=h, offset=k_lo + first, pmf=pmf[first : last + 1].copy(), inf_mass=inf_mass)


def auto_interval(
    leaves: Sequence[tuple[PrivacyProfile, int]],
    *,
    rel_error: float = 2e-4,
    max_interval: float = 1e-4,
    max_points: int = 1 << 21,
) -> float:
    """Discretisation interval h for composing `leaves` ((profile, count) pairs).

    Connect-the-dots keeps E[e^-L] and moves each step's mass at most one grid cell,
    adding at most ~h^2/4 to the step's loss variance and ~h^2/8 to its mean. Over T
    steps with total loss variance V the shift is ~T h^2/8 and epsilon moves by about
    that plus the change in the spread; asking both to stay below `rel_error`
    times the spread sqrt(V) (the scale of epsilon for a fixed delta) gives
    h_rel = sqrt(4 rel_error / T) * min(sqrt(V), sqrt(2) V^(1/4)).

    The result is min(h_rel, `max_interval`), except that when the composed loss
    (about 20 sqrt(V) wide) would need more than `max_points` grid points at
    `max_interval`, h may grow up to h_rel, and that one step never gets more than
    `max_points` points (a very narrow loss with a long tail, e.g. q = 1e-6: then
    the result is less tight than `rel_error` asks, but still an upper bound).
    It is always `max_interval` * 2^k for an integer k, so grids nest: a grid
    that contains a coarser one is never looser.
    """
    total = sum(c for _, c in leaves)
    var = sum(c * p.loss_variance() for p, c in leaves)
    if total == 0 or var <= 0:
        return max_interval
    h_rel = math.sqrt(4.0 * rel_error / total) * min(math.sqrt(var), math.sqrt(2.0) * var**0.25)
    cap = max(max_interval, 20.0 * math.sqrt(var) / max_points)
    span = max(p.tail_point(1e-20) + p.tail_point(1e-20, reverse=True) for p, _ in leaves)
    k_accuracy = math.floor(math.log2(min(h_rel, cap) / max_interval))
    k_points = math.ceil(math.log2(span / max_points / max_interval))
    return max_interval * 2.0 ** max(k_accuracy, k_points)


# --------------------------------------------------------------------------------------
# composition
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ComposedPLD:
    """A composed discrete PLD, ready to answer delta(eps) and eps(delta) for eps >= 0.

    `pmf[i]` is at loss ``(offset + i) * h`` with ``offset >= 0``: mass at negative
    loss is dropped, as it never counts towards delta(eps) for eps >= 0.
    `extra_delta` = mass at +inf plus the Chernoff bound on mass above the window.
    Floating-point allowances: delta(eps) is the exact sum for `pmf`, plus
    `rel_noise` times the mass above eps (relative rounding of the FFT and of the
    powers), plus `noise` (the FFT's absolute rounding noise per entry) once for
    every entry above eps.
    `tail_above[i]` = sum of pmf beyond index i; `tilted[i]` = sum over j > i of
    pmf[j] exp(loss_i - loss_j).
    """

    h: float
    offset: int
    pmf: np.ndarray
    extra_delta: float
    noise: float
    rel_noise: float
    tail_above: np.ndarray
    tilted: np.ndarray

    @classmethod
    def from_pmf(
        cls,
        h: float,
        offset: int,
        pmf: np.ndarray,
        extra_delta: float,
        noise: float = 0.0,
        rel_noise: float = 0.0,
    ) -> ComposedPLD:
        if offset < 0:
            pmf, offset = pmf[-offset:], 0
        if pmf.size == 0:
            pmf = np.zeros(1)
        rev = pmf[::-1]
        tail_above = np.cumsum(rev)[::-1]
        np.subtract(tail_above, pmf, out=tail_above)
        np.maximum(tail_above, 0.0, out=tail_above)
        # g_i = pmf_i + e^-h g_{i+1}: a stable first-order recursion, run as a filter.
        tilted = signal.lfilter([1.0], [1.0, -math.exp(-h)], rev)[::-1]
        np.subtract(tilted, pmf, out=tilted)
        np.maximum(tilted, 0.0, out=tilted)
        return cls(h, offset, pmf, extra_delta, noise, rel_noise, tail_above, tilted)

    def delta(self, epsilon: float, *, allowance: bool = True) -> float:
        """delta(eps), eps >= 0, of the discrete composition (an upper bound for the mechanism).

        With `allowance` False: the exact sum over `pmf` plus `extra_delta`, without
        the floating-point allowances.
        """
        h, n = self.h, self.pmf.size
        pos = math.floor(epsilon / h) - self.offset
        if pos >= n - 1:
            return min(1.0, self.extra_delta)
        if pos < 0:
            losses = (self.offset + np.arange(n)) * h
            body = float(np.sum(self.pmf * -np.expm1(epsilon - losses)))
            mass, above = float(np.sum(self.pmf)), n
        else:
            loss = (self.offset + pos) * h
            body = float(self.tail_above[pos] - math.exp(epsilon - loss) * self.tilted[pos])
            mass, above = float(self.tail_above[pos]), n - 1 - pos
        body = max(body, 0.0)
        if allowance:
            body += self.rel_noise * mass + self.noise * above
        return min(1.0, body + self.extra_delta)

    def epsilon(self, delta: float) -> float:
        """Smallest eps >= 0 with delta(eps) <= `delta` (+inf if none)."""
        target = delta - self.extra_delta
        if target <= 0:
            return math.inf
        h, n = self.h, self.pmf.size
        # allowance at eps in [loss_i, loss_{i+1}): rel_noise * tail_above_i + noise * (n-1-i)
        margin = self.rel_noise * self.tail_above + self.noise * np.arange(n - 1, -1, -1.0)
        at_grid = self.tail_above - self.tilted + margin  # delta at eps = loss_i
        # Made non-increasing from the right (rounding could break it), then the
        # first index from which delta stays <= target.
        mono = np.maximum.accumulate(at_grid[::-1])[::-1]
        idx = int(np.argmax(mono <= target))
        if idx == 0:
            if self.offset == 0:
                return 0.0
            # Below the window, delta(eps) = sum p (1 - e^{eps - l}) + allowance.
            losses = (self.offset + np.arange(n)) * h
            ref = losses[0]
            total = float(np.sum(self.pmf))
            goal = target - self.rel_noise * total - self.noise * n
            scaled = float(np.sum(self.pmf * np.exp(ref - losses)))  # e^ref * E[e^-L]
            if total <= goal:
                return 0.0
            return max(0.0, ref + math.log((total - goal) / scaled))
        i = idx - 1
        loss = (self.offset + i) * h
        # On [loss_i, loss_{i+1}]: delta(eps) = tail_above_i - e^{eps - loss_i} tilted_i + margin_i.
        if self.tilted[i] <= 0:
            return loss
        return loss + math.log(max(self.tail_above[i] + margin[i] - target, 0.0) / self.tilted[i])


def _cumulant(pld: DiscretePLD, lam: np.ndarray, *, blocks: int | None = None) -> np.ndarray:
    """log E[e^{lam L}] over the finite part of `pld`, for each entry of `lam` (one sign).

    Exact when `blocks` is None. Otherwise the pmf is merged into at most `blocks`
    blocks, each placed at its largest loss when lam > 0 and its smallest when
    lam < 0, which can only increase the value (cheap, and still conservative).
    """
    p, loss = pld.pmf, pld.losses()
    if blocks is not None and p.size > blocks:
        stride = -(-p.size // blocks)
        pad = (-p.size) % stride
        mass = np.concatenate([p, np.zeros(pad)]).reshape(-1, stride).sum(axis=1)
        start = loss[0] + np.arange(mass.size) * stride * pld.h
        loss = start + ((stride - 1) * pld.h if lam[0] > 0 else 0.0)
        p = mass
    keep = p > 0
    p, loss = p[keep], loss[keep]
    v = np.log(p)[None, :] + lam[:, None] * loss[None, :]
    top = v.max(axis=1)
    return top + np.log(np.exp(v - top[:, None]).sum(axis=1))


def _variance(pld: DiscretePLD) -> float:
    """Variance of the finite part of `pld` (normalised)."""
    loss = pld.losses()
    w = pld.pmf / np.sum(pld.pmf)
    m = float(np.sum(w * loss))  # not np.dot: BLAS threads stall on a busy machine
    return float(np.sum(w * (loss - m) ** 2))


def _chernoff_bound(
    leaves: Sequence[tuple[DiscretePLD, int]], log_tail: float, *, upper: bool, var: float
) -> float:
    """A point beyond which the composition has probability at most e^log_tail.

    upper: b with P(S > b) <= exp(K(lam) - lam b) <= e^log_tail; otherwise a with
    P(S < a) <= exp(K(-lam) + lam a) <= e^log_tail, for lam > 0 and K the cumulant
    of the discrete composition (Chernoff). lam is located on a wide grid round the
    Gaussian optimum sqrt(2 log(1/tail)/var) with a cheap conservative cumulant,
    and the point is then computed from the exact cumulant near the located lam.
    """
    sign = 1.0 if upper else -1.0

    def point(lam: np.ndarray, blocks: int | None) -> np.ndarray:
        k = np.zeros_like(lam)
        for pld, count in leaves:
            k += count * _cumulant(pld, sign * lam, blocks=blocks)
        return sign * (k - log_tail) / lam  # b(lam), or a(lam) when not upper

    lam0 = math.sqrt(-2.0 * log_tail / max(var, 1e-300))
    lam = lam0 * 2.0 ** np.arange(-12.0, 12.5)
    best = lam[int(np.argmin(sign * point(lam, 1024)))]
    exact = point(best * 2.0 ** np.array([-0.25, 0.0, 0.25]), None)
    return float(np.min(exact) if upper else np.max(exact))


def compose(
    leaves: Sequence[tuple[DiscretePLD, int]],
    *,
    tail_mass: float = 1e-18,
    wrap_mass: float = 1e-12,
    truncate: bool = True,
) -> ComposedPLD:
    """Composes `count` copies of every discrete PLD in `leaves` (all on one grid h).

    The FFT has length N covering a window [a, b] of the composed loss. Circular
    convolution of the (aliased) steps equals the aliased linear convolution, so
    each leaf costs one FFT and one pointwise power, whatever its count (Koskela
    et al. 2020, arXiv:1906.03049). Mass below a wraps into the window
    (only adding mass, at most `wrap_mass`); mass above b is bounded by the
    Chernoff bound min_lam E[e^{lam L}]^T e^{-lam b} <= `tail_mass` and that bound
    is added to delta. When the window covers the whole support (always, if
    `truncate` is False) no bound is needed.
    """
    leaves = [(p, int(c)) for p, c in leaves if c > 0]
    if not leaves:
        raise ValueError("Expected at least one leaf to compose.")
    h = leaves[0][0].h
    if any(p.h != h for p, _ in leaves):
        raise ValueError("All discrete PLDs must share one grid interval h.")
    log_survive = 0.0
    for p, c in leaves:
        log_survive += c * math.log1p(-p.inf_mass) if p.inf_mass < 1.0 else -math.inf
    inf_mass = -math.expm1(log_survive)

    full_lo = sum(c * p.offset for p, c in leaves)
    full_hi = sum(c * (p.offset + p.pmf.size - 1) for p, c in leaves)
    extra = inf_mass
    k_lo, k_hi = full_lo, full_hi
    if truncate and full_hi - full_lo + 1 > max(4096, 2 * max(p.pmf.size for p, _ in leaves)):
        var = sum(c * _variance(p) for p, c in leaves)
        b = _chernoff_bound(leaves, math.log(tail_mass), upper=True, var=var)
        if math.ceil(b / h) < full_hi:
            k_hi = math.ceil(b / h)
            extra += tail_mass
        a = _chernoff_bound(leaves, math.log(wrap_mass), upper=False, var=var)
        k_lo = min(max(full_lo, math.floor(a / h)), k_hi - 1)
    size = k_hi - k_lo + 1
    if size > MAX_FFT_SIZE:
        raise GridTooLargeError(
            f"The composition needs an FFT of length {size} at interval h={h!r} "
            f"(limit {MAX_FFT_SIZE}); use a larger value_discretization_interval."
        )
    n_fft = sp_fft.next_fast_len(size, real=True)
    spectrum = np.ones(n_fft // 2 + 1, dtype=complex)
    for pld, count in leaves:
        idx = (pld.offset + np.arange(pld.pmf.size)) % n_fft
        z = sp_fft.rfft(np.bincount(idx, weights=pld.pmf, minlength=n_fft))
        if count > 1:
            # Powers below 1e-300 are zero to double precision: skip computing them.
            alive = np.abs(z) > math.exp(-690.0 / count)
            z[~alive] = 0.0
            z[alive] = z[alive] ** count
        spectrum *= z
    comp = sp_fft.irfft(spectrum, n=n_fft)
    comp = np.roll(comp, -(k_lo % n_fft))
    # True masses are >= 0, so the most negative entry measures the absolute
    # rounding noise of the FFT. Relative rounding grows with the powers taken
    # (z^T carries ~T ulps) and the FFT depth. Both become allowances on delta.
    noise = max(0.0, -float(comp.min()))
    rel_noise = 32.0 * (sum(c for _, c in leaves) + math.log2(n_fft)) * np.finfo(float).eps
    tiny = comp < _TINY  # rounding noise below zero, and subnormal masses
    extra += float(np.sum(np.maximum(comp[tiny], 0.0)))  # dropped mass counts as +inf
    comp[tiny] = 0.0
    return ComposedPLD.from_pmf(h, k_lo, comp, min(extra, 1.0), noise, rel_noise)
