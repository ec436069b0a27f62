"""Writers: how finished drafts reach the store.

- :class:`~commands.sync_writer.SyncWriter` (its own module) commits each draft before
  the recorded call returns, group-committing concurrent callers; a failure raises
  :class:`~ledger.errors.RecordingError` to the caller.
- :class:`AsyncWriter` hands drafts to one background thread that group-commits
  batches (one transaction per batch). Its queue is bounded: when the store is slow or
  away, ``submit`` blocks (backpressure) rather than drop anything. Failed batches are
  retried with exponential backoff until they commit or the ledger is closed;
  ``flush()`` returns only once everything submitted before it is committed.

A batch is committed when it is full, when no draft has arrived for ``linger`` seconds,
or at once when someone waits in ``flush()``. Lingering a few milliseconds turns a
stream of single drafts into batches of dozens: one transaction, one disk sync and one
round of the library's bookkeeping for all of them (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from uuid import UUID

from eventsourcing.domain import Aggregate

from commands.handlers import DraftHandler, describe_failure
from ledger.application import DuplicateStreamError
from ledger.domain import Dataset, LedgerEvent, ProgramVersion
from ledger.errors import RecordingError, StoreUnavailableError

logger = logging.getLogger("dspy_ledger")

#: Put in the queue by ``flush()`` to wake a lingering writer; never committed.
_WAKE = object()


class WriterStats:
    """Counters a writer keeps (shown by ``dspy-ledger stats`` and tests)."""

    def __init__(self) -> None:
        self.submitted = 0
        self.committed = 0
        self.batches = 0
        self.retries = 0
        self.unbuildable = 0
        self.last_error: str | None = None


def commit_drafts(handler: DraftHandler, drafts: list[object]) -> int:
    """Build and commit the events of ``drafts`` in one transaction.

    Returns how many drafts could not be turned into events (logged loudly).
    Raises StoreUnavailableError when the store cannot take the batch.
    """
    for attempt in range(3):
        records, unbuildable = _build(handler, drafts)
        if not records:
            return unbuildable
        try:
            handler.app.save_aggregates(*records)
        except DuplicateStreamError:
            # Another writer registered the same content-addressed stream first. Saving
            # consumed the aggregates' pending events, so build again from the drafts:
            # the handler now finds the shared stream in the store and leaves it out.
            handler.forget_known(r.id for r in records if isinstance(r, (ProgramVersion, Dataset)))
            if attempt == 2:
                raise
            continue
        handler.mark_written(records)
        return unbuildable
    return 0  # pragma: no cover - the loop returns or raises


def _build(
    handler: DraftHandler, drafts: list[object]
) -> tuple[list[Aggregate | LedgerEvent], int]:
    records: list[Aggregate | LedgerEvent] = []
    batch_ids: set[UUID] = set()
    unbuildable = 0
    for draft in drafts:
        try:
            records.extend(handler.build(draft, batch_ids))
        except StoreUnavailableError:
            raise
        except Exception as error:
            unbuildable += 1
            logger.exception("dspy-ledger could not record %s", describe_failure(draft, error))
    return records, unbuildable


class AsyncWriter:
    """Group-commits drafts from a bounded queue on a background thread."""

    def __init__(
        self,
        handler: DraftHandler,
        *,
        max_queue: int = 10_000,
        max_batch: int = 500,
        max_backoff: float = 5.0,
        linger: float = 0.02,
        on_error: Callable[[str], None] | None = None,
        on_commit: Callable[[WriterStats], None] | None = None,
    ) -> None:
        self.handler = handler
        self.stats = WriterStats()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._max_batch = max_batch
        self._linger = linger
        self._waiters = 0  # threads blocked in flush(): commit without lingering
        self._max_backoff = max_backoff
        self._on_error = on_error
        self._on_commit = on_commit
        self._nudged = False  # end the current lingering once (see nudge)
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dspy-ledger-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Drafts submitted and not yet committed."""
        with self._cond:
            return self.stats.submitted - self.stats.committed

    def submit(self, draft: object) -> None:
        """Queue one draft; blocks while the queue is full (backpressure, never drops)."""
        if self._closed:
            msg = "This ledger is closed; open a new one to record more."
            raise RecordingError(msg, pending=1)
        with self._cond:
            self.stats.submitted += 1
        self._queue.put(draft)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every draft submitted so far is committed.

        Raises RecordingError if that does not happen within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self.stats.submitted
            if self.stats.committed >= target:
                return
            self._waiters += 1
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)  # end the writer's lingering now
        with self._cond:
            try:
                while self.stats.committed < target:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        pending = target - self.stats.committed
                        msg = (
                            f"{pending} recorded call(s) are not yet written to the ledger "
                            f"(last error: {self.stats.last_error or 'none'})."
                        )
                        raise RecordingError(msg, pending=pending)
                    self._cond.wait(timeout=0.5 if remaining is None else min(remaining, 0.5))
            finally:
                self._waiters -= 1

    def nudge(self) -> None:
        """Commit what is queued without lingering, without waiting for it."""
        self._nudged = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, then stop the writer thread.

        Raises RecordingError naming how many drafts could not be written in time.
        """
        self._closed = True
        try:
            self.flush(timeout)
        finally:
            self._stopping.set()
            self._thread.join(timeout=5)

    def _take_batch(self) -> list[object]:
        batch: list[object] = []
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return batch
        if first is not _WAKE:
            batch.append(first)
        deadline = time.monotonic() + self._linger
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._waiters or self._nudged or self._stopping.is_set():
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is not _WAKE:
                batch.append(item)
        self._nudged = False
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                if self._stopping.is_set():
                    return
                continue
            self._commit_with_retry(batch)

    def _commit_with_retry(self, batch: list[object]) -> None:
        unbuildable = commit_with_retry(
            self.handler,
            batch,
            self.stats,
            give_up=self._stopping.is_set,  # closing: close() reports what is left
            max_backoff=self._max_backoff,
            on_error=self._on_error,
        )
        if unbuildable is None:
            return
        with self._cond:
            self.stats.committed += len(batch)
            self.stats.unbuildable += unbuildable
            self.stats.batches += 1
            self._cond.notify_all()
        if self._on_commit is not None:
            self._on_commit(self.stats)


def commit_with_retry(
    handler: DraftHandler,
    batch: list[object],
    stats: WriterStats,
    *,
    give_up: Callable[[], bool],
    max_backoff: float = 5.0,
    on_error: Callable[[str], None] | None = None,
) -> int | None:
    """Commit one batch, retrying with exponential backoff while the store refuses it.

    Returns how many drafts could not be turned into events, or None if ``give_up()``
    said to stop retrying (the batch is then not committed). Failures are counted in
    ``stats`` and logged (the first, then every twentieth).
    """
    backoff = 0.05
    while True:
        try:
            return commit_drafts(handler, batch)
        except Exception as error:
            stats.retries += 1
            stats.last_error = str(error)
            if stats.retries == 1 or stats.retries % 20 == 0:
                logger.error(
                    "dspy-ledger could not write %d recorded call(s), retrying: %s",
                    len(batch),
                    error,
                )
            if on_error is not None:
                on_error(str(error))
            if give_up():
                return None
            time.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
