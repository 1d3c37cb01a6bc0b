"""The privacy ledger: exact round trips, atomic saves, clear errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import privaudit._io as io_mod
from privaudit.accounting import (
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyLedger,
    dpsgd_event,
    flatten_event,
)

steps = st.lists(
    st.tuples(st.floats(0.3, 20.0), st.floats(1e-4, 1.0), st.integers(0, 10_000)),
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(steps)
def test_ledger_round_trips_exactly(tmp_path_factory, items):
    ledger = PrivacyLedger(metadata={"seed": 3, "dataset": "digits"})
    for sigma, q, n in items:
        ledger.record(PoissonSampledEvent(q, GaussianEvent(sigma)), n, note="epoch")
    path = tmp_path_factory.mktemp("l") / "ledger.json"
    ledger.save(path)
    loaded = PrivacyLedger.load(path)
    assert loaded == ledger
    assert loaded.to_event() == ledger.to_event()
    assert loaded.total_count() == sum(n for _, _, n in items)


def test_resumed_ledger_keeps_spent_budget(tmp_path):
    path = tmp_path / "ledger.json"
    first = PrivacyLedger()
    first.record(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 500)
    first.save(path)
    resumed = PrivacyLedger.load(path)
    resumed.record(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 500)
    resumed.save(path)
    total = PrivacyLedger.load(path)
    assert total.total_count() == 1000
    assert flatten_event(total.to_event()) == flatten_event(dpsgd_event(1.0, 1000, sampling_rate=0.01))


def test_failed_save_keeps_previous_ledger(tmp_path, monkeypatch):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger()
    ledger.record(GaussianEvent(1.0), 1)
    ledger.save(path)
    before = path.read_text()
    ledger.record(GaussianEvent(1.0), 1)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io_mod.os, "fsync", boom)
    with pytest.raises(OSError):
        ledger.save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"format": "other"}), "Not a privaudit ledger"),
        (json.dumps({"format": "privaudit.ledger/1", "entries": {}}), "entries"),
        (json.dumps({"format": "privaudit.ledger/1", "entries": [{"count": 1}]}), "event"),
        (json.dumps({"format": "privaudit.ledger/1", "entries": [
            {"event": {"kind": "gaussian", "noise_multiplier": -1}, "count": 1, "timestamp": "t"}]}),
         "noise_multiplier"),
    ],
)
def test_unreadable_ledgers_raise_value_error_naming_the_file(tmp_path, content, match):
    path = tmp_path / "ledger.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        PrivacyLedger.load(path)
    assert "ledger.json" in str(info.value)


def test_missing_ledger_file(tmp_path):
    with pytest.raises(ValueError, match="Cannot read ledger file"):
        PrivacyLedger.load(tmp_path / "nope.json")


def test_record_validates():
    ledger = PrivacyLedger()
    with pytest.raises(ValueError, match="count"):
        ledger.record(GaussianEvent(1.0), -1)
    with pytest.raises(ValueError, match="event"):
        ledger.record("gaussian", 1)  # type: ignore[arg-type]


def test_extend_requires_same_relation():
    a = PrivacyLedger()
    b = PrivacyLedger(neighboring_relation="replace_one")
    with pytest.raises(ValueError, match="neighboring_relation"):
        a.extend(b)


def test_identical_consecutive_steps_are_merged_but_never_lost():
    ledger = PrivacyLedger()
    step = PoissonSampledEvent(0.01, GaussianEvent(1.0))
    for _ in range(1000):
        ledger.record(step)
    ledger.record(PoissonSampledEvent(0.01, GaussianEvent(2.0)))
    ledger.record(step, 5)
    assert [e.count for e in ledger.entries] == [1000, 1, 5]
    assert ledger.total_count() == 1006
    assert ledger.entries[0].timestamp <= ledger.entries[0].last_timestamp
    unmerged = PrivacyLedger()
    unmerged.record(step, merge=False)
    unmerged.record(step, merge=False)
    assert len(unmerged) == 2
