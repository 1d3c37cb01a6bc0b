"""The Gaussian-DP accountant: a central-limit *estimate*, not a bound.

>>> from privaudit.accounting import GaussianEvent, dpsgd_event
>>> exact = GDPAccountant().compose(GaussianEvent(2.0), 4)   # no subsampling: exact
>>> exact.is_exact, exact.mu
(True, 1.0)
>>> clt = GDPAccountant().compose(dpsgd_event(1.0, 1000, sampling_rate=0.01))
>>> clt.is_exact, round(clt.mu, 4)
(False, 0.4145)
"""

from __future__ import annotations

import math
from typing import ClassVar

from ._accountant import NeighboringRelation, PrivacyAccountant
from ._events import DpEvent, GaussianEvent, NoOpEvent, PoissonSampledEvent
from ._gdp_math import gdp_delta, gdp_epsilon
from ._events import canonical_leaf

__all__ = ["GDPAccountant"]


class GDPAccountant(PrivacyAccountant):
    """Gaussian-DP accountant: an approximation that can *under-report* epsilon.

    Un-subsampled Gaussian steps are exactly mu-GDP with mu = sensitivity/sigma, and
    mu-GDP composes exactly: mu_total^2 = sum count/sigma^2 (arXiv:1905.02383,
    Corollary 3.3). Poisson-subsampled Gaussian steps are *not* mu-GDP for any
    useful mu; they are replaced by the central-limit approximation of
    arXiv:1911.11607, mu^2 = sum count * q^2 (e^{1/sigma^2} - 1). That estimate can be far
    below the true epsilon when the number of steps is small (Opacus' CLT
    accountant under-reports epsilon by up to 20x there), so `is_upper_bound` is
    False. When nothing subsampled was composed, `is_exact` is True and the
    result is exact.

    Supported leaves: `GaussianEvent` (both relations; replace-one doubles the
    sensitivity), `PoissonSampledEvent` of a Gaussian (add/remove only; at
    rate 1 it is an exact Gaussian, at rate 0 nothing), `NoOpEvent`.

    Args:
        neighboring_relation: 'add_remove' (default) or 'replace_one'.
    """

    name: ClassVar[str] = "gdp"
    is_upper_bound: ClassVar[bool] = False

    def __init__(self, *, neighboring_relation: NeighboringRelation | str = "add_remove") -> None:
        super().__init__(neighboring_relation=neighboring_relation)
        self._mu_sq_exact = 0.0
        self._mu_sq_clt = 0.0
        self._any_clt = False

    @property
    def mu(self) -> float:
        """The GDP parameter of everything composed so far (exact or CLT estimate)."""
        return math.sqrt(self._mu_sq_exact + self._mu_sq_clt)

    @property
    def is_exact(self) -> bool:
        """True when no subsampled step was composed, so `mu` is exact."""
        return not self._any_clt

    def _leaf_mu_sq(self, leaf: DpEvent) -> tuple[float, bool] | None:
        """(mu^2 of one run, whether it is a CLT estimate), or None if unsupported."""
        leaf = canonical_leaf(leaf)
        sensitivity = 2.0 if self._relation is NeighboringRelation.REPLACE_ONE else 1.0
        if isinstance(leaf, NoOpEvent):
            return 0.0, False
        if isinstance(leaf, GaussianEvent):
            return (sensitivity / leaf.noise_multiplier) ** 2, False
        if (
            isinstance(leaf, PoissonSampledEvent)
            and isinstance(leaf.event, GaussianEvent)
            and self._relation is NeighboringRelation.ADD_OR_REMOVE_ONE
        ):
            q, sigma = leaf.sampling_rate, leaf.event.noise_multiplier
            # arXiv:1911.11607 (Bu, Dong, Long, Su 2019), Poisson-subsampling CLT: each step adds
            # q^2 (e^{1/sigma^2} - 1) to mu^2.
            return q * q * math.expm1(sigma**-2), True
        return None

    def _supports_leaf(self, leaf: DpEvent) -> bool:
        return self._leaf_mu_sq(leaf) is not None

    def _compose_leaf(self, leaf: DpEvent, count: int) -> None:
        got = self._leaf_mu_sq(leaf)
        if got is None:  # pragma: no cover - compose() checks support first
            raise AssertionError(f"unsupported leaf {leaf!r}")
        mu_sq, clt = got
        if clt:
            self._mu_sq_clt += count * mu_sq
            self._any_clt = True
        else:
            self._mu_sq_exact += count * mu_sq

    def _epsilon(self, delta: float) -> float:
        return gdp_epsilon(self.mu, delta)

    def _delta(self, epsilon: float) -> float:
        return gdp_delta(self.mu, epsilon)
