"""The interface every membership-inference attack shares, and its array validators.

An attack is fitted on reference ("shadow") models whose training sets are
known, then scores the examples of a target model: higher score = more likely
a member. Everything here is numpy over (signals, membership); nothing imports
torch.

Shapes:
    shadow_signals      (K, n) or (K, n, A): K shadow models, n examples,
                        optionally A query augmentations per example.
    shadow_membership   (K, n) bool: True where example i was in shadow k's
                        training set.
    target_signals      (n,) or (n, A): the target model's signals.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

__all__ = ["MembershipAttack", "NotFittedError"]


class NotFittedError(RuntimeError):
    """`score` was called on an attack that needs `fit` first."""


class MembershipAttack(abc.ABC):
    """Base class: `fit` on shadow models, then `score` a target model's examples.

    Subclasses keep their options in a frozen dataclass (`self.options`) and
    their fitted state in private attributes; `fit` returns `self`.

    Attributes:
        needs_population: True for attacks (RMIA) whose `fit` and `score` also
            take `population_signals`, the models' signals on known non-members.
    """

    needs_population: ClassVar[bool] = False

    @abc.abstractmethod
    def fit(self, *, shadow_signals: npt.ArrayLike, shadow_membership: npt.ArrayLike) -> MembershipAttack:
        """Learns from shadow models' signals and which examples each was trained on."""

    @abc.abstractmethod
    def score(self, target_signals: npt.ArrayLike) -> np.ndarray:
        """Returns a float64 array (n,): higher = more likely a member of the target's training set."""


# --- validators shared by the attacks and the metrics -------------------------------


def as_real_array(name: str, value: Any, *, ndims: tuple[int, ...], allow_inf: bool = False) -> np.ndarray:
    """Returns `value` as a non-empty float64 array with one of `ndims` dimensions.

    Raises ValueError naming `name` for booleans, non-numbers, NaN, infinities
    (unless `allow_inf`), empty arrays and the wrong number of dimensions.
    """
    arr = np.asarray(value)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"Expected {name} to be an array of real numbers, got dtype {arr.dtype}.")
    if arr.ndim not in ndims:
        dims = " or ".join(str(d) for d in ndims)
        raise ValueError(f"Expected {name} to have {dims} dimensions, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"Expected {name} to be non-empty, got shape {arr.shape}.")
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        raise ValueError(f"Expected {name} without NaN, found {int(np.isnan(arr).sum())} NaN value(s).")
    if not allow_inf and np.isinf(arr).any():
        raise ValueError(f"Expected {name} to be finite, found {int(np.isinf(arr).sum())} infinite value(s).")
    return arr


def as_membership(name: str, value: Any, *, ndim: int) -> np.ndarray:
    """Returns `value` as a non-empty bool array of `ndim` dimensions.

    Accepts bool arrays and numeric arrays whose entries are exactly 0 or 1;
    anything else (2, -1, 0.5, NaN) is a ValueError naming `name`.
    """
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"Expected {name} to have {ndim} dimensions, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"Expected {name} to be non-empty, got shape {arr.shape}.")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"Expected {name} to be booleans or 0/1, got dtype {arr.dtype}.")
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        example = arr[bad].flat[0]
        raise ValueError(f"Expected {name} to hold only 0/1 (or booleans), found {example!r}.")
    return arr.astype(bool)


def check_shadow_inputs(shadow_signals: Any, shadow_membership: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validates a (K, n[, A]) signal array against a (K, n) membership array.

    Returns the signals as (K, n, A) float64 (A = 1 when no augmentation axis
    was given) and the membership as (K, n) bool.
    """
    signals = as_real_array("shadow_signals", shadow_signals, ndims=(2, 3))
    membership = as_membership("shadow_membership", shadow_membership, ndim=2)
    if signals.shape[:2] != membership.shape:
        raise ValueError(
            f"Expected shadow_signals (K, n[, A]) to match shadow_membership (K, n): "
            f"got {signals.shape} and {membership.shape}."
        )
    if signals.ndim == 2:
        signals = signals[:, :, None]
    return signals, membership


def check_target_signals(
    target_signals: Any, *, n: int, augmentations: int, name: str = "target_signals"
) -> np.ndarray:
    """Validates target signals (n,) or (n, A) against a fit; returns (n, A) float64."""
    signals = as_real_array(name, target_signals, ndims=(1, 2))
    if signals.ndim == 1:
        signals = signals[:, None]
    if signals.shape != (n, augmentations):
        want = f"({n},)" if augmentations == 1 else f"({n}, {augmentations})"
        raise ValueError(f"Expected {name} of shape {want} to match the fit, got {np.shape(target_signals)}.")
    return signals
