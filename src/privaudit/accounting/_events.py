"""Immutable descriptions of what a mechanism did: the accountant's only input.

Events describe; accountants interpret. Training code builds one event per run
(`dpsgd_event`) and the accountant reads it, so the two cannot drift apart.
All Gaussian and Laplace events are normalised to sensitivity 1: a step of
DP-SGD that clips to norm C and adds N(0, sigma^2 C^2) is `GaussianEvent(sigma)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from .. import _validate

__all__ = [
    "ComposedEvent",
    "DpEvent",
    "GaussianEvent",
    "LaplaceEvent",
    "NoOpEvent",
    "PoissonSampledEvent",
    "SampledWithoutReplacementEvent",
    "SelfComposedEvent",
    "canonical_leaf",
    "dpsgd_event",
    "event_from_dict",
    "flatten_event",
]

_REGISTRY: dict[str, type[DpEvent]] = {}


@dataclasses.dataclass(frozen=True)
class DpEvent:
    """Base class of all events. Subclasses are frozen, hashable and JSON round-trippable."""

    kind: ClassVar[str] = "base"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict; `event_from_dict` inverts it exactly."""
        out: dict[str, Any] = {"kind": self.kind}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, DpEvent):
                out[field.name] = value.to_dict()
            elif isinstance(value, tuple):
                out[field.name] = [v.to_dict() for v in value]
            else:
                out[field.name] = value
        return out


@dataclasses.dataclass(frozen=True)
class NoOpEvent(DpEvent):
    """A step that touched no private data (costs nothing)."""

    kind: ClassVar[str] = "noop"


@dataclasses.dataclass(frozen=True)
class GaussianEvent(DpEvent):
    """Adds N(0, noise_multiplier^2) to a query of L2 sensitivity 1."""

    kind: ClassVar[str] = "gaussian"
    noise_multiplier: float

    def __post_init__(self) -> None:
        _validate.positive(noise_multiplier=self.noise_multiplier)
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))


@dataclasses.dataclass(frozen=True)
class LaplaceEvent(DpEvent):
    """Adds Laplace(0, b = noise_multiplier) noise to a query of L1 sensitivity 1.

    Alone it is (1/noise_multiplier, 0)-DP.
    """

    kind: ClassVar[str] = "laplace"
    noise_multiplier: float

    def __post_init__(self) -> None:
        _validate.positive(noise_multiplier=self.noise_multiplier)
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))


@dataclasses.dataclass(frozen=True)
class PoissonSampledEvent(DpEvent):
    """Each record joins the sample independently with probability `sampling_rate`;
    `event` then runs on the sample."""

    kind: ClassVar[str] = "poisson_sampled"
    sampling_rate: float
    event: DpEvent

    def __post_init__(self) -> None:
        _validate.in_range(0.0, 1.0, sampling_rate=self.sampling_rate)
        object.__setattr__(self, "sampling_rate", float(self.sampling_rate))
        _check_event("event", self.event)


@dataclasses.dataclass(frozen=True)
class SampledWithoutReplacementEvent(DpEvent):
    """A uniformly random subset of exactly `sample_size` of `source_size` records
    is drawn; `event` then runs on it."""

    kind: ClassVar[str] = "sampled_without_replacement"
    source_size: int
    sample_size: int
    event: DpEvent

    def __post_init__(self) -> None:
        _validate.integer(minimum=1, source_size=self.source_size)
        _validate.integer(minimum=0, sample_size=self.sample_size)
        if self.sample_size > self.source_size:
            raise ValueError(
                f"Expected sample_size={self.sample_size} in [0, source_size={self.source_size}]."
            )
        _check_event("event", self.event)

    @property
    def sampling_rate(self) -> float:
        return self.sample_size / self.source_size


@dataclasses.dataclass(frozen=True)
class SelfComposedEvent(DpEvent):
    """`event` run `count` times (each run on fresh randomness)."""

    kind: ClassVar[str] = "self_composed"
    event: DpEvent
    count: int

    def __post_init__(self) -> None:
        _check_event("event", self.event)
        _validate.integer(minimum=0, count=self.count)


@dataclasses.dataclass(frozen=True)
class ComposedEvent(DpEvent):
    """The events in order (heterogeneous composition: noise or rate changing over training)."""

    kind: ClassVar[str] = "composed"
    events: tuple[DpEvent, ...]

    def __post_init__(self) -> None:
        events = tuple(self.events)
        for i, e in enumerate(events):
            _check_event(f"events[{i}]", e)
        object.__setattr__(self, "events", events)


def _check_event(name: str, value: Any) -> None:
    if not isinstance(value, DpEvent):
        raise ValueError(f"Expected {name} to be a DpEvent, got {type(value).__name__}.")


def canonical_leaf(event: DpEvent) -> DpEvent:
    """Rewrites a leaf into the simplest event with the same privacy.

    Poisson sampling at rate 0 runs nothing; at rate 1 it is the inner event; two
    nested Poisson samples are one at the product rate. A fixed-size sample of
    everything is the inner event. `SelfComposedEvent(e, 1)` and a one-event
    `ComposedEvent` inside a sampler are `e`. Anything else is returned unchanged.
    """

    def unwrap(e: DpEvent) -> DpEvent:
        if isinstance(e, SelfComposedEvent):
            if e.count == 0:
                return NoOpEvent()
            if e.count == 1:
                return unwrap(e.event)
        if isinstance(e, ComposedEvent):
            inner = [x for x in (unwrap(s) for s in e.events) if not isinstance(x, NoOpEvent)]
            if not inner:
                return NoOpEvent()
            if len(inner) == 1:
                return inner[0]
        if isinstance(e, (PoissonSampledEvent, SampledWithoutReplacementEvent)):
            return canonical_leaf(e)
        return e

    if isinstance(event, PoissonSampledEvent):
        inner = unwrap(event.event)
        if event.sampling_rate == 0.0 or isinstance(inner, NoOpEvent):
            return NoOpEvent()
        if event.sampling_rate == 1.0:
            return inner
        if isinstance(inner, PoissonSampledEvent):
            return PoissonSampledEvent(event.sampling_rate * inner.sampling_rate, inner.event)
        return PoissonSampledEvent(event.sampling_rate, inner)
    if isinstance(event, SampledWithoutReplacementEvent):
        inner = unwrap(event.event)
        if event.sample_size == 0 or isinstance(inner, NoOpEvent):
            return NoOpEvent()
        if event.sample_size == event.source_size:
            return inner
        return SampledWithoutReplacementEvent(event.source_size, event.sample_size, inner)
    return event


def dpsgd_event(noise_multiplier: float, steps: int, *, sampling_rate: float) -> DpEvent:
    """Returns the event of `steps` Poisson-sampled Gaussian steps (DP-SGD).

    >>> e = dpsgd_event(1.1, 1000, sampling_rate=0.01)
    >>> e.count, e.event.sampling_rate, e.event.event.noise_multiplier
    (1000, 0.01, 1.1)
    """
    _validate.integer(minimum=0, steps=steps)
    return SelfComposedEvent(
        PoissonSampledEvent(sampling_rate, GaussianEvent(noise_multiplier)), steps
    )


def event_from_dict(data: Mapping[str, Any]) -> DpEvent:
    """Rebuilds an event from `DpEvent.to_dict` output; raises ValueError on anything else."""
    if not isinstance(data, Mapping) or "kind" not in data:
        raise ValueError(f"Expected an event dict with a 'kind' key, got {data!r}.")
    cls = _REGISTRY.get(data["kind"])
    if cls is None or cls is DpEvent:
        raise ValueError(f"Unknown event kind {data['kind']!r}; known: {sorted(_REGISTRY)}.")
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            raise ValueError(f"Event of kind {data['kind']!r} lacks field {field.name!r}.")
        value = data[field.name]
        if field.name == "event":
            value = event_from_dict(value)
        elif field.name == "events":
            value = tuple(event_from_dict(v) for v in value)
        kwargs[field.name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - defensive
        raise ValueError(f"Malformed event {data!r}: {exc}") from exc


def flatten_event(event: DpEvent, count: int = 1) -> list[tuple[DpEvent, int]]:
    """Expands compositions into (leaf event, count) pairs, merging equal leaves.

    Leaves are every event that is neither `ComposedEvent` nor `SelfComposedEvent`.
    Composition is commutative for all accountants here, so merging equal leaves
    (summing their counts) changes no result and makes T identical steps cost
    one self-composition instead of T.
    """
    merged: dict[DpEvent, int] = {}

    def walk(e: DpEvent, c: int) -> None:
        if c == 0:
            return
        if isinstance(e, ComposedEvent):
            for sub in e.events:
                walk(sub, c)
        elif isinstance(e, SelfComposedEvent):
            walk(e.event, c * e.count)
        elif isinstance(e, NoOpEvent):
            return
        else:
            merged[e] = merged.get(e, 0) + c

    walk(event, count)
    return list(merged.items())


def compose_all(events: Iterable[DpEvent]) -> ComposedEvent:
    """Convenience: the composition of `events` in order."""
    return ComposedEvent(tuple(events))
