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
    assert len(expected) == PRODUCTION
    assert [str(p.prediction_id) for p in chosen] == list(expected)
    assert {str(p.prediction_id): _as_read(p) for p in chosen} == expected
    assert [_as_read(p) for p in in_ranges] == [_as_read(p) for p in chosen]
    assert {p["status"] for p in expected.values()} == {"completed", "failed"}
    # The replay served every prediction from what it read, and found its own.
    assert report.totals.exact_match_rate == 1.0
    assert {r.replay_prediction_id for r in report.results} == set(made)
    assert all(r.latency_after_ms for r in report.results)
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
