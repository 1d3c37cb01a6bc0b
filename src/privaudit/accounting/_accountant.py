"""The accountant contract: check, compose, then read.

    acct = PLDAccountant().compose(dpsgd_event(1.1, 1000, sampling_rate=0.01))
    eps = acct.get_epsilon(1e-5)

`compose` raises `UnsupportedEventError` naming the offending sub-event; an
accountant never returns a silently wrong epsilon. Subclasses implement four
hooks over *leaf* events (see `flatten_event`): `_supports_leaf`,
`_compose_leaf`, `_epsilon` and `_delta`.
"""

from __future__ import annotations

import abc
import enum
from typing import ClassVar

from .. import _validate
from ._events import DpEvent, flatten_event

__all__ = ["NeighboringRelation", "PrivacyAccountant", "UnsupportedEventError"]


class UnsupportedEventError(ValueError):
    """The accountant cannot account for (a part of) this event."""


class NeighboringRelation(str, enum.Enum):
    """Which datasets count as neighbours.

    ADD_OR_REMOVE_ONE (the default, as in Opacus and dp_accounting): one record
    added or removed. REPLACE_ONE: one record replaced by another (roughly twice
    the sensitivity of the add/remove relation).
    """

    ADD_OR_REMOVE_ONE = "add_remove"
    REPLACE_ONE = "replace_one"


class PrivacyAccountant(abc.ABC):
    """Stateful accountant: composes events and reports (epsilon, delta)."""

    name: ClassVar[str] = "abstract"
    #: True when the reported epsilon is a rigorous upper bound.
    is_upper_bound: ClassVar[bool] = True

    def __init__(self, *, neighboring_relation: NeighboringRelation | str = "add_remove") -> None:
        try:
            self._relation = NeighboringRelation(neighboring_relation)
        except ValueError:
            accepted = [r.value for r in NeighboringRelation]
            raise ValueError(
                f"Expected neighboring_relation={neighboring_relation!r} in {accepted}."
            ) from None
        self._history: list[tuple[DpEvent, int]] = []

    @property
    def neighboring_relation(self) -> NeighboringRelation:
        return self._relation

    @property
    def history(self) -> tuple[tuple[DpEvent, int], ...]:
        """Every (event, count) composed so far, in order."""
        return tuple(self._history)

    # -- contract -----------------------------------------------------------------
    def supports(self, event: DpEvent) -> bool:
        """True when every leaf of `event` can be accounted for."""
        return self._first_unsupported(event) is None

    def compose(self, event: DpEvent, count: int = 1) -> PrivacyAccountant:
        """Adds `count` runs of `event`; returns self so calls can be chained."""
        if not isinstance(event, DpEvent):
            raise ValueError(f"Expected event to be a DpEvent, got {type(event).__name__}.")
        _validate.integer(minimum=0, count=count)
        bad = self._first_unsupported(event)
        if bad is not None:
            raise UnsupportedEventError(
                f"{type(self).__name__} (neighboring_relation={self._relation.value!r}) "
                f"does not support {bad!r}."
            )
        for leaf, c in flatten_event(event, count):
            self._compose_leaf(leaf, c)
        self._history.append((event, count))
        return self

    def get_epsilon(self, delta: float) -> float:
        """Smallest epsilon (as computed by this accountant) such that the
        composition is (epsilon, delta)-DP."""
        _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, delta=delta)
        eps = float(self._epsilon(float(delta)))
        return max(eps, 0.0)

    def get_delta(self, epsilon: float) -> float:
        """Smallest delta (as computed by this accountant) such that the
        composition is (epsilon, delta)-DP."""
        _validate.non_negative(epsilon=epsilon)
        d = float(self._delta(float(epsilon)))
        return min(max(d, 0.0), 1.0)

    # -- hooks --------------------------------------------------------------------
    def _first_unsupported(self, event: DpEvent) -> DpEvent | None:
        for leaf, _ in flatten_event(event):
            if not self._supports_leaf(leaf):
                return leaf
        return None

    @abc.abstractmethod
    def _supports_leaf(self, leaf: DpEvent) -> bool: ...

    @abc.abstractmethod
    def _compose_leaf(self, leaf: DpEvent, count: int) -> None: ...

    @abc.abstractmethod
    def _epsilon(self, delta: float) -> float: ...

    @abc.abstractmethod
    def _delta(self, epsilon: float) -> float: ...


