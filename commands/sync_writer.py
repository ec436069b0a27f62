"""The synchronous writer: each recorded call returns only once its events are committed.

Concurrent callers share commits (leader/follower group commit, as databases do for
their own log). A caller with a draft queues it; if no commit is in progress it becomes
the *leader*: it takes every draft queued so far, its own among them, and commits them in
one transaction, while callers that arrive meanwhile queue behind it and wait. When the
commit ends, every caller whose draft was in it returns (or raises), and one of those
still waiting leads the next commit. So a call still returns only after its own events
are committed (with the store's own disk sync), but N threads recording at once pay for
one transaction and one disk sync between them instead of N in turn. A single thread
leads every commit itself, so it waits for nobody.

A shared commit that fails is retried one draft at a time before anyone hears of it:
whether a caller's prediction was recorded depends on its own draft and the store,
never on another caller's draft in the same batch.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass

from commands.handlers import DraftHandler
from commands.writer import WriterStats, commit_drafts
from ledger.application import DuplicateStreamError
from ledger.errors import RecordingError, StoreUnavailableError


@dataclass(slots=True)
class _Waiting:
    """One caller's draft and, once a leader has tried to commit it, the outcome."""

    draft: object
    done: bool = False
    error: Exception | None = None


#: Every live SyncWriter, so that a forked child can reset their turn-taking.
_writers: weakref.WeakSet[SyncWriter] = weakref.WeakSet()


class SyncWriter:
    """Commits every draft before returning to the recorded call (group-committed)."""

    def __init__(self, handler: DraftHandler) -> None:
        self.handler = handler
        self.stats = WriterStats()
        self._closed = False
        self._start_turns()
        _writers.add(self)

    def _start_turns(self) -> None:
        self._turn = threading.Condition()
        self._queue: list[_Waiting] = []
        self._leader: int | None = None  # the thread committing a batch, if any

    def submit(self, draft: object) -> None:
        """Commit ``draft`` now; raise RecordingError if the store cannot take it."""
        if self._closed:
            msg = "This ledger is closed; open a new one to record more."
            raise RecordingError(msg, pending=1)
        mine = _Waiting(draft)
        me = threading.get_ident()
        leading = False
        with self._turn:
            self.stats.submitted += 1
            if self._leader == me:
                # Only reachable if building a batch recorded something itself: waiting
                # here would wait on this very thread, so commit that draft alone.
                batch = [mine]
            else:
                self._queue.append(mine)
                while self._leader is not None and not mine.done:
                    self._turn.wait()
                if mine.done:
                    return self._outcome(mine)
                batch, self._queue = self._queue, []
                self._leader, leading = me, True
        try:
            self._commit(batch)
        finally:
            with self._turn:
                for waiting in batch:
                    if not waiting.done:  # only if the commit itself was interrupted
                        waiting.error = InterruptedError("the commit was interrupted")
                        waiting.done = True
                if leading:
                    self._leader = None
                    self._turn.notify_all()
        return self._outcome(mine)

    def _commit(self, batch: list[_Waiting]) -> None:
        """Commit ``batch`` in one transaction; on failure, each of its drafts alone."""
        try:
            unbuildable = commit_drafts(self.handler, [waiting.draft for waiting in batch])
        except (StoreUnavailableError, DuplicateStreamError) as error:
            self.stats.last_error = str(error)
            if len(batch) == 1:
                batch[0].error, batch[0].done = error, True
                return
            for waiting in batch:
                self._commit([waiting])
            return
        self.stats.committed += len(batch)
        self.stats.batches += 1
        self.stats.unbuildable += unbuildable
        for waiting in batch:
            waiting.done = True

    @staticmethod
    def _outcome(waiting: _Waiting) -> None:
        if waiting.error is not None:
            msg = f"The prediction was not recorded: {waiting.error}"
            raise RecordingError(msg, pending=1) from waiting.error

    def flush(self, timeout: float | None = None) -> None:
        """Nothing to do: every draft is committed before its call returns."""

    def close(self, timeout: float | None = None) -> None:
        """Refuse further drafts (a commit in progress still finishes)."""
        self._closed = True

    @property
    def pending(self) -> int:
        """Drafts submitted and not yet committed: those queued behind a commit."""
        return len(self._queue)


def _after_fork_in_child() -> None:
    # A child forked while another thread committed would inherit a leader (and callers
    # waiting on it) that do not exist in the child, and wait for them for ever.
    for writer in list(_writers):
        writer._start_turns()


os.register_at_fork(after_in_child=_after_fork_in_child)
