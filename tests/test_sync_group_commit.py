"""Synchronous recording group-commits concurrent callers: callers that arrive while a
commit is in progress share the next one, each returns only once its own events are
committed, and a shared commit that fails fails only the caller whose draft broke it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import dspy
import pytest
from dspy.utils.dummies import DummyLM

import dspy_ledger
from commands.handlers import DraftHandler
from commands.recorder import LedgerRecorder
from commands.sync_writer import SyncWriter
from dspy_ledger import RecordingError
from ledger.application import LedgerApplication
from ledger.storage import parse_url
from tests.helpers import events_of, only, questions_asked


class HeldCommit:
    """Holds the store's next commit until :meth:`release`; the real commit then runs."""

    def __init__(self, app: LedgerApplication) -> None:
        self.entered = threading.Event()
        self._released = threading.Event()
        self._held = False
        real = app.save_aggregates

        def save(*aggregates: Any) -> int | None:
            if not self._held:
                self._held = True
                self.entered.set()
                self._released.wait(30)
            return real(*aggregates)

        app.save_aggregates = save  # type: ignore[method-assign]

    def release(self) -> None:
        self._released.set()


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:  # pragma: no cover - reported as a failure
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.005)


def test_callers_arriving_during_a_commit_share_the_next_one(ledger_url: str) -> None:
    ledger = dspy_ledger.open(ledger_url)  # durability="sync", the default
    ledger.instrument()
    writer = ledger._writer
    assert isinstance(writer, SyncWriter)
    signature = dspy.Signature("question -> answer")  # parsed once: see test_durability
    lm = DummyLM([{"answer": "ok"}] * 10)
    with dspy.context(lm=lm):
        dspy.Predict(signature)(question="warm-up")  # registers the program version
    held = HeldCommit(writer.handler.app)
    returned: list[str] = []
    visible_on_return: dict[str, bool] = {}
    errors: list[BaseException] = []

    def predict(question: str) -> None:
        try:
            with dspy.context(lm=lm):
                dspy.Predict(signature)(question=question)
            returned.append(question)
            visible_on_return[question] = question in questions_asked(ledger)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    leader = threading.Thread(target=predict, args=("leader",))
    leader.start()
    assert held.entered.wait(30)  # the leader's commit is in progress, and held
    followers = [threading.Thread(target=predict, args=(f"f{n}",)) for n in range(3)]
    for thread in followers:
        thread.start()
    _wait_for(lambda: writer.pending == 3, "three callers queue behind the commit")
    assert returned == []  # nobody returns before its events are committed
    batches_before = writer.stats.batches
    held.release()
    for thread in (leader, *followers):
        thread.join(30)
    ledger.close()

    assert not errors
    assert sorted(returned) == ["f0", "f1", "f2", "leader"]
    assert visible_on_return == dict.fromkeys(returned, True)
    # The leader's commit, then one commit for the three that waited behind it.
    assert writer.stats.batches - batches_before == 2
    assert writer.stats.committed == 5
    reopened = dspy_ledger.open(ledger_url)
    completed = only(events_of(reopened), "PredictionCompleted")
    reopened.close()
    assert len(completed) == 5


def _captured_drafts(count: int) -> list[object]:
    """Drafts of ``count`` real predictions, captured by the recorder instead of stored."""
    from commands import hooks

    drafts: list[object] = []
    recorder = LedgerRecorder(drafts.append, default_actor="tester")
    hooks.attach(recorder)
    try:
        program = dspy.Predict("question -> answer")
        with dspy.context(lm=DummyLM([{"answer": "ok"}] * count)):
            for n in range(count):
                program(question=f"q{n}")
    finally:
        hooks.detach(recorder)
    return drafts


def test_a_shared_commit_that_fails_fails_only_the_caller_whose_draft_broke_it(
    ledger_url: str,
) -> None:
    first, second, third = _captured_drafts(3)
    app = LedgerApplication(parse_url(ledger_url))
    writer = SyncWriter(DraftHandler(app, max_string_bytes=1_000_000))
    writer.submit(first)
    held = HeldCommit(app)
    outcomes: dict[str, BaseException | None] = {}

    def submit(name: str, draft: object) -> None:
        try:
            writer.submit(draft)
            outcomes[name] = None
        except BaseException as error:
            outcomes[name] = error

    leader = threading.Thread(target=submit, args=("leader", second))
    leader.start()
    assert held.entered.wait(30)
    # Queued behind the held commit, so both go in the next one: a draft the store must
    # refuse (its prediction is recorded already) and a good one.
    duplicate = threading.Thread(target=submit, args=("duplicate", first))
    fresh = threading.Thread(target=submit, args=("fresh", third))
    duplicate.start()
    _wait_for(lambda: writer.pending == 1, "the duplicate queues")
    fresh.start()
    _wait_for(lambda: writer.pending == 2, "the fresh draft queues")
    held.release()
    for thread in (leader, duplicate, fresh):
        thread.join(30)

    assert outcomes["leader"] is None
    assert outcomes["fresh"] is None
    refused = outcomes["duplicate"]
    assert isinstance(refused, RecordingError)
    assert "was not recorded" in str(refused)
    app.close()
    reopened = dspy_ledger.open(ledger_url)
    questions = sorted(questions_asked(reopened))
    reopened.close()
    assert questions == ["q0", "q1", "q2"]  # each prediction once, the good one included


def test_a_child_forked_during_a_commit_records_without_waiting_for_it(
    sqlite_url: str,
) -> None:
    first, second, third = _captured_drafts(3)
    app = LedgerApplication(parse_url(sqlite_url))
    writer = SyncWriter(DraftHandler(app, max_string_bytes=1_000_000))
    writer.submit(first)
    held = HeldCommit(app)
    leader = threading.Thread(target=writer.submit, args=(second,))
    leader.start()
    assert held.entered.wait(30)  # a commit is in progress in another thread
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code
        try:
            writer.submit(third)  # the commit in progress is not this process's
            os._exit(0)
        except BaseException:
            os._exit(1)
    try:
        deadline = time.monotonic() + 30
        while (waited := os.waitpid(child, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                pytest.fail("the forked child waited for its parent's commit")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(waited[1]) == 0
    finally:
        held.release()
        leader.join(30)
    app.close()
    reopened = dspy_ledger.open(sqlite_url)
    questions = sorted(questions_asked(reopened))
    reopened.close()
    assert questions == ["q0", "q1", "q2"]
