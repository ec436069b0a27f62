"""A finished prediction's stream built in one step (``Prediction.finished``) holds the
very events the aggregate's commands trigger one after another, and reads back as the
same aggregate."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger.application import LedgerApplication
from ledger.domain import Prediction
from ledger.domain.base import DomainRuleError
from ledger.privacy.master import generate_master_key, load_master_key
from ledger.storage import parse_url

MASTER = load_master_key(generate_master_key())
_START = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
_NAMES = st.none() | st.sampled_from(["alice", "bob"])
_NOTES = st.none() | st.just({}) | st.just({"truncated": ["$.inputs.text"]})


def _who(draw: Any, complete: bool = False) -> dict[str, Any]:
    """Provenance arguments; unless ``complete``, an absent trace or span may be left out
    (an LM call's command takes every field of its event)."""
    who: dict[str, Any] = {"actor": draw(st.sampled_from(["svc", "batch-job"]))}
    for name in ("trace_id", "span_id"):
        value = draw(st.none() | st.sampled_from(["0af7651916cd43dd", "b7ad6b7169203331"]))
        if value is not None or complete or draw(st.booleans()):
            who[name] = value
    return who


def _call(draw: Any, index: int, dated: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "call_id": f"call-{index}",
        "parent_call_id": None if index == 0 else "call-0",
        "model": "openai/gpt-4o-mini",
        "provider": "openai",
        "request": {"temperature": 0.0},
        "messages": [{"role": "user", "content": f"question {index}"}],
        "outputs": [f"answer {index}"],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        "cost_usd": draw(st.none() | st.just(0.00042)),
        "cached_cost_usd": None,
        "latency_ms": 12.5,
        "cache_hit": False,
        "response_model": None,
        "error": draw(st.none() | st.just({"type": "Timeout", "message": "slow"})),
        **_who(draw, complete=True),
    }
    notes = draw(_NOTES)
    if notes is not None:
        fields["payload_notes"] = notes
    if draw(st.booleans()):  # an LM call may name its subject; else it inherits
        fields["subject"] = draw(_NAMES)
    if dated:
        fields["occurred_at"] = _START + timedelta(milliseconds=10 * (index + 1))
    return fields


@st.composite
def _streams(draw: Any, dated: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``Prediction.finished``: a start, LM calls and one ending."""
    start: dict[str, Any] = {
        "prediction_id": uuid.uuid4(),
        "program_version_id": draw(st.none() | st.just(uuid.uuid4())),
        "program_name": "qa",
        "inputs": {"question": "What is 2 + 2?"},
        "context": "bench",
        "payload_notes": draw(_NOTES),
        "subject": draw(_NAMES),
        "occurred_at": _START if dated else None,
        **_who(draw),
    }
    calls = [_call(draw, i, dated) for i in range(draw(st.integers(0, 3)))]
    ending: dict[str, Any] = {
        "call_tree": {"name": "qa", "children": []},
        "latency_ms": 80.0,
        "subject": draw(_NAMES),
        **_who(draw),
    }
    if dated:
        ending["occurred_at"] = _START + timedelta(seconds=1)
    if draw(st.booleans()):
        ending.update(outputs={"answer": "4"}, payload_notes=draw(_NOTES))
        return {"start": start, "model_calls": calls, "completed": ending}
    ending.update(error_type="ValueError", message="no answer")
    return {"start": start, "model_calls": calls, "failed": ending}


def _one_by_one(stream: dict[str, Any]) -> Prediction:
    """The same prediction recorded through the aggregate's commands."""
    prediction = Prediction.start(**stream["start"])
    for call in stream["model_calls"]:
        prediction.record_model_execution(**call)
    if "completed" in stream:
        prediction.complete(**stream["completed"])
    else:
        prediction.fail(**stream["failed"])
    return prediction


def _described(events: list[Any]) -> list[tuple[type, dict[str, Any]]]:
    return [(type(event), dict(vars(event))) for event in events]


@given(_streams())
@example(
    {  # an LM call's own subject, and an ending without one, which inherits the start's
        "start": {
            "prediction_id": uuid.UUID(int=1),
            "program_version_id": None,
            "program_name": "qa",
            "inputs": {},
            "context": "",
            "subject": "alice",
            "occurred_at": _START,
            "actor": "svc",
        },
        "model_calls": [
            {
                "call_id": "c",
                "parent_call_id": None,
                "model": "m",
                "provider": "p",
                "request": {},
                "messages": [],
                "outputs": [],
                "usage": {},
                "cost_usd": None,
                "cached_cost_usd": None,
                "latency_ms": 1.0,
                "cache_hit": True,
                "response_model": None,
                "error": None,
                "subject": "bob",
                "actor": "svc",
                "trace_id": None,
                "span_id": "b7ad6b7169203331",
                "occurred_at": _START,
            }
        ],
        "completed": {
            "outputs": {},
            "call_tree": {},
            "latency_ms": 1.0,
            "actor": "svc",
            "occurred_at": _START,
        },
    }
)
def test_the_stream_in_one_step_equals_the_commands_one_by_one(stream: dict[str, Any]) -> None:
    expected = _one_by_one(stream).collect_events()
    assert _described(Prediction.finished(**stream)) == _described(expected)


@given(_streams(dated=False))
def test_undated_events_are_dated_now_as_the_commands_date_them(stream: dict[str, Any]) -> None:
    before = datetime.now(UTC)
    events = Prediction.finished(**stream)
    after = datetime.now(UTC)
    expected = _one_by_one(stream).collect_events()
    assert all(before <= event.timestamp <= after for event in events)
    for event in (*events, *expected):
        del event.__dict__["timestamp"]
    assert _described(events) == _described(expected)


@pytest.mark.parametrize("endings", [{}, {"completed": {}, "failed": {}}])
def test_a_finished_prediction_ends_exactly_once(endings: dict[str, Any]) -> None:
    with pytest.raises(DomainRuleError, match="either completed or failed"):
        Prediction.finished(start={"prediction_id": uuid.uuid4()}, **endings)


@settings(max_examples=25, deadline=None)
@given(_streams())
def test_the_stream_reads_back_as_the_aggregate_the_commands_build(stream: dict[str, Any]) -> None:
    app = LedgerApplication(parse_url("sqlite:///:memory:"))
    app.subject_keys.master = MASTER  # a subject's personal fields are sealed and opened
    try:
        events = Prediction.finished(**stream)
        app.save_aggregates(*events)
        stored = app.get_aggregate(stream["start"]["prediction_id"])
        assert isinstance(stored, Prediction)
        expected = _one_by_one(stream)
        expected.collect_events()
        assert vars(stored) == vars(expected)
        assert stored.version == len(events) == len(stream["model_calls"]) + 2
        assert stored.status == ("completed" if "completed" in stream else "failed")
        assert _described(app.stream_events(stored.id)) == _described(events)
    finally:
        app.close()
