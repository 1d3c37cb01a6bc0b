"""RMIA: pairwise likelihood ratios against population samples.

Zarifzadeh, Liu, Shokri 2024, "Low-Cost High-Power Membership Inference
Attacks" (arXiv 2312.03262v3), Section 3. The signal is the true-class
probability p_y = Pr(x | theta) (see `confidence`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _validate
from ._base import MembershipAttack, NotFittedError, as_membership, as_real_array

__all__ = ["RmiaAttack", "RmiaOptions"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RmiaOptions:
    """Attributes:
    online: Pr(x) is the mean of Pr(x | theta') over all reference models (IN
        and OUT); offline: it is approximated from OUT models only as
        ((1 + a) * P_OUT(x) + (1 - a)) / 2.
    a: the offline approximation's coefficient, in [0, 1].
    gamma: a pair (x, z) counts when LR(x, z) >= gamma; gamma > 0.
    """

    online: bool = True
    a: float = 0.3
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.online, bool):
            raise ValueError(f"Expected online={self.online!r} to be a bool.")
        _validate.in_range(0, 1, a=self.a)
        _validate.positive(gamma=self.gamma)


def _confidences(name: str, value: Any, *, ndim: int) -> np.ndarray:
    """Probabilities in [0, 1] with `ndim` or `ndim + 1` axes; a trailing augmentation axis is averaged."""
    arr = as_real_array(name, value, ndims=(ndim, ndim + 1))
    if (arr < 0).any() or (arr > 1).any():
        raise ValueError(f"Expected {name} to be probabilities in [0, 1], found values in [{arr.min()}, {arr.max()}].")
    return arr.mean(axis=-1) if arr.ndim == ndim + 1 else arr


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


class RmiaAttack(MembershipAttack):
    """Relative membership inference attack of Zarifzadeh et al. 2024 (arXiv 2312.03262v3).

    For a target example x and a population sample z (known non-members of the
    target model), with theta the target model:

        LR(x, z) = [Pr(x | theta) / Pr(x)] / [Pr(z | theta) / Pr(z)]
        score(x) = fraction of population samples z with LR(x, z) >= gamma

    Pr(.) is estimated from reference models (see `RmiaOptions`), for x and z
    alike. `fit` takes the reference models' confidences on the targets and on
    the population; `score` takes the target model's confidences on both.
    Confidences may carry a trailing augmentation axis, averaged first.

    The count is computed by sorting the population's log ratios and
    `np.searchsorted`, O((n + m) log m) instead of an n x m matrix.

    An example with no OUT reference model, in offline mode, falls back to the
    mean over all its reference models (the online estimate).
    """

    needs_population = True

    def __init__(self, *, online: bool = True, a: float = 0.3, gamma: float = 1.0) -> None:
        self.options = RmiaOptions(online=online, a=a, gamma=gamma)
        self._log_pr_x: np.ndarray | None = None
        self._log_pr_z: np.ndarray | None = None

    def _marginal(self, conf: np.ndarray, membership: np.ndarray) -> np.ndarray:
        """log Pr(.) per column of a (K, n) confidence array."""
        mean_all = conf.mean(axis=0)
        if self.options.online:
            pr = mean_all
        else:
            out = ~membership
            n_out = out.sum(axis=0)
            with np.errstate(invalid="ignore"):
                p_out = np.where(out, conf, 0.0).sum(axis=0) / n_out
            a = self.options.a
            # Offline approximation, Section 3 of the paper: Pr(x) ~ ((1 + a) P_OUT(x) + (1 - a)) / 2.
            pr = np.where(n_out > 0, 0.5 * ((1 + a) * p_out + (1 - a)), mean_all)
        # Floored so that a probability that is exactly 0 in every reference model divides safely.
        return _log(np.maximum(pr, np.finfo(np.float64).tiny))

    def fit(  # type: ignore[override]
        self,
        *,
        shadow_signals: npt.ArrayLike,
        shadow_membership: npt.ArrayLike,
        population_signals: npt.ArrayLike,
        population_membership: npt.ArrayLike | None = None,
    ) -> RmiaAttack:
        """Estimates Pr(x) and Pr(z) from reference models.

        Args:
            shadow_signals: (K, n[, A]) reference models' p_y on the target examples.
            shadow_membership: (K, n) bool, True where x was in reference k's training set.
            population_signals: (K, m[, A]) reference models' p_y on the population samples z.
            population_membership: (K, m) bool; default: every z is OUT of every reference model.
        """
        conf_x = _confidences("shadow_signals", shadow_signals, ndim=2)
        member_x = as_membership("shadow_membership", shadow_membership, ndim=2)
        if conf_x.shape != member_x.shape:
            raise ValueError(
                f"Expected shadow_signals (K, n[, A]) to match shadow_membership (K, n): "
                f"got {np.shape(shadow_signals)} and {member_x.shape}."
            )
        conf_z = _confidences("population_signals", population_signals, ndim=2)
        if conf_z.shape[0] != conf_x.shape[0]:
            raise ValueError(
                f"Expected population_signals from the same {conf_x.shape[0]} reference models as shadow_signals, "
                f"got shape {np.shape(population_signals)}."
            )
        if population_membership is None:
            member_z = np.zeros(conf_z.shape, dtype=bool)
        else:
            member_z = as_membership("population_membership", population_membership, ndim=2)
            if member_z.shape != conf_z.shape:
                raise ValueError(
                    f"Expected population_membership of shape {conf_z.shape} to match population_signals, "
                    f"got {member_z.shape}."
                )
        self._log_pr_x = self._marginal(conf_x, member_x)
        self._log_pr_z = self._marginal(conf_z, member_z)
        return self

    def score(  # type: ignore[override]
        self, target_signals: npt.ArrayLike, *, population_signals: npt.ArrayLike
    ) -> np.ndarray:
        """Returns score(x) in [0, 1] per example, shape (n,).

        Args:
            target_signals: (n[, A]) the target model's p_y on the target examples.
            population_signals: (m[, A]) the target model's p_y on the population samples.
        """
        if self._log_pr_x is None or self._log_pr_z is None:
            raise NotFittedError("RmiaAttack needs fit(...) on reference models first.")
        conf_x = _confidences("target_signals", target_signals, ndim=1)
        conf_z = _confidences("population_signals", population_signals, ndim=1)
        if conf_x.shape != self._log_pr_x.shape:
            raise ValueError(
                f"Expected target_signals for the {self._log_pr_x.shape[0]} fitted examples, "
                f"got {np.shape(target_signals)}."
            )
        if conf_z.shape != self._log_pr_z.shape:
            raise ValueError(
                f"Expected population_signals for the {self._log_pr_z.shape[0]} fitted population samples, "
                f"got {np.shape(population_signals)}."
            )
        log_ratio_x = _log(conf_x) - self._log_pr_x
        log_ratio_z = np.sort(_log(conf_z) - self._log_pr_z)
        # LR(x, z) >= gamma  <=>  log ratio_z <= log ratio_x - log gamma (Section 3, Score_MIA).
        counts = np.searchsorted(log_ratio_z, log_ratio_x - np.log(self.options.gamma), side="right")
        return counts / log_ratio_z.shape[0]
