"""The process writer: ``async`` durability with the events built in another process.

Turning a draft into events (converting payloads to JSON, redacting, encrypting,
encoding, inserting) costs a recorded DSPy prediction more than the recorder itself. In
a background *thread* that work still holds the interpreter lock the program needs, so
the program slows down by all of it. :class:`ProcessWriter` instead pickles each
draft when the call ends, its live objects reduced to plain data
(:func:`commands.portable_drafts.encode_draft`), and hands it over a pipe to a writer
process of its own (:mod:`commands.writer_process`), which group-commits exactly the
events an in-process writer would. The program pays for the copy; the rest runs on another core.

The guarantees are those of :class:`~commands.writer.AsyncWriter`: the pipe is bounded
(``submit`` blocks rather than drop when the writer falls behind), ``flush()`` returns
only once everything submitted before it is committed, and ``close()`` reports what
could not be written. If the writer process dies, this process takes over: it writes
the drafts the writer had not acknowledged (skipping any it had committed) with an
in-process writer, and goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

from commands.drafts import EvaluationDraft, OptimizationDraft, PredictionDraft
from commands.handlers import DraftHandler
from commands.portable_drafts import DraftEncoder, decode_draft
from commands.writer import AsyncWriter, WriterStats
from commands.writer_protocol import (
    CONFIG,
    DRAFTS,
    FLUSH,
    STATUS,
    WriterConfig,
    WriterStatus,
    encode,
    frame,
    loads,
    read_frame,
)
from ledger.errors import RecordingError
from ledger.subprocess_command import module_command

logger = logging.getLogger("dspy_ledger")

_FLUSH_FRAME = encode(FLUSH, None)
#: The pipe's size where it can be set: what the writer process may fall behind by.
_PIPE_BYTES = 1 << 21


def _own_stream_id(draft: object) -> Any:
    if isinstance(draft, PredictionDraft):
        return draft.prediction_id
    if isinstance(draft, EvaluationDraft):
        return draft.evaluation_id
    if isinstance(draft, OptimizationDraft):
        return draft.run_id
    return None


#: How many times this process is a fork's child: a writer made before the last fork
#: belongs to the parent. Counted at fork time rather than asking ``os.getpid()`` on
#: every draft: a system call per prediction, and each costs the program's thread more
#: than its own few hundred nanoseconds (its caches).
_forks_seen = 0


def _count_fork() -> None:
    global _forks_seen  # noqa: PLW0603 - process-wide, changed only in a forked child
    _forks_seen += 1


os.register_at_fork(after_in_child=_count_fork)


class ProcessWriter:
    """Hands drafts to a writer process that group-commits them (see module docstring)."""

    def __init__(self, handler: DraftHandler, config: WriterConfig) -> None:
        self.handler = handler
        self._config = config
        self._forks = _forks_seen
        self._cond = threading.Condition()
        self._submitted = 0
        self._status = WriterStatus(0, 0, 0, 0, None)
        # Drafts (pickled) handed to the writer process and not yet acknowledged as
        # committed, oldest first: what this process writes if the writer process dies.
        # The writer reports at most once a second (or every REPORT_DRAFTS drafts), so
        # this holds up to that many.
        self._unacknowledged: deque[bytes] = deque()
        self._fallback: AsyncWriter | None = None
        self._taken_over_at = 0  # drafts committed (or found committed) before a takeover
        # Program versions whose state went down the pipe: later drafts name them by id,
        # and this process reads them back with it if it takes over.
        self._encoder = DraftEncoder()
        # Held while writing to the pipe: the pipe's order is the order drafts are
        # committed and acknowledged in, and a version's state precedes its mentions.
        self._pipe_lock = threading.Lock()
        self._closing = False
        self._closed = False
        self._ready = threading.Event()  # the writer process has opened the store
        # A second pipe whose only use is to wake the writer process from lingering when
        # someone waits in flush(): drafts on the main pipe must not wake it (each
        # wake-up is paid inside the program's write), but a flush should not wait out
        # the linger either.
        wake_read, self._wake = os.pipe() if os.name == "posix" else (-1, -1)
        try:
            self._process = subprocess.Popen(
                module_command("commands.writer_process"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,  # a Ctrl-C aimed at the program must not kill it
                close_fds=True,
                pass_fds=(wake_read,) if wake_read >= 0 else (),
            )
        except BaseException:
            if self._wake >= 0:
                os.close(self._wake)  # no writer process to wake: the caller falls back
            raise
        finally:
            if wake_read >= 0:
                os.close(wake_read)
        if self._wake >= 0:
            os.set_blocking(self._wake, False)  # a full wake-up pipe is awake enough
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._input: IO[bytes] = self._process.stdin
        _widen_pipe(self._input)
        wake_fd = wake_read if wake_read >= 0 else None
        self._write(encode(CONFIG, dataclasses.replace(config, wake_fd=wake_fd)))
        self._receiver = threading.Thread(
            target=self._receive,
            args=(self._process.stdout,),
            name="dspy-ledger-writer-status",
            daemon=True,
        )
        self._receiver.start()

    # -- the writer interface ----------------------------------------------------------

    @property
    def stats(self) -> WriterStats:
        """Counters over both processes (committed, batches, retries, errors), the writer
        process's as of its last report (see :attr:`pending`)."""
        stats = WriterStats()
        with self._cond:
            status, fallback = self._status, self._fallback
            stats.submitted = self._submitted
            stats.committed = self._committed()
            stats.unbuildable = status.unbuildable
            stats.batches = status.batches
            stats.retries = status.retries
            stats.last_error = status.last_error
        if fallback is not None:
            own = fallback.stats
            stats.unbuildable += own.unbuildable
            stats.batches += own.batches
            stats.retries += own.retries
            stats.last_error = own.last_error or stats.last_error
        return stats

    @property
    def pending(self) -> int:
        """Drafts submitted and not yet committed, as of the writer process's last report:
        exact right after ``flush()``, otherwise up to a second behind."""
        with self._cond:
            return self._submitted - self._committed()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the writer process has started and opened the store (or this
        process has taken over); False if that did not happen within ``timeout``."""
        return self._ready.wait(timeout)

    def submit(self, draft: object) -> None:
        """Pickle one draft and hand it to the writer process.

        Blocks while the pipe is full (backpressure: the writer is behind), never drops.
        """
        if self._closed:
            msg = "This ledger is closed; open a new one to record more."
            raise RecordingError(msg, pending=1)
        self._own_process()
        with self._pipe_lock:
            # Both counters change only under the pipe lock; the condition is not taken
            # here (a lock round trip per prediction): readers under it see whole values,
            # and the receiver pops a draft only after the writer process has committed
            # it, which is after it is appended and written below.
            self._submitted += 1
            if self._fallback is not None:
                self._fallback.submit(draft)
                return
            body = self._encoder.encode(draft)
            self._unacknowledged.append(body)
            try:
                self._write(frame(DRAFTS, body))
            except OSError:
                self._take_over()  # the writer process is gone; the draft is not lost

    def flush(self, timeout: float | None = None) -> None:
        """Block until every draft submitted so far is committed.

        Raises RecordingError if that does not happen within ``timeout`` seconds.
        """
        self._own_process()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            if self._committed() >= target:
                return
        self._ask_to_commit()
        with self._cond:
            while self._committed() < target:
                if self._fallback is not None:
                    self._fallback.nudge()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    pending = target - self._committed()
                    msg = (
                        f"{pending} recorded call(s) are not yet written to the ledger "
                        f"(last error: {self.stats.last_error or 'none'})."
                    )
                    raise RecordingError(msg, pending=pending)
                self._cond.wait(timeout=0.5 if remaining is None else min(remaining, 0.5))

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, then stop the writer process.

        Raises RecordingError naming how many drafts could not be written in time.
        """
        self._closed = True
        try:
            self.flush(timeout)
        finally:
            self._closing = True
            with self._pipe_lock, contextlib.suppress(OSError):
                self._input.close()  # the writer commits what it has, and exits
            if self._wake >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._wake)
                self._wake = -1
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._receiver.join(timeout=5)
            if self._fallback is not None:
                self._fallback.close(timeout)

    # -- inside ------------------------------------------------------------------------

    def _own_process(self) -> None:
        """In a forked copy of the recording process, start a writer process of its own.

        The pipe (and the writer at its end) belong to the process that opened the
        ledger: frames written to it from two processes would interleave.
        """
        if self._forks != _forks_seen:
            self.__init__(self.handler, self._config)  # type: ignore[misc]

    def _committed(self) -> int:
        # Called with the condition held.
        if self._fallback is not None:
            return self._taken_over_at + self._fallback.stats.committed
        return self._status.committed

    def _write(self, data: bytes) -> None:
        """Write all of ``data`` to the pipe (a signal can cut a large write short)."""
        written = self._input.write(data)
        if written == len(data):
            return
        view = memoryview(data)[written or 0 :]
        while view:
            written = self._input.write(view)
            view = view[written or 0 :]

    def _wake_waiters(self, _stats: WriterStats | None = None) -> None:
        with self._cond:
            self._cond.notify_all()

    def _ask_to_commit(self) -> None:
        """End the writer process's lingering: someone waits in ``flush()``."""
        with self._pipe_lock:
            if self._fallback is None and not self._input.closed:
                try:
                    self._write(_FLUSH_FRAME)
                except OSError:
                    self._take_over()
                    return
                if self._wake >= 0:
                    # After the frame: woken, the writer finds the request in the pipe.
                    with contextlib.suppress(OSError):  # full, or the writer is gone
                        os.write(self._wake, b"!")

    def _receive(self, source: IO[bytes]) -> None:
        """Follow the writer process's counters; take over when it dies."""
        while (received := read_frame(source)) is not None:
            kind, body = received
            status = loads(body) if kind == STATUS else None
            if not isinstance(status, WriterStatus):
                continue
            with self._cond:
                if self._fallback is not None:
                    continue  # taken over: the store, not the writer, says what is in
                for _ in range(status.committed - self._status.committed):
                    self._unacknowledged.popleft()
                self._status = status
                self._cond.notify_all()
            self._ready.set()
        if not self._closing:
            with self._pipe_lock:
                self._take_over()

    def _take_over(self) -> None:
        """The writer process died: write what it had not acknowledged, here.

        Called with the pipe lock held, so drafts submitted meanwhile follow in order.
        """
        if self._fallback is not None:
            return
        logger.error(
            "dspy-ledger's writer process stopped (exit status %s); this process now "
            "writes what it had not acknowledged, and everything recorded from now on.",
            self._process.poll(),
        )
        fallback = AsyncWriter(self.handler, on_commit=self._wake_waiters)
        with self._cond:
            sent = self._encoder.sent  # the versions the bodies name by id only
            pending = [decode_draft(body, sent) for body in self._unacknowledged]
            self._unacknowledged.clear()
            # A batch may have been committed just before the writer died, unreported.
            resubmit = [d for d in pending if not self._already_committed(d)]
            self._taken_over_at = self._status.committed + (len(pending) - len(resubmit))
            self._fallback = fallback
            self._ready.set()
        for draft in resubmit:
            fallback.submit(draft)
        self._wake_waiters()

    def _already_committed(self, draft: object) -> bool:
        stream_id = _own_stream_id(draft)
        if stream_id is None:
            return False
        try:
            return self.handler.app.stream_exists(stream_id)
        except Exception:  # the store is away too: write it again, the retry loop waits
            return False


def _widen_pipe(pipe: IO[bytes]) -> None:
    """Let the pipe hold about a thousand drafts (Linux; elsewhere its default size).

    An unprivileged process may not go beyond ``/proc/sys/fs/pipe-max-size`` (1 MB by
    default), so that limit is the fallback: a default 64 KB pipe holds only about 40
    drafts, and the writer process would commit them in batches that small.
    """
    setting = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if setting is None:
        return
    for size in (_PIPE_BYTES, _pipe_max_size()):
        if size is None or size <= 0:
            continue
        try:
            fcntl.fcntl(pipe.fileno(), setting, min(size, _PIPE_BYTES))
        except OSError:
            continue
        return


def _pipe_max_size() -> int | None:
    """The largest pipe an unprivileged process may ask for, if the system says."""
    try:
        return int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        return None
