"""The async writer commits many recorded predictions per transaction, and flush()
still returns only once everything submitted before it is committed."""

from __future__ import annotations

import dspy
from dspy.utils.dummies import DummyLM

import dspy_ledger
from tests.helpers import events_of, only


def test_async_recording_is_group_committed_and_flush_waits_for_all(ledger_url: str) -> None:
    ledger = dspy_ledger.open(ledger_url, durability="async")
    ledger.instrument()
    program = dspy.Predict("question -> answer")
    with dspy.context(lm=DummyLM([{"answer": "a"}] * 200)):
        for i in range(200):
            program(question=str(i))
    ledger.flush()
    stats = ledger._writer.stats
    assert stats.committed == 200
    assert stats.batches < 100  # predictions share transactions
    completed = only(events_of(ledger), "PredictionCompleted")
    assert len(completed) == 200
    ledger.close()


def test_flush_with_nothing_pending_returns_and_recording_goes_on(sqlite_url: str) -> None:
    ledger = dspy_ledger.open(sqlite_url, durability="async")
    ledger.flush()
    ledger.instrument()
    with dspy.context(lm=DummyLM([{"answer": "a"}] * 2)):
        dspy.Predict("question -> answer")(question="1")
        ledger.flush()
        assert len(only(events_of(ledger), "PredictionCompleted")) == 1
        dspy.Predict("question -> answer")(question="2")
        ledger.flush()
    assert len(only(events_of(ledger), "PredictionCompleted")) == 2
    ledger.close()
