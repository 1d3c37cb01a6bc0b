"""Events: validation, JSON round trips, flattening."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privaudit.accounting import (
    ComposedEvent,
    GaussianEvent,
    LaplaceEvent,
    NoOpEvent,
    PoissonSampledEvent,
    SampledWithoutReplacementEvent,
    SelfComposedEvent,
    dpsgd_event,
    event_from_dict,
    flatten_event,
)

sigmas = st.floats(0.1, 50.0, allow_nan=False)
rates = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def events(draw: st.DrawFn, depth: int = 2):
    leaf = st.one_of(
        st.builds(GaussianEvent, sigmas),
        st.builds(LaplaceEvent, sigmas),
        st.builds(PoissonSampledEvent, rates, st.builds(GaussianEvent, sigmas)),
        st.just(NoOpEvent()),
    )
    if depth == 0:
        return draw(leaf)
    sub = events(depth=depth - 1)
    return draw(
        st.one_of(
            leaf,
            st.builds(SelfComposedEvent, sub, st.integers(0, 1000)),
            st.builds(lambda es: ComposedEvent(tuple(es)), st.lists(sub, max_size=3)),
        )
    )


@settings(max_examples=60, deadline=None)
@given(events())
def test_json_round_trip_is_exact(event):
    text = json.dumps(event.to_dict())
    assert event_from_dict(json.loads(text)) == event


@settings(max_examples=60, deadline=None)
@given(events(), st.integers(1, 5))
def test_flatten_preserves_total_count_per_leaf(event, k):
    once = dict(flatten_event(event))
    scaled = dict(flatten_event(event, k))
    assert set(once) == set(scaled)
    for leaf, c in once.items():
        assert scaled[leaf] == k * c
        assert not isinstance(leaf, (ComposedEvent, SelfComposedEvent, NoOpEvent))


def test_flatten_merges_identical_steps():
    e = ComposedEvent((dpsgd_event(1.0, 10, sampling_rate=0.1), dpsgd_event(1.0, 5, sampling_rate=0.1),
                       dpsgd_event(2.0, 3, sampling_rate=0.1)))
    flat = flatten_event(e)
    assert flat == [
        (PoissonSampledEvent(0.1, GaussianEvent(1.0)), 15),
        (PoissonSampledEvent(0.1, GaussianEvent(2.0)), 3),
    ]


@pytest.mark.parametrize(
    ("build", "arg"),
    [
        (lambda: GaussianEvent(0.0), "noise_multiplier"),
        (lambda: GaussianEvent(-1.0), "noise_multiplier"),
        (lambda: GaussianEvent(math.nan), "noise_multiplier"),
        (lambda: GaussianEvent(math.inf), "noise_multiplier"),
        (lambda: LaplaceEvent(0), "noise_multiplier"),
        (lambda: PoissonSampledEvent(1.5, GaussianEvent(1.0)), "sampling_rate"),
        (lambda: PoissonSampledEvent(-0.1, GaussianEvent(1.0)), "sampling_rate"),
        (lambda: PoissonSampledEvent(math.nan, GaussianEvent(1.0)), "sampling_rate"),
        (lambda: SelfComposedEvent(GaussianEvent(1.0), -1), "count"),
        (lambda: SelfComposedEvent(GaussianEvent(1.0), 2.5), "count"),
        (lambda: SampledWithoutReplacementEvent(10, 11, GaussianEvent(1.0)), "sample_size"),
        (lambda: SampledWithoutReplacementEvent(0, 0, GaussianEvent(1.0)), "source_size"),
        (lambda: dpsgd_event(1.0, -3, sampling_rate=0.1), "steps"),
        (lambda: PoissonSampledEvent(0.1, "gaussian"), "event"),
    ],
)
def test_bad_events_name_the_argument(build, arg):
    with pytest.raises(ValueError, match=arg):
        build()


def test_event_from_dict_rejects_garbage():
    with pytest.raises(ValueError, match="kind"):
        event_from_dict({"noise_multiplier": 1.0})
    with pytest.raises(ValueError, match="Unknown event kind"):
        event_from_dict({"kind": "quantum"})
    with pytest.raises(ValueError, match="lacks field"):
        event_from_dict({"kind": "gaussian"})


def test_events_are_frozen_and_hashable():
    e = GaussianEvent(1.0)
    with pytest.raises(AttributeError):
        e.noise_multiplier = 2.0  # type: ignore[misc]
    assert len({GaussianEvent(1.0), GaussianEvent(1)}) == 1
