"""Automatic checkpoints: taken as the ledger grows, recorded in it, checked by verify."""

from __future__ import annotations

import time

import pytest

import dspy_ledger
from dspy_ledger.checkpointing import AutoCheckpointer, CheckpointPolicy
from ledger.errors import InvalidInputError
from tests.test_views import T0, record_prediction


def test_checkpoints_are_taken_automatically_and_verified(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPY_LEDGER_CHECKPOINT_EVERY", "6")
    monkeypatch.setenv("DSPY_LEDGER_CHECKPOINT_INTERVAL", "0.05")
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        for _ in range(4):
            record_prediction(ledger, actor="a", calls=[("m1", 0.1, False)], at=T0)
        deadline = time.monotonic() + 20
        auto = ledger._auto_checkpoints
        assert auto is not None
        while auto.taken == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert auto.taken >= 1
        ledger.stop_auto_checkpoints()
        recorded = [e for e in ledger.events() if e.type == "CheckpointRecorded"]
        assert recorded
        report = ledger.verify()
        assert report.ok
        assert report.checkpoints_checked == len(recorded)


def test_no_checkpoint_until_enough_events() -> None:
    position = [10]
    taken: list[int] = []

    def take() -> int:
        taken.append(position[0])
        position[0] += 1
        return position[0]

    auto = AutoCheckpointer(CheckpointPolicy(every=5, interval=60), lambda: position[0], take)
    position[0] = 14
    assert not auto.tick()
    position[0] = 15
    assert auto.tick()
    assert taken == [15]
    assert not auto.tick()


def test_a_look_due_while_paused_takes_its_checkpoint_when_the_pause_ends() -> None:
    position = [0]
    taken: list[int] = []

    def take() -> int:
        taken.append(position[0])
        return position[0]

    auto = AutoCheckpointer(CheckpointPolicy(every=5, interval=0.01), lambda: position[0], take)
    auto.start()
    try:
        with auto.paused():
            assert auto.busy
            position[0] = 7
            time.sleep(0.2)  # many looks fall due
            assert taken == []
        deadline = time.monotonic() + 20
        while not taken and time.monotonic() < deadline:
            time.sleep(0.01)
        assert taken == [7]
    finally:
        auto.stop()
    assert not auto.busy


def test_bad_settings_are_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPY_LEDGER_CHECKPOINT_EVERY", "often")
    with pytest.raises(InvalidInputError, match="DSPY_LEDGER_CHECKPOINT_EVERY"):
        CheckpointPolicy.from_environment()
    monkeypatch.setenv("DSPY_LEDGER_CHECKPOINT_EVERY", "0")
    assert not CheckpointPolicy.from_environment().enabled
