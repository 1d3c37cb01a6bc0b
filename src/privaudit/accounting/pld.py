"""The privacy-loss-distribution accountant: privaudit's default, tight accountant.

>>> from privaudit.accounting import PLDAccountant, dpsgd_event
>>> acct = PLDAccountant().compose(dpsgd_event(1.0, 1000, sampling_rate=0.01))
>>> round(acct.get_epsilon(1e-5), 3)
1.828

Every reported epsilon (delta) is an upper bound on the true value: each step is
replaced by a pessimistic discrete privacy loss distribution ("connect the dots",
Doroshenko et al. 2022, arXiv:2207.04380), steps are composed by FFT (Koskela et
al. 2020, arXiv:1906.03049), and any probability that leaves the grid is counted as
infinite loss. Compositions of un-subsampled Gaussians are computed in closed form
(mu-GDP, Dong, Roth & Su 2019, arXiv:1905.02383 v3, Cor. 2.13 and Cor. 3.3).
The math lives in `_pld_math`; this module maps events to dominating pairs.

Sensitivity convention (as in dp_accounting). `GaussianEvent(sigma)` and
`LaplaceEvent(b)` add noise to a sum in which each record contributes a vector of
norm at most 1 (L2 for Gaussian, L1 for Laplace). Adding or removing a record moves
the sum by at most 1; replacing one moves it by at most 2.

Supported leaves and the dominating pairs used (B_s = the noise centred at s):

=====================================  ==============================  =============================
leaf                                   add_remove                      replace_one
=====================================  ==============================  =============================
Gaussian / Laplace                     (B_1, B_0)                      (B_2, B_0)
PoissonSampled(q, Gaussian|Laplace)    remove ((1-q)B_0 + qB_1, B_0)   symmetrised ((1-q)B_0 + qB_2,
                                       and add (B_0, (1-q)B_0 + qB_1)  B_0), see below
SampledWithoutReplacement(n, m, ...)   not supported                   as above with q = m/n
=====================================  ==============================  =============================

Add/remove: the two directions are composed separately and the larger delta is
reported (a fixed ordered pair of neighbours stays in one direction for every
step; Zhu, Dong & Wang 2022, arXiv:2106.08567 v2, Thm. 10 and Thm. 11).

Replace-one with subsampling: write each step's outputs as (1-q) mu_0 + q mu_1 and
(1-q) mu_0 + q mu_1', where mu_0 leaves the replaced slot out. Advanced joint
convexity (Balle, Barthe & Gaboardi 2018, arXiv:1807.01647 v2, Thm. 2) and joint
convexity bound H_{e^eps} for eps >= 0 by q max(H(mu_1||mu_0), H(mu_1||mu_1')) <=
q H(B_2||B_0), which is H_{e^eps}((1-q)B_0 + qB_2 || B_0) exactly. For eps < 0 the
reflection H_a(A||B) = 1 - a + a H_{1/a}(B||A) and the symmetry of the relation
give the rest; the pair with that symmetrised curve dominates every ordered pair
for every eps (the curve is convex in e^eps, so it is a valid privacy profile).
For sampling without replacement the bound is attained for eps >= 0 (when the
other records equal the replacement); for Poisson sampling it may be loose.
A fixed-size batch under add/remove has no fixed source size, so it is refused.
"""

from __future__ import annotations

import math
from typing import Union

from .. import _validate
from . import _pld_math
from ._accountant import NeighboringRelation, PrivacyAccountant, UnsupportedEventError
from ._events import (
    DpEvent,
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    SampledWithoutReplacementEvent,
)

__all__ = ["PLDAccountant"]

#: Probability allowed to be pushed to +inf per composition (per leaf, split over its count).
_TAIL_MASS = 1e-18
#: Target relative size of the discretisation error when the interval is chosen automatically.
_REL_ERROR = 2e-4
#: Largest automatic interval: dp_accounting's default, so the automatic grid is never
#: coarser than its (connect-the-dots grids nest, so the result is never looser).
_MAX_INTERVAL = 1e-4
#: The dominated direction is first tried on a grid this many times coarser.
_COARSE = 8


class _GDPCurve:
    """Closed-form curve of mu-GDP (a composition of un-subsampled Gaussians)."""

    def __init__(self, mu: float) -> None:
        self.mu = mu

    def delta(self, epsilon: float, below: float = -1.0) -> float:
        return _pld_math.gdp_delta(epsilon, self.mu)

    def epsilon(self, delta: float, below: float = -1.0) -> float:
        return _pld_math.gdp_epsilon(delta, self.mu)


class _Direction:
    """One neighbouring direction: its leaves, composed lazily at two resolutions.

    Asked with `below=v`, it first answers from a grid `_COARSE` times coarser
    (cheap, and still an upper bound); only if that bound exceeds `v` does it
    compose on the fine grid. The larger of two curves is all the accountant
    reports, so a direction that is clearly dominated never needs the fine grid.
    """

    def __init__(self, leaves: list[tuple[_pld_math.PrivacyProfile, int]], interval: float | None) -> None:
        self.leaves = leaves
        self.interval = interval
        self._fine: _pld_math.ComposedPLD | None = None
        self._coarse: _pld_math.ComposedPLD | None = None

    def fine(self) -> _pld_math.ComposedPLD:
        if self._fine is None:
            self._fine = _compose(self.leaves, self.interval, factor=1)
        return self._fine

    def coarse(self) -> _pld_math.ComposedPLD:
        if self._coarse is None:
            self._coarse = _compose(self.leaves, self.interval, factor=_COARSE)
        return self._coarse

    def epsilon(self, delta: float, below: float | None = None) -> float:
        if below is not None and self._fine is None and self.coarse().epsilon(delta) <= below:
            return self.coarse().epsilon(delta)
        return self.fine().epsilon(delta)

    def delta(self, epsilon: float, below: float | None = None) -> float:
        if below is not None and self._fine is None and self.coarse().delta(epsilon) <= below:
            return self.coarse().delta(epsilon)
        return self.fine().delta(epsilon)


def _compose(
    leaves: list[tuple[_pld_math.PrivacyProfile, int]], interval: float | None, *, factor: int
) -> _pld_math.ComposedPLD:
    """Discretises and composes `leaves` at `interval` (None: automatic) times `factor`."""
    if interval is None:
        h = _pld_math.auto_interval(leaves, rel_error=_REL_ERROR, max_interval=_MAX_INTERVAL)
    else:
        h = interval
    h *= factor
    while True:
        try:
            discrete = [(_pld_math.connect_the_dots(p, h, tail_mass=_TAIL_MASS / c), c) for p, c in leaves]
            return _pld_math.compose(discrete, tail_mass=_TAIL_MASS)
        except _pld_math.GridTooLargeError:
            if interval is not None and factor == 1:
                raise
            h *= 2.0  # coarser is still an upper bound, only less tight


_Curve = Union[_Direction, _GDPCurve]
_Profile = _pld_math.PrivacyProfile


class PLDAccountant(PrivacyAccountant):
    """Privacy loss distribution accountant (tight, pessimistic: an upper bound).

    Args:
        neighboring_relation: "add_remove" (default) or "replace_one".
        value_discretization_interval: grid spacing h of the privacy loss, in (0, 1].
            None (the default) chooses h = 1e-4 / 2^k, the largest such value that
            keeps the discretisation error near 0.02 % of the spread of the
            composed loss. 1e-4 is dp_accounting's default and the grids nest, so
            the default is never looser than dp_accounting's PLD accountant; only
            when the composed loss is so wide that the grid would exceed ~2 million
            points (epsilon in the hundreds) may h grow beyond 1e-4. Any value gives
            an upper bound; smaller is tighter and slower.

    Raises:
        ValueError: on a bad relation or interval.

    Notes:
        Double precision limits how small a delta is meaningful: the FFT's
        rounding noise is ~1e-14 of the total probability, and the answers carry
        allowances for it (see `_pld_math.ComposedPLD`), so below delta ~ 1e-12
        epsilon stays an upper bound but grows loose, and below ~1e-17 (where
        ~1e-18 of probability counted as infinite loss dominates) `get_epsilon`
        returns inf. The guarantee assumes the
        sensitivity convention and sampling schemes described in the module
        docstring; sampling with a fixed batch size is not Poisson sampling.
    """

    name = "pld"

    def __init__(
        self,
        *,
        neighboring_relation: NeighboringRelation | str = "add_remove",
        value_discretization_interval: float | None = None,
    ) -> None:
        super().__init__(neighboring_relation=neighboring_relation)
        if value_discretization_interval is not None:
            _validate.in_range(
                0.0, 1.0, lo_open=True, value_discretization_interval=value_discretization_interval
            )
            value_discretization_interval = float(value_discretization_interval)
        self._interval = value_discretization_interval
        self._counts: dict[DpEvent, int] = {}
        self._curves: list[_Curve] | None = None

    @property
    def value_discretization_interval(self) -> float | None:
        """The fixed grid spacing, or None when it is chosen automatically."""
        return self._interval

    # -- hooks ----------------------------------------------------------------------
    def _supports_leaf(self, leaf: DpEvent) -> bool:
        if isinstance(leaf, (GaussianEvent, LaplaceEvent)):
            return True
        if isinstance(leaf, PoissonSampledEvent):
            return isinstance(leaf.event, (GaussianEvent, LaplaceEvent))
        if isinstance(leaf, SampledWithoutReplacementEvent):
            return self._relation is NeighboringRelation.REPLACE_ONE and isinstance(
                leaf.event, (GaussianEvent, LaplaceEvent)
            )
        return False

    def _compose_leaf(self, leaf: DpEvent, count: int) -> None:
        if count:
            self._counts[leaf] = self._counts.get(leaf, 0) + int(count)
            self._curves = None

    def _epsilon(self, delta: float) -> float:
        curves = self._get_curves()
        if not curves:
            return 0.0
        best = curves[0].epsilon(delta)
        for curve in curves[1:]:
            best = max(best, curve.epsilon(delta, below=best))
        return best

    def _delta(self, epsilon: float) -> float:
        curves = self._get_curves()
        if not curves:
            return 0.0
        best = curves[0].delta(epsilon)
        for curve in curves[1:]:
            best = max(best, curve.delta(epsilon, below=best))
        return best

    # -- events -> dominating pairs ---------------------------------------------------
    def _pairs(self, leaf: DpEvent) -> tuple[_Profile, _Profile] | float | None:
        """(remove-direction profile, add-direction profile), or a Gaussian's mu^2, or
        None when the leaf releases nothing about the data."""
        shift = 1.0 if self._relation is NeighboringRelation.ADD_OR_REMOVE_ONE else 2.0
        if isinstance(leaf, PoissonSampledEvent):
            base, q = leaf.event, leaf.sampling_rate
        elif isinstance(leaf, SampledWithoutReplacementEvent):
            base, q = leaf.event, leaf.sampling_rate
        else:
            base, q = leaf, 1.0
        if q == 0.0:
            return None
        if not isinstance(base, (GaussianEvent, LaplaceEvent)):  # _supports_leaf forbids it
            raise UnsupportedEventError(f"PLDAccountant does not support {leaf!r}.")
        if q == 1.0 and isinstance(base, GaussianEvent):
            return (shift / base.noise_multiplier) ** 2
        noise = "gaussian" if isinstance(base, GaussianEvent) else "laplace"
        if q == 1.0 or self._relation is NeighboringRelation.REPLACE_ONE:
            sym = _pld_math.PrivacyProfile(noise, base.noise_multiplier, shift, q, "symmetric")
            return sym, sym
        remove = _pld_math.PrivacyProfile(noise, base.noise_multiplier, shift, q, "remove")
        add = _pld_math.PrivacyProfile(noise, base.noise_multiplier, shift, q, "add")
        return remove, add

    def _get_curves(self) -> list[_Curve]:
        if self._curves is not None:
            return self._curves
        mu_sq = 0.0
        remove: list[tuple[_pld_math.PrivacyProfile, int]] = []
        add: list[tuple[_pld_math.PrivacyProfile, int]] = []
        for leaf, count in self._counts.items():
            pairs = self._pairs(leaf)
            if pairs is None:
                continue
            if isinstance(pairs, float):
                mu_sq += count * pairs
                continue
            remove.append((pairs[0], count))
            add.append((pairs[1], count))
        curves: list[_Curve] = []
        if not remove:
            if mu_sq > 0:
                curves.append(_GDPCurve(math.sqrt(mu_sq)))
        else:
            if mu_sq > 0:
                # Gaussian steps compose to one Gaussian exactly (Dong, Roth & Su 2019,
                # arXiv:1905.02383 v3, Cor. 3.3): one leaf of mu = sqrt(sum mu_i^2).
                merged = _pld_math.PrivacyProfile("gaussian", 1.0 / math.sqrt(mu_sq))
                remove.append((merged, 1))
                add.append((merged, 1))
            curves.append(_Direction(remove, self._interval))
            if add != remove:
                curves.append(_Direction(add, self._interval))
        self._curves = curves
        return curves
