"""The cost view's LM calls whose prediction started in an earlier batch.

A ``ModelExecuted`` takes its program, program version and context from its
prediction's ``PredictionStarted``. When the two fall in different batches (small
batches while following the ledger, a batch boundary in a rebuild, a view resumed
after a restart or a crash, a point-in-time view stopped in between), the view reads
the ``PredictionStarted`` back from the ledger by stream id. Every test here puts
batch boundaries between the two and checks each call against the ledger's own events.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import dspy_ledger
from ledger.domain import Prediction
from projections.base import context_kind
from projections.runner import catch_up, open_memory_view, open_view, rebuild

T0 = datetime(2025, 3, 1, tzinfo=UTC)
CONTEXTS = ("production", "evaluation:e1", "optimization:o1", "replay:r1")


def record(
    ledger: dspy_ledger.Ledger, i: int, *, calls: int = 2, subject: str | None = None
) -> None:
    """Save prediction ``i``: its own program, version and context, and ``calls`` LM calls."""
    at = T0 + timedelta(hours=i)
    prediction = Prediction.start(
        prediction_id=uuid.uuid4(),
        program_version_id=uuid.uuid5(uuid.NAMESPACE_URL, f"version-{i % 3}"),
        program_name=f"program-{i}",
        inputs={"question": f"q{i}"},
        context=CONTEXTS[i % len(CONTEXTS)],
        actor="tester",
        subject=subject,
        occurred_at=at,
    )
    for n in range(calls):
        prediction.record_model_execution(
            occurred_at=at,
            call_id=uuid.uuid4().hex,
            parent_call_id=None,
            model=f"m{n}",
            provider="openai",
            request={},
            messages=[],
            outputs=[],
            usage={"prompt_tokens": 100, "completion_tokens": 10},
            cost_usd=0.001 * (i + 1),
            cached_cost_usd=None,
            latency_ms=1.0,
            cache_hit=False,
            response_model=None,
            error=None,
            actor="tester",
            trace_id=None,
            span_id=None,
        )
    prediction.complete(outputs={}, call_tree={}, latency_ms=1.0, actor="tester", occurred_at=at)
    ledger.app.save_aggregates(prediction)


def expected_calls(ledger: dspy_ledger.Ledger) -> list[tuple[int, Any, Any, str]]:
    """(position, program, version, context kind) of every call, from the ledger's events."""
    started: dict[str, tuple[Any, Any, str]] = {}
    calls = []
    for event in ledger.events():
        if event.type == "PredictionStarted":
            version = event.data["program_version_id"]
            started[str(event.stream_id)] = (
                event.data["program_name"],
                None if version is None else str(version),
                context_kind(event.data["context"]),
            )
        elif event.type == "ModelExecuted":
            calls.append((event.position, *started[str(event.stream_id)]))
    return calls


def view_calls(projection: Any) -> list[tuple[int, Any, Any, str]]:
    """(position, program, version, context kind) of every call the cost view holds."""
    rows = projection.view.rows(
        "SELECT position, program_name, program_version_id, context_kind"
        " FROM {cost_calls} ORDER BY position"
    )
    return [
        (int(r["position"]), r["program_name"], r["program_version_id"], r["context_kind"])
        for r in rows
    ]


def rollup(projection: Any) -> list[tuple[Any, ...]]:
    """The rollup's keys and call counts (what reports group by)."""
    rows = projection.view.rows(
        "SELECT day, model, program_name, program_version_id, context_kind, calls"
        " FROM {cost_rollup} ORDER BY day, model, program_name, program_version_id, context_kind"
    )
    return [tuple(r.values()) for r in rows]


def starts_and_calls(ledger: dspy_ledger.Ledger) -> list[int]:
    """Positions of every PredictionStarted and ModelExecuted."""
    return [e.position for e in ledger.events() if e.type in ("PredictionStarted", "ModelExecuted")]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
def test_calls_in_later_batches_than_their_prediction_get_its_program_and_context(
    ledger_url: str, batch_size: int
) -> None:
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        for i in range(8):
            record(ledger, i, calls=1 + i % 3)
        expected = expected_calls(ledger)
        followed = open_view(ledger.app, "cost")
        assert catch_up(followed, batch_size=batch_size) == ledger.app.last_position()
        assert view_calls(followed) == expected
        whole = open_memory_view(ledger.app, "cost")
        catch_up(whole, batch_size=10_000)
        assert view_calls(whole) == expected
        assert rollup(followed) == rollup(whole)
        # A rebuild in small batches again, over the rows the first pass wrote.
        assert rebuild(followed, batch_size=batch_size + 1) == ledger.app.last_position()
        assert view_calls(followed) == expected and rollup(followed) == rollup(whole)


def test_a_view_resumed_after_a_restart_at_any_position_gets_every_call_right(
    ledger_url: str,
) -> None:
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        for i in range(4):
            record(ledger, i)
        expected = expected_calls(ledger)
        stops = starts_and_calls(ledger)
    for stop in stops:
        # A rebuild that stopped at ``stop`` (a crash), then a new process resuming it.
        with dspy_ledger.open(ledger_url) as ledger:
            projection = open_view(ledger.app, "cost")
            projection.view.reset()
            catch_up(projection, stop=stop)
        with dspy_ledger.open(ledger_url) as reopened:
            resumed = open_view(reopened.app, "cost")
            assert resumed.view.position() == stop
            catch_up(resumed)
            assert view_calls(resumed) == expected, stop


def test_a_point_in_time_view_stopped_between_a_start_and_its_calls(ledger_url: str) -> None:
    # The in-memory view lives in another database than the events it reads.
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        for i in range(3):
            record(ledger, i)
        expected = expected_calls(ledger)
        for stop in starts_and_calls(ledger):
            projection = open_memory_view(ledger.app, "cost")
            catch_up(projection, stop=stop)
            assert view_calls(projection) == [c for c in expected if c[0] <= stop]
            catch_up(projection)
            assert view_calls(projection) == expected


def test_a_sealed_and_erased_prediction_keeps_its_program_for_later_calls(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger.compression import COMPRESSION_ENV_VAR
    from ledger.privacy import generate_master_key

    # Compressed states and a data subject's key: only the library mapper reads these.
    monkeypatch.setenv(COMPRESSION_ENV_VAR, "zlib")
    key = generate_master_key()
    with dspy_ledger.open(ledger_url, actor="tester", master_key=key) as ledger:
        record(ledger, 0, subject="alice")
        record(ledger, 1, subject="bob")
        ledger.forget("alice", reason="asked")
        expected = expected_calls(ledger)
        started = [e for e in ledger.events() if e.type == "PredictionStarted"]
        assert [e.data.get("erased", False) for e in started] == [True, False]
        projection = open_view(ledger.app, "cost")
        assert not projection.reader.fast
        # Forgetting brought the view up to date; rebuild it one event per batch.
        assert rebuild(projection, batch_size=1) == ledger.app.last_position()
        assert view_calls(projection) == expected
        assert {c[1] for c in expected} == {"program-0", "program-1"}


def test_opening_the_view_drops_the_table_earlier_versions_kept(sqlite_url: str) -> None:
    with dspy_ledger.open(sqlite_url, actor="tester") as ledger:
        record(ledger, 0)
        catch_up(open_view(ledger.app, "cost"))
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE cost_predictions (prediction_id TEXT PRIMARY KEY)")
    with dspy_ledger.open(sqlite_url) as ledger:
        projection = open_view(ledger.app, "cost")
        record(ledger, 1)
        catch_up(projection, batch_size=2)
        assert view_calls(projection) == expected_calls(ledger)
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "cost_predictions" not in tables and "cost_calls" in tables
