"""Checking the Merkle log's ranges (:mod:`ledger.integrity.ranges`) side by side.

* A SQLite file: worker processes, each started as ``python -m ledger.integrity.worker``
  and fed ranges over a pipe, each reading the file over its own connection. Threads
  would not overlap: SHA-256 of inputs under 2 KiB (most events) and building the
  rows' Python objects both hold the GIL. ``multiprocessing`` is never used, because
  its spawn and forkserver modes re-import the user's main script.
* PostgreSQL: the server hashes the leaves (``sha256()`` over the leaf entry's exact
  bytes, when stream ids are UUIDs), so only 32 bytes per event cross the wire; one
  thread per worker, each with its own pooled connection, keeps several server
  processes busy.
* An in-memory SQLite ledger, one worker, or a log of a single range: this process.

Workers pull the next range when they finish one, so uneven ranges balance out. If a
worker process fails, the ranges are checked in this process instead.

Settings come from the environment, read at each verification:

* ``DSPY_LEDGER_VERIFY_WORKERS``: processes or threads (default: the CPUs this
  process may use; 1: no parallelism);
* ``DSPY_LEDGER_VERIFY_RANGE``: leaves per range, a power of two (default: one
  range below 100,000 leaves, else about four ranges per worker, at least 16,384
  leaves each).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Final, Literal

from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from psycopg import Connection
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from ledger.application import LedgerApplication
from ledger.errors import InvalidInputError
from ledger.integrity.hashing import LeafHasher
from ledger.integrity.leaf import LEAF_MAGIC
from ledger.integrity.leaf_file import ledger_file
from ledger.integrity.log import MerkleLog
from ledger.integrity.log_store import PostgresMerkleRecorder
from ledger.integrity.ranges import (
    Batch,
    CombinedScan,
    Execute,
    LeafRange,
    RangeOutcome,
    RangeReader,
    SQLiteRangeReader,
    check_range,
    combine_ranges,
    plan_ranges,
)
from ledger.subprocess_command import module_command

logger = logging.getLogger("dspy_ledger")

#: Logs smaller than this are checked in this process by default: starting worker
#: processes (about 0.1 s each) would cost more than it saves.
MIN_PARALLEL_LEAVES: Final = 100_000
#: The smallest range width chosen automatically.
MIN_AUTO_WIDTH: Final = 1 << 14
#: Ranges per worker chosen automatically, so that a slow worker delays little.
RANGES_PER_WORKER: Final = 4

#: Checks one range (one per worker, used for many ranges).
Checker = Callable[[LeafRange], RangeOutcome]
#: Where ranges are checked: worker processes, threads, or this process alone.
Mode = Literal["processes", "threads", "this process"]
#: Starts a worker on entering and stops it on leaving.
CheckerFactory = Callable[[], AbstractContextManager[Checker]]


@dataclass(frozen=True)
class ScanSettings:
    """How many workers check ranges side by side, and how wide a range is."""

    workers: int
    width: int | None = None

    @classmethod
    def from_environment(cls) -> ScanSettings:
        """The settings ``DSPY_LEDGER_VERIFY_WORKERS`` and ``DSPY_LEDGER_VERIFY_RANGE`` give."""
        workers = _positive("DSPY_LEDGER_VERIFY_WORKERS") or _available_cpus()
        width = _positive("DSPY_LEDGER_VERIFY_RANGE")
        if width is not None and width & (width - 1):
            msg = f"DSPY_LEDGER_VERIFY_RANGE={width} is not a valid setting; give a power of two."
            raise InvalidInputError(msg)
        return cls(workers, width)

    def width_for(self, leaves: int) -> int:
        """The range width for a log of ``leaves`` leaves."""
        if self.width is not None:
            return self.width
        if leaves < MIN_PARALLEL_LEAVES or self.workers == 1:
            return 1 << leaves.bit_length()  # one range
        share = leaves // (RANGES_PER_WORKER * self.workers)
        return max(MIN_AUTO_WIDTH, 1 << max(share.bit_length() - 1, 0))


def _positive(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        msg = f"{name}={text!r} is not a valid setting; give a positive whole number."
        raise InvalidInputError(msg)
    return int(text)


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - platforms without affinity


class RangeScanner:
    """Checks the log's ranges side by side; enter it to start the workers.

    Worker processes are started on entering, so that they import while this
    process does other work (reading the recorded checkpoints); :meth:`scan` then
    hands them the ranges.
    """

    def __init__(
        self, app: LedgerApplication, log: MerkleLog, settings: ScanSettings | None = None
    ) -> None:
        """Check ``log`` against ``app``'s events, as ``settings`` say (default: environment)."""
        self._log = log
        self._settings = settings or ScanSettings.from_environment()
        recorder: Any = app.recorder
        self._datastore: Any = recorder.datastore
        self._table: str = recorder.events_table_name
        self._leaves = log.recorder.leaf_count()
        self._width = self._settings.width_for(self._leaves)
        self._stack = ExitStack()
        self._checks: list[Checker] = []
        #: Where the ranges are checked (known once entered).
        self.mode: Mode = "this process"

    def _factories(self) -> tuple[CheckerFactory, int, Mode]:
        """Where ranges are checked, and by how many workers."""
        workers = min(self._settings.workers, max(1, -(-self._leaves // self._width)))
        local = _in_process(self._datastore, self._table, self._log)
        files = LogFiles.of(self._log)
        if workers > 1 and files is not None:
            return _process(files, self._table, self._log.batch_size), workers, "processes"
        if workers > 1 and isinstance(self._datastore, PostgresDatastore):
            return local, workers, "threads"  # each thread takes its own pooled connection
        return local, 1, "this process"

    def __enter__(self) -> RangeScanner:
        """Start the workers."""
        factory, workers, self.mode = self._factories()
        try:
            self._checks = [self._stack.enter_context(factory()) for _ in range(workers)]
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the workers."""
        self._stack.close()

    def scan(
        self,
        last_position: int,
        cut_sizes: Sequence[int],
        progress: Callable[[int], None] | None = None,
    ) -> CombinedScan | None:
        """Check every range; ``None`` if any disagrees with its events.

        ``cut_sizes`` are the tree sizes whose roots are wanted (recorded checkpoints).
        """
        jobs = plan_ranges(
            self._leaves,
            self._width,
            last_position,
            sorted(set(cut_sizes)),
            self._log.recorder.positions_of,
        )
        if jobs is None:
            return None  # a range's first leaf is missing
        try:
            outcomes = _dispatch(jobs, self._checks, progress)
        except WorkerFailedError as error:
            logger.warning("dspy-ledger: verifying in this process instead: %s", error)
            self.mode = "this process"
            with _in_process(self._datastore, self._table, self._log)() as check:
                outcomes = _dispatch(jobs, [check], progress)
        return None if outcomes is None else combine_ranges(outcomes)


class WorkerFailedError(RuntimeError):
    """A worker process exited or answered something other than an outcome."""


def _dispatch(
    jobs: Sequence[LeafRange],
    checks: Sequence[Checker],
    progress: Callable[[int], None] | None,
) -> list[RangeOutcome] | None:
    """Check ``jobs`` with one thread per checker; ``None`` as soon as one range disagrees."""
    if len(checks) == 1:
        outcomes: list[RangeOutcome] = []
        for job in jobs:
            outcome = checks[0](job)
            if not outcome.matched:
                return None
            _report(progress, outcome)
            outcomes.append(outcome)
        return outcomes
    pending = iter(range(len(jobs)))
    lock, stop = threading.Lock(), threading.Event()
    done: queue.Queue[tuple[int, RangeOutcome | BaseException]] = queue.Queue()

    def serve(check: Checker) -> None:
        try:
            while not stop.is_set():
                with lock:
                    index = next(pending, None)
                if index is None:
                    return
                done.put((index, check(jobs[index])))
        except BaseException as error:  # handed to the main thread, which raises it
            done.put((-1, error))

    threads = [threading.Thread(target=serve, args=(check,), daemon=True) for check in checks]
    for thread in threads:
        thread.start()
    results: dict[int, RangeOutcome] = {}
    failure: BaseException | None = None
    mismatch = False
    while len(results) < len(jobs) and failure is None and not mismatch:
        index, answer = done.get()
        if isinstance(answer, BaseException):
            failure = answer
        elif not answer.matched:
            mismatch = True
        else:
            results[index] = answer
            _report(progress, answer)
    stop.set()
    for thread in threads:
        thread.join()
    if failure is not None:
        raise failure
    return None if mismatch else [results[i] for i in range(len(jobs))]


def _report(progress: Callable[[int], None] | None, outcome: RangeOutcome) -> None:
    if progress is not None and outcome.checked + outcome.untracked:
        progress(outcome.checked + outcome.untracked)


# -- where ranges are checked ---------------------------------------------------------


@dataclass(frozen=True)
class LogFiles:
    """A SQLite ledger's file and its log's leaf file, which worker processes open."""

    ledger: str
    leaves: str

    @classmethod
    def of(cls, log: MerkleLog) -> LogFiles | None:
        """The files of ``log``; ``None`` when it has none other processes can open."""
        if log.leaf_path is None:
            return None
        recorder: Any = log.app.recorder
        path = ledger_file(recorder.datastore)
        assert path is not None  # the leaf file is named after it
        return cls(path, log.leaf_path)


class WorkerProcess:
    """A ``python -m ledger.integrity.worker`` process, asked one JSON line at a time."""

    def __init__(self, task: str, files: LogFiles, table: str, batch: int) -> None:
        """Start a worker for ``task`` (``ranges`` or ``catch-up``) on a ledger's ``files``."""
        command = module_command(
            "ledger.integrity.worker", task, files.ledger, files.leaves, table, str(batch)
        )
        # A file, not a pipe, so that a worker writing much to stderr can never block.
        self._errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by close()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return the answer; :class:`WorkerFailedError` if there is none."""
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
            answer: dict[str, Any] = json.loads(process.stdout.readline())
            return answer
        except (OSError, ValueError) as error:
            process.kill()
            process.wait()
            self._errors.seek(0)
            last = self._errors.read().strip().splitlines()[-1:] or [repr(error)]
            raise WorkerFailedError(f"a worker process failed ({last[0]})") from None

    def close(self) -> None:
        """Let the worker finish and wait for it."""
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        with suppress(OSError):  # a worker that died has nothing left to read
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck worker
            process.kill()
            process.wait()
        process.stdout.close()
        self._errors.close()


def _process(files: LogFiles, table: str, batch: int) -> CheckerFactory:
    """Checkers that each run a worker process over a SQLite ledger's ``files``."""

    @contextmanager
    def start() -> Iterator[Checker]:
        worker = WorkerProcess("ranges", files, table, batch)

        def check(job: LeafRange) -> RangeOutcome:
            answer = worker.ask(job.to_json())
            try:
                return RangeOutcome.from_json(answer)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise WorkerFailedError(f"a worker process answered {answer!r:.80}") from None

        try:
            yield check
        finally:
            worker.close()

    return start


class BackgroundCatchUp:
    """Hashes new events into the log for a background thread, outside the GIL if it can.

    On a SQLite file a worker process (started at the first call, kept until
    :meth:`close`) does the hashing: a thread hashing next to a recording thread
    slows recording several times more than the hashing itself costs, because each
    time the recording thread comes back from the database it waits for the GIL.
    Elsewhere, or if the worker fails, the calling thread hashes, handing the GIL
    over every few hundred events.
    """

    def __init__(self, app: LedgerApplication, log: MerkleLog) -> None:
        """Catch ``log`` up with ``app``'s events."""
        self._log = log
        recorder: Any = app.recorder
        self._files = LogFiles.of(log)
        self._table: str = recorder.events_table_name
        self._worker: WorkerProcess | None = None

    def __call__(self) -> int:
        """Hash the events stored since the log's last position; return how many."""
        self._log.open()  # here, so that a leaf file of another ledger is never handed on
        if self._files is not None:
            try:
                if self._worker is None:
                    self._worker = WorkerProcess(
                        "catch-up", self._files, self._table, self._log.batch_size
                    )
                return int(self._worker.ask({})["added"])
            except (WorkerFailedError, KeyError, TypeError, ValueError) as error:
                logger.warning("dspy-ledger: hashing in this process instead: %s", error)
                self.close()
                self._files = None
        return self._log.catch_up(background=True)

    @property
    def worker_running(self) -> bool:
        """Whether a worker process is running (after the first call, on a SQLite file)."""
        return self._worker is not None

    def close(self) -> None:
        """Stop the worker process, if one runs."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None


def _in_process(datastore: Any, table: str, log: MerkleLog) -> CheckerFactory:
    """Checkers that read through this process's own connections."""

    @contextmanager
    def start() -> Iterator[Checker]:
        reader: RangeReader
        if isinstance(datastore, PostgresDatastore):
            recorder = log.recorder
            assert isinstance(recorder, PostgresMerkleRecorder)
            with datastore.get_connection() as connection:
                reader = PostgresRangeReader(connection, datastore, table, recorder)
                yield lambda job: check_range(reader, job, log.batch_size)
            return

        leaves: Any = log.recorder
        reader = SQLiteRangeReader(_reading(datastore), _reading(leaves.datastore), table)
        yield lambda job: check_range(reader, job, log.batch_size)

    return start


def _reading(datastore: SQLiteDatastore) -> Execute:
    """Statements run in read transactions of ``datastore``, returning tuples."""

    def execute(sql: str, params: tuple[Any, ...]) -> list[Any]:
        with datastore.transaction(commit=False) as cursor:
            cursor.row_factory = None  # type: ignore[attr-defined]  # tuples, not Row objects
            cursor.execute(sql, params)
            rows: list[Any] = cursor.fetchall()
            return rows

    return execute


class PostgresRangeReader:
    """Reads a PostgreSQL ledger's ranges; the server hashes the events when it can.

    With UUID stream ids (the library's default) the server computes each leaf hash
    with ``sha256()`` over exactly the leaf entry's bytes: ``int4send``, ``uuid_send``
    and ``int8send`` write the big-endian fields, ``convert_to(topic, 'UTF8')`` the
    topic's UTF-8 bytes. Text stream ids are hashed here, as in :mod:`.hashing`.
    """

    def __init__(
        self,
        connection: Connection[Any],
        datastore: PostgresDatastore,
        table: str,
        recorder: PostgresMerkleRecorder,
    ) -> None:
        """Read through ``connection`` the events of ``table`` and the leaves of ``recorder``."""
        self._connection = connection
        self._server_side = datastore.originator_id_type == "uuid"
        self._hasher = LeafHasher()
        events = Identifier(datastore.schema, table)
        selected = _SERVER_LEAF_HASH if self._server_side else _CLIENT_COLUMNS
        self._events = {
            bounded: SQL(
                "SELECT notification_id, {0} FROM {1} WHERE notification_id >= %s{2} "
                "ORDER BY notification_id LIMIT %s"
            ).format(selected, events, SQL(" AND notification_id < %s" if bounded else ""))
            for bounded in (False, True)
        }
        self._leaves = SQL(
            "SELECT position, hash FROM {0} WHERE leaf_index >= %s AND leaf_index < %s "
            "ORDER BY leaf_index"
        ).format(recorder.leaves_table)

    def event_hashes(self, low: int, high: int | None, limit: int) -> Batch:
        """Up to ``limit`` events from position ``low`` (below ``high``): positions, leaf hashes."""
        params: tuple[Any, ...] = (low, limit) if high is None else (low, high, limit)
        if self._server_side:
            params = (b"\x00" + LEAF_MAGIC, *params)
        with self._connection.cursor(row_factory=tuple_row) as cursor:
            rows = cursor.execute(self._events[high is not None], params, prepare=True).fetchall()
        positions = [row[0] for row in rows]
        if self._server_side:
            return positions, [bytes(row[1]) for row in rows]
        return positions, self._hasher.hash_rows([(*row[:4], bytes(row[4])) for row in rows])

    def leaf_hashes(self, start: int, end: int) -> Batch:
        """The stored leaves ``start <= i < end``: their positions and hashes."""
        with self._connection.cursor(row_factory=tuple_row) as cursor:
            rows = cursor.execute(self._leaves, (start, end), prepare=True).fetchall()
        return [row[0] for row in rows], [bytes(row[1]) for row in rows]


#: The leaf hash of an event row, computed by PostgreSQL (the first parameter is
#: ``0x00 || "DSPYLEAF\x01"``; lengths as u32 and u64, the version as i64).
_SERVER_LEAF_HASH: Final = SQL(
    "sha256(%s::bytea || int4send(octet_length(convert_to(topic, 'UTF8'))) "
    "|| convert_to(topic, 'UTF8') || '\\x00'::bytea || uuid_send(originator_id) "
    "|| int8send(originator_version) || int8send(octet_length(state)::int8) || state)"
)
_CLIENT_COLUMNS: Final = SQL("topic, originator_id, originator_version, state")


__all__ = [
    "BackgroundCatchUp",
    "LogFiles",
    "PostgresRangeReader",
    "RangeScanner",
    "ScanSettings",
    "WorkerFailedError",
    "WorkerProcess",
]
