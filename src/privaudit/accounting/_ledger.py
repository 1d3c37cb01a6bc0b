"""The privacy ledger: an append-only, JSON-serialisable record of every event.

A training run records each step (or block of identical steps) as it happens and
saves the ledger atomically with every checkpoint. A resumed run loads it and
keeps appending, so budget already spent is never forgotten and never counted
twice. `to_event()` turns the ledger into one event for any accountant.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import _io, _validate
from ._events import ComposedEvent, DpEvent, SelfComposedEvent, event_from_dict

__all__ = ["LedgerEntry", "PrivacyLedger"]

LEDGER_FORMAT = "privaudit.ledger/1"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    """`count` runs of `event`: the first recorded at `timestamp`, the last at
    `last_timestamp` (ISO 8601, UTC; equal when count is 1)."""

    event: DpEvent
    count: int
    timestamp: str
    note: str = ""
    last_timestamp: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event.to_dict(),
            "count": self.count,
            "timestamp": self.timestamp,
            "last_timestamp": self.last_timestamp or self.timestamp,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerEntry:
        try:
            count = data["count"]
            _validate.integer(minimum=0, count=count)
            return cls(
                event=event_from_dict(data["event"]),
                count=int(count),
                timestamp=str(data["timestamp"]),
                note=str(data.get("note", "")),
                last_timestamp=str(data.get("last_timestamp", data["timestamp"])),
            )
        except KeyError as exc:
            raise ValueError(f"Ledger entry lacks the field {exc.args[0]!r}: {data!r}.") from None


class PrivacyLedger:
    """Append-only record of the DP events a run performed.

    Args:
        neighboring_relation: the relation the events are accounted under.
        metadata: free-form JSON-serialisable facts about the run (seed, dataset size, ...).
    """

    def __init__(
        self,
        *,
        neighboring_relation: str = "add_remove",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.neighboring_relation = str(neighboring_relation)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._entries: list[LedgerEntry] = []

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivacyLedger):
            return NotImplemented
        return (
            self.neighboring_relation == other.neighboring_relation
            and self.metadata == other.metadata
            and self._entries == other._entries
        )

    def record(self, event: DpEvent, count: int = 1, *, note: str = "", merge: bool = True) -> LedgerEntry:
        """Appends `count` runs of `event`.

        With `merge` (the default), runs of the same event and note as the last
        entry extend that entry's count and `last_timestamp`, so 10,000 identical
        DP-SGD steps take one entry, not 10,000. Nothing is ever removed.
        """
        if not isinstance(event, DpEvent):
            raise ValueError(f"Expected event to be a DpEvent, got {type(event).__name__}.")
        _validate.integer(minimum=0, count=count)
        now = _now()
        if merge and self._entries and self._entries[-1].event == event and self._entries[-1].note == note:
            last = self._entries[-1]
            entry = dataclasses.replace(last, count=last.count + int(count), last_timestamp=now)
            self._entries[-1] = entry
            return entry
        entry = LedgerEntry(event=event, count=int(count), timestamp=now, note=note, last_timestamp=now)
        self._entries.append(entry)
        return entry

    def extend(self, other: PrivacyLedger) -> None:
        """Appends every entry of `other` (same neighbouring relation required)."""
        if other.neighboring_relation != self.neighboring_relation:
            raise ValueError(
                "Cannot extend a ledger kept under neighboring_relation="
                f"{self.neighboring_relation!r} with one under {other.neighboring_relation!r}."
            )
        self._entries.extend(other._entries)

    def to_event(self) -> DpEvent:
        """The composition of everything recorded, for any accountant."""
        return ComposedEvent(tuple(SelfComposedEvent(e.event, e.count) for e in self._entries))

    def total_count(self) -> int:
        """Sum of the counts of all entries (e.g. optimizer steps taken)."""
        return sum(e.count for e in self._entries)

    # -- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "neighboring_relation": self.neighboring_relation,
            "metadata": self.metadata,
            "entries": [e.to_dict() for e in self._entries],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyLedger:
        if not isinstance(data, Mapping) or data.get("format") != LEDGER_FORMAT:
            raise ValueError(
                f"Not a privaudit ledger: expected format {LEDGER_FORMAT!r}, "
                f"got {data.get('format') if isinstance(data, Mapping) else type(data).__name__!r}."
            )
        entries = data.get("entries")
        if not isinstance(entries, list):
            raise ValueError("Ledger field 'entries' must be a list.")
        ledger = cls(
            neighboring_relation=str(data.get("neighboring_relation", "add_remove")),
            metadata=dict(data.get("metadata") or {}),
        )
        ledger._entries = [LedgerEntry.from_dict(e) for e in entries]
        return ledger

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the ledger atomically (temporary file + rename)."""
        _io.atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        """Reads a ledger; raises ValueError naming the file when it is unreadable."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"Cannot read ledger file {str(p)!r}: {exc.strerror or exc}.") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"Ledger file {str(p)!r} is not valid JSON: {exc}.") from None
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"Ledger file {str(p)!r}: {exc}") from None
