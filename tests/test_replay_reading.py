"""Replay reads the record through the views' field reader: the same record, however stored.

The selection reads only the fields a replay needs, straight from the stored rows when
SQLite holds plain JSON, and decodes events in Python otherwise (PostgreSQL, compressed
rows) and for rows a data subject's key sealed. Each way must read exactly what
decoding every event through the library mapper reads.
"""

from __future__ import annotations

from typing import Any

import pytest

import dspy_ledger
from commands.drafts import ModelCallDraft, RecordedError
from commands.handlers import DraftHandler, billed_usd
from commands.replay.selection import (
    RECORD_FIELDS,
    RecordedPrediction,
    Selection,
    field_reader,
    select_predictions,
)
from dspy_ledger.demo import run_demo
from ledger.compression import COMPRESSION_ENV_VAR
from ledger.privacy import generate_master_key

DEMO = "dspy_ledger.demo:build_program"
PRODUCTION = 6  # production predictions the demo records (index 5 fails)
CALL_FIELDS = ("model", "response_model", "messages", "outputs", "error", "cost_usd", "latency_ms")


def _decoded_in_full(ledger: dspy_ledger.Ledger) -> dict[str, dict[str, Any]]:
    """Every finished production prediction, from every event decoded by the mapper."""
    found: dict[str, dict[str, Any]] = {}
    for event in ledger.events():
        data = event.data
        if event.type == "PredictionStarted":
            if data["context"] == "production" and not data["program_name"].startswith("lm:"):
                found[event.stream_id] = {
                    "inputs": data["inputs"],
                    "actor": event.actor,
                    "program_name": data["program_name"],
                    "program_version_id": data["program_version_id"],
                    "model_calls": [],
                    "status": "started",
                }
            continue
        prediction = found.get(event.stream_id)
        if prediction is None:
            continue
        if event.type == "ModelExecuted":
            prediction["model_calls"].append({name: data[name] for name in CALL_FIELDS})
        elif event.type in ("PredictionCompleted", "PredictionFailed"):
            prediction["status"] = "completed" if event.type == "PredictionCompleted" else "failed"
            prediction["outputs"] = data.get("outputs")
            prediction["error"] = (data.get("error_type"), data.get("message"))
            prediction["call_tree"] = data["call_tree"]
            prediction["latency_ms"] = data["latency_ms"]
    return {key: value for key, value in found.items() if value["status"] != "started"}


def _as_read(prediction: RecordedPrediction) -> dict[str, Any]:
    return {
        "inputs": prediction.inputs,
        "actor": prediction.actor,
        "program_name": prediction.program_name,
        "program_version_id": str(prediction.program_version_id),
        "model_calls": [
            {name: call[name] for name in CALL_FIELDS} for call in prediction.model_calls
        ],
        "status": prediction.status,
        "outputs": prediction.outputs,
        "error": (prediction.error_type, prediction.error_message),
        "call_tree": prediction.call_tree,
        "latency_ms": prediction.latency_ms,
    }


@pytest.mark.parametrize("stored", ["plain", "compressed", "sealed"])
def test_the_replay_reads_what_decoding_every_event_reads(
    ledger_url: str, stored: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if stored == "compressed":
        monkeypatch.setenv(COMPRESSION_ENV_VAR, "zlib")
    master_key = generate_master_key() if stored == "sealed" else None
    with dspy_ledger.open(ledger_url, master_key=master_key) as ledger:
        if stored == "sealed":
            # Every personal field (inputs, messages, outputs, call trees) is encrypted
            # under the customer's key: the database cannot read into them.
            with ledger.acting_for("customer-7"):
                run_demo(ledger, production_predictions=PRODUCTION)
        else:
            run_demo(ledger, production_predictions=PRODUCTION)
        # SQLite extracts plain JSON rows itself; the other cases are decoded in Python.
        database_reads = ledger_url.startswith("sqlite") and stored != "compressed"
        assert field_reader(ledger.app, RECORD_FIELDS).fast == database_reads
        expected = _decoded_in_full(ledger)
        chosen = select_predictions(ledger.app, Selection())
        # Reading each chosen stream's events in ranges of their own reads the same.
        monkeypatch.setattr("commands.replay.selection.WINDOW_GAP", 0)
        in_ranges = select_predictions(ledger.app, Selection())
        report = ledger.replay(DEMO)
        made = {
            event.stream_id: event.data
            for event in ledger.events()
            if event.type == "PredictionStarted"
            and event.data["context"] == f"replay:{report.replay_id}"
        }
        # What the replay's own predictions' events say: latency and what they billed.
        stored: dict[str, list[float]] = {stream: [0.0, 0.0] for stream in made}
        for event in ledger.events():
            if event.stream_id not in stored:
                continue
            if event.type == "ModelExecuted":
                stored[event.stream_id][1] += float(event.data["cost_usd"] or 0.0)
            elif event.type in ("PredictionCompleted", "PredictionFailed"):
                stored[event.stream_id][0] = event.data["latency_ms"]
    assert len(expected) == PRODUCTION
    assert [str(p.prediction_id) for p in chosen] == list(expected)
    assert {str(p.prediction_id): _as_read(p) for p in chosen} == expected
    assert [_as_read(p) for p in in_ranges] == [_as_read(p) for p in chosen]
    assert {p["status"] for p in expected.values()} == {"completed", "failed"}
    # The replay served every prediction from what it read, and found its own.
    assert report.totals.exact_match_rate == 1.0
    assert {r.replay_prediction_id for r in report.results} == set(made)
    assert all(r.latency_after_ms for r in report.results)
    # The report takes them from what the recorder gathered; they are what the store says.
    assert {
        str(r.replay_prediction_id): [r.latency_after_ms, r.cost_after_usd] for r in report.results
    } == stored
    recorded_cost = sum(
        float(call["cost_usd"] or 0.0) for p in expected.values() for call in p["model_calls"]
    )
    assert report.totals.cost_before_usd == pytest.approx(recorded_cost) and recorded_cost > 0


def test_filters_choose_among_interleaved_streams(sqlite_url: str) -> None:
    with dspy_ledger.open(sqlite_url) as ledger:
        run_demo(ledger, production_predictions=PRODUCTION)
        everyone = _decoded_in_full(ledger)
        bob = select_predictions(ledger.app, Selection(actor="bob"))
        since = sorted(p.timestamp for p in select_predictions(ledger.app, Selection()))[2]
        later = select_predictions(ledger.app, Selection(since=since))
        evaluations = select_predictions(ledger.app, Selection(context=None))
    # Alice and Bob alternate: Bob's streams lie between Alice's.
    assert [str(p.prediction_id) for p in bob] == [
        key for key, value in everyone.items() if value["actor"] == "bob"
    ]
    assert all(_as_read(p) == everyone[str(p.prediction_id)] for p in bob)
    assert len(later) == PRODUCTION - 2
    assert all(p.timestamp >= since for p in later)
    # Any context but replays: the evaluations' predictions too, not only production.
    assert {p.context for p in evaluations} >= {"production"}
    assert len(evaluations) > PRODUCTION


@pytest.mark.parametrize("one_pass_share", [0.0, 0.5, 2.0])
def test_one_pass_two_passes_and_a_switch_between_them_read_the_same(
    sqlite_url: str, one_pass_share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of five events: the demo's production, evaluation and optimization streams
    # interleave, so whether a batch is mostly chosen changes from batch to batch. A share
    # of 0 never leaves the one pass, 2 leaves it after the first batch.
    with dspy_ledger.open(sqlite_url) as ledger:
        run_demo(ledger, production_predictions=PRODUCTION)
        everyone = _decoded_in_full(ledger)
        monkeypatch.setattr("commands.replay.selection.BATCH", 5)
        monkeypatch.setattr("commands.replay.selection.ONE_PASS_SHARE", one_pass_share)
        chosen = select_predictions(ledger.app, Selection())
        bob = select_predictions(ledger.app, Selection(actor="bob"))
        evaluations = select_predictions(ledger.app, Selection(context=None))
        assert len(list(ledger.events())) > 5 * 10  # many batches
    assert [str(p.prediction_id) for p in chosen] == list(everyone)
    assert {str(p.prediction_id): _as_read(p) for p in chosen} == everyone
    assert [str(p.prediction_id) for p in bob] == [
        key for key, value in everyone.items() if value["actor"] == "bob"
    ]
    assert all(_as_read(p) == everyone[str(p.prediction_id)] for p in bob)
    assert len(evaluations) > PRODUCTION
    assert all(p.status in ("completed", "failed") for p in evaluations)


def test_a_replay_names_only_the_predictions_the_store_holds(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One of the replay's own predictions cannot be built into events (the writer logs
    # it and counts it): the report must not name it, so the replay reads its
    # predictions back from the store rather than trusting what the recorder gathered.
    monkeypatch.setenv("DSPY_LEDGER_WRITER", "thread")  # the handler runs in this process
    refused: list[str] = []
    build = DraftHandler._prediction

    def build_all_but_one(handler: DraftHandler, draft: Any, batch_ids: set[Any]) -> Any:
        if draft.context.startswith("replay:") and not refused:
            refused.append(str(draft.prediction_id))
            raise RuntimeError("this draft cannot be built")
        return build(handler, draft, batch_ids)

    with dspy_ledger.open(sqlite_url, durability="async") as ledger:
        run_demo(ledger, production_predictions=PRODUCTION)
        monkeypatch.setattr(DraftHandler, "_prediction", build_all_but_one)
        report = ledger.replay(DEMO)
        stored = {e.stream_id for e in ledger.events() if e.type == "PredictionStarted"}
        verdicts = [e.data for e in ledger.events() if e.type == "PredictionReplayed"]
    named = [r.replay_prediction_id for r in report.results]
    assert len(refused) == 1 and refused[0] not in named and refused[0] not in stored
    assert named.count(None) == 1
    assert all(name in stored for name in named if name is not None)
    assert sorted(v["replay_prediction_id"] or "" for v in verdicts) == sorted(
        name or "" for name in named
    )


@pytest.mark.parametrize("cache_hit", [True, False, None])
@pytest.mark.parametrize("usage", [{}, {"prompt_tokens": 3, "completion_tokens": 2}])
@pytest.mark.parametrize("cost", [0.25, None])
@pytest.mark.parametrize("failed", [False, True])
def test_what_a_replay_takes_as_billed_is_what_the_writer_records(
    sqlite_url: str, cache_hit: bool | None, usage: dict[str, int], cost: float | None, failed: bool
) -> None:
    call = ModelCallDraft(
        call_id="c",
        parent_call_id=None,
        model="openai/sim-qa-small",
        provider="openai",
        request={},
        dropped_params=[],
        inputs={},
        entry={"usage": usage, "cost": cost, "messages": [], "outputs": ["x"]},
        cache_hit=cache_hit,
        latency_ms=1.0,
        occurred_us=0,
        error=RecordedError("ValueError", "bad") if failed else None,
        outputs=["x"],
        secrets=frozenset(),
    )
    with dspy_ledger.open(sqlite_url) as ledger:
        recorded = ledger._handler._model_call(call)
    assert billed_usd(call) == recorded["cost_usd"]
