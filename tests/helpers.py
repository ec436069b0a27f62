"""Small helpers for reading what a test recorded, and for running a recording script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment

import dspy_ledger
from dspy_ledger import Ledger, RecordedEvent
from ledger.application import LedgerApplication
from ledger.storage import parse_url


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


def run_script(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter that imports this project (with ``env`` added
    to the environment); return what it did, whatever its exit status."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env},
    )


def whole_predictions(url: str) -> list[int]:
    """The (integer) questions of the predictions stored at ``url``, each checked whole:
    every started prediction in the store is completed too (no torn streams)."""
    ledger = dspy_ledger.open(url)
    events = events_of(ledger)
    ledger.close()
    completed = {e.stream_id for e in events if e.type == "PredictionCompleted"}
    started = {e.stream_id for e in events if e.type == "PredictionStarted"}
    assert started == completed
    return sorted(
        int(e.data["inputs"]["question"]) for e in events if e.type == "PredictionStarted"
    )


def open_factory(url: str, *, create_table: bool = True) -> Any:
    """The eventsourcing factory a ledger at ``url`` uses, as LedgerApplication builds it."""
    env = parse_url(url).eventsourcing_env()
    env["CREATE_TABLE"] = "y" if create_table else "n"
    return InfrastructureFactory.construct(Environment(LedgerApplication.name, env))
