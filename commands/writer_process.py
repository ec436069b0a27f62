"""The writer process: builds and commits the events of a recording process's drafts.

Started by :class:`commands.process_writer.ProcessWriter` (never by users), it reads
frames (:mod:`commands.writer_protocol`) from its standard input and group-commits the
drafts with the same handler and retry loop an in-process ledger uses, reporting its
counters on standard output when the recording process waits in ``flush()``, when its
input ends, and otherwise at most once a second (:data:`REPORT_SECONDS`). Turning drafts
into events (payload conversion, redaction, encryption, JSON) is most of the cost of
recording; here it runs on another core, beside the program rather than inside it.
The cyclic garbage collector is paused while drafts are decoded and while a batch is
built and committed (:mod:`ledger.collector`): it cost 5-10% of the writer's CPU, a
third when thousands of drafts wait.

One thread does everything: it reads whatever the pipe holds, and commits a batch when
:data:`MAX_BATCH` drafts are waiting, when the first of them has waited
:data:`LINGER_SECONDS` (or :data:`LINGER_ENV_VAR`), or when the recording process waits
in ``flush()``, which wakes it through a second pipe. (A reading thread beside a
committing one would hand the interpreter lock back and forth on every read.) While a
batch lingers it sleeps instead of waiting on the pipe, so the drafts that follow do not
each wake it up. While the store refuses a batch it retries with backoff and reads
nothing more, so the pipe fills and the recording process waits: backpressure.

When its input ends (the ledger closed, or the recording process died) it commits
everything it has received and exits; if the store stays away, it gives up
:data:`FINAL_FLUSH_SECONDS` after the recording process has gone. It ignores Ctrl-C and
runs in a session of its own, so an interrupt aimed at the program never loses what
the program already recorded.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import sys
import time
from typing import IO, TYPE_CHECKING
from uuid import UUID

from commands.writer_protocol import (
    CONFIG,
    DRAFTS,
    FLUSH,
    STATUS,
    UnreadableDraft,
    WriterConfig,
    WriterStatus,
    encode,
    loads,
    split_frames,
)
from ledger.collector import collector_paused

if TYPE_CHECKING:  # imported at run time only once the configuration has arrived
    from commands.writer import WriterStats

#: Most drafts committed in one transaction.
MAX_BATCH = 500
#: How long the first draft of a batch waits for others to share its transaction.
LINGER_SECONDS = 0.02
#: Environment variable that sets the linger, in milliseconds.
LINGER_ENV_VAR = "DSPY_LEDGER_WRITER_LINGER_MS"
#: Longest time between two reports of the counters while drafts keep coming ...
REPORT_SECONDS = 1.0
#: ... and most drafts committed without a report (what the recording process keeps in
#: memory until then, in case this process dies).
REPORT_DRAFTS = 2000
#: How long the writer keeps retrying once the recording process has gone.
FINAL_FLUSH_SECONDS = 60.0
_READ_BYTES = 1 << 20

logger = logging.getLogger("dspy_ledger")


class _Status:
    """Writes the writer's counters to the recording process (see :data:`REPORT_SECONDS`)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._listening = True

    def report(self, stats: WriterStats) -> None:
        """Send the counters (drafts committed so far, in order, and what went wrong)."""
        if not self._listening:
            return
        status = WriterStatus(
            stats.committed, stats.unbuildable, stats.batches, stats.retries, stats.last_error
        )
        try:
            self._out.write(encode(STATUS, status))
            self._out.flush()
        except OSError:  # the recording process is gone; keep committing anyway
            self._listening = False


def main(argv: list[str] | None = None) -> int:
    """Run the writer until its input ends; the exit status says whether all was written.

    It takes no arguments: its configuration arrives as the first frame.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the real standard output; anything printed goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(level=logging.WARNING, format="dspy-ledger writer: %(message)s")
    fd = sys.stdin.fileno()
    buffer = bytearray()
    frames: list[tuple[int, bytes]] = []
    while not frames:
        chunk = os.read(fd, _READ_BYTES)
        if not chunk:
            break
        buffer += chunk
        frames = split_frames(buffer)
    config = loads(frames[0][1]) if frames and frames[0][0] == CONFIG else None
    if not isinstance(config, WriterConfig):
        logger.error("started without a configuration; exiting.")
        return 2

    from commands.drafts import VersionDraft
    from commands.handlers import DraftHandler
    from commands.portable_drafts import decode_draft
    from commands.redaction import build_redactors
    from commands.writer import WriterStats, commit_with_retry
    from ledger.application import LedgerApplication
    from ledger.privacy.master import MasterKey
    from ledger.storage import parse_url

    app = LedgerApplication(parse_url(config.url), create=False)
    if config.master_key is not None:
        app.subject_keys.master = MasterKey(config.master_key)
    handler = DraftHandler(app, max_string_bytes=config.max_string_bytes)
    handler.redactors = build_redactors(config.redactors)
    status = _Status(out)
    stats = WriterStats()
    # What start-up loaded (modules, the store, the handler) lives as long as the
    # process: the collector's full passes need not walk it again and again.
    gc.freeze()
    status.report(stats)  # ready: the store is open
    versions: dict[UUID, VersionDraft] = {}  # program versions sent once, named after
    parent = os.getppid()
    gone_since: float | None = None  # when the recording process was first seen gone

    def give_up() -> bool:
        nonlocal gone_since
        if os.getppid() == parent:
            return False  # the recording process still waits for these
        if gone_since is None:
            gone_since = time.monotonic()
        return time.monotonic() - gone_since > FINAL_FLUSH_SECONDS

    linger_seconds = _linger_seconds()
    reported, reported_at = 0, time.monotonic()  # the counters last sent, and when
    pending: list[object] = []
    deadline = 0.0
    flush_asked = ended = False
    wake = config.wake_fd

    def linger(seconds: float) -> None:
        """Wait ``seconds``, or less if the recording process asks for a flush."""
        if wake is None:
            time.sleep(seconds)
        elif select.select([wake], [], [], seconds)[0] and not _drain(wake):
            forget_wake()

    def forget_wake() -> None:
        nonlocal wake
        wake = None  # closed: at its end it would read as ready for ever

    def report() -> None:
        nonlocal reported, reported_at
        status.report(stats)
        reported, reported_at = stats.committed, time.monotonic()

    def report_due() -> bool:
        unreported = stats.committed - reported
        return unreported >= REPORT_DRAFTS or time.monotonic() - reported_at >= REPORT_SECONDS

    def take(frames: list[tuple[int, bytes]]) -> None:
        nonlocal deadline, flush_asked
        for kind, body in frames:
            if kind == DRAFTS:
                if not pending:
                    deadline = time.monotonic() + linger_seconds
                try:
                    pending.append(decode_draft(body, versions))
                except Exception as error:
                    reason = f"{type(error).__name__}: {error}"
                    logger.error(
                        "a recorded call could not be read, so it is not recorded: %s", reason
                    )
                    pending.append(UnreadableDraft(reason))
            elif kind == FLUSH:
                flush_asked = True

    with collector_paused():
        take(frames[1:])
    try:
        while True:
            if not ended:
                wait: float | None = None  # idle: block until something arrives
                if not pending and stats.committed > reported:  # report within a second
                    wait = max(0.0, reported_at + REPORT_SECONDS - time.monotonic())
                if pending:
                    wait = 0.0
                    lingering = deadline - time.monotonic()
                    if lingering > 0 and not flush_asked and len(pending) < MAX_BATCH:
                        # Sleep rather than wait on the pipe: a writer waiting on it is
                        # woken by every draft, and each wake-up (another core's
                        # interrupt) is paid inside the program's write. A flush
                        # wakes it through a pipe of its own.
                        linger(lingering)
                watched = [fd] if wake is None else [fd, wake]
                readable = select.select(watched, [], [], wait)[0]
                if wake is not None and wake in readable and not _drain(wake):
                    forget_wake()  # (a flush request itself is in the main pipe)
                if fd in readable:
                    chunk = os.read(fd, _READ_BYTES)
                    if chunk:
                        buffer += chunk
                        with collector_paused():  # decoding makes thousands of objects
                            take(split_frames(buffer))
                    else:
                        ended = True
            due = ended or flush_asked or len(pending) >= MAX_BATCH
            if pending and (due or time.monotonic() >= deadline):
                batch = pending[:MAX_BATCH]
                del pending[:MAX_BATCH]
                with collector_paused():  # see ledger.collector
                    unbuildable = commit_with_retry(handler, batch, stats, give_up=give_up)
                if unbuildable is None:
                    lost = len(batch) + len(pending)
                    logger.error("%d recorded call(s) could not be written; giving up.", lost)
                    return 1
                stats.committed += len(batch)
                stats.unbuildable += unbuildable
                stats.batches += 1
                # A report wakes a thread of the recording process, which must then take
                # the interpreter lock from the program: one report per batch cost the
                # program 7-17% of a prediction (docs/performance.md, item 16). So the
                # counters go back when someone waits in flush(), and otherwise at most
                # once a second (or every REPORT_DRAFTS drafts), idle or not.
                if flush_asked or ended or report_due():
                    report()
                if not pending:
                    flush_asked = False
            elif flush_asked and not pending:  # all was committed before the request
                report()
                flush_asked = False
            elif ended and not pending:
                return 0
            elif stats.committed > reported and report_due():  # idle since the commit
                report()
    finally:
        app.close()


def _linger_seconds() -> float:
    """The linger: :data:`LINGER_ENV_VAR` (milliseconds) if set and valid, else 20 ms."""
    setting = os.environ.get(LINGER_ENV_VAR)
    if not setting:
        return LINGER_SECONDS
    try:
        milliseconds = float(setting)
    except ValueError:
        milliseconds = -1.0
    if not 0 <= milliseconds <= 60_000:
        logger.warning(
            "%s=%r is not a number of milliseconds from 0 to 60000; lingering %d ms.",
            LINGER_ENV_VAR,
            setting,
            LINGER_SECONDS * 1000,
        )
        return LINGER_SECONDS
    return milliseconds / 1000


def _drain(fd: int) -> bool:
    """Empty the wake-up pipe (its bytes only say "someone waits in flush"); False once
    the recording process has closed it, when it must no longer be watched."""
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
