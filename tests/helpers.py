"""Small helpers for reading what a test recorded."""

from __future__ import annotations

from typing import Any

from dspy_ledger import Ledger, RecordedEvent


def events_of(ledger: Ledger) -> list[RecordedEvent]:
    """Every event in the ledger, in order."""
    return list(ledger.events())


def types_of(events: list[RecordedEvent]) -> list[str]:
    """The event types, in order."""
    return [event.type for event in events]


def predictions(events: list[RecordedEvent]) -> dict[str, list[RecordedEvent]]:
    """Prediction streams: stream id -> its events in order."""
    out: dict[str, list[RecordedEvent]] = {}
    for event in events:
        if event.stream_type == "Prediction":
            out.setdefault(event.stream_id, []).append(event)
    return out


def only(events: list[RecordedEvent], event_type: str) -> list[dict[str, Any]]:
    """The data of every event of one type."""
    return [event.data for event in events if event.type == event_type]


def questions_asked(ledger: Ledger) -> list[str]:
    """The ``question`` input of every recorded prediction, in the order they started."""
    return [data["inputs"]["question"] for data in only(events_of(ledger), "PredictionStarted")]
