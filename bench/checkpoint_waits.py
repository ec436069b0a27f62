"""Where automatic checkpoints cost a program that records with sync durability.

Two SQLite ledgers record the same predictions as ``bench.integrity``'s checkpoint
rows do (checkpoints off and on, interleaved rounds of about 10,000 events, a look
every second), and the recording thread's write transactions are timed:

* ``begin``: beginning them (``BEGIN IMMEDIATE``), which is where a commit waits for
  the file's write lock; ``waits >= 1 ms``: how many of those took a millisecond or
  more (SQLite's busy handler sleeps in steps of 1 ms and up, so each is a wait for a
  lock another connection held, unless the thread was descheduled that long: on a
  loaded machine a few are);
* ``commit``: committing them (the fsync, and any write-ahead log checkpoint SQLite
  runs after the commit);
* the recording thread's CPU per event, and how many times each ledger's write-ahead
  log was reset (read from the WAL header's checkpoint sequence number).

Counts per 10,000 events. The lock waits are the load-independent figure: they say
whether anything else wrote to the ledger file while the program recorded.

Run: ``python -m bench.checkpoint_waits [ROUNDS]`` (default 8).
"""

from __future__ import annotations

import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from eventsourcing import sqlite as library

import ledger.sqlite_locking  # noqa: F401 - write transactions begin IMMEDIATE
from bench.integrity import RecordingLedger
from bench.throughput import capture_drafts
from dspy_ledger.checkpointing import DEFAULT_EVERY, CheckpointPolicy


@dataclass
class Timings:
    """What the recording thread's write transactions cost, summed."""

    begin: float = 0.0
    waits: int = 0
    commit: float = 0.0
    events: int = 0
    cpu: float = 0.0
    wall: float = 0.0


class TransactionTimer:
    """Times the write transactions of one thread (the recording thread)."""

    def __init__(self) -> None:
        """Patch the library's transactions; only ``thread``'s write transactions count."""
        self.thread = threading.get_ident()
        self.current = Timings()
        enter, leave = library.SQLiteTransaction.__enter__, library.SQLiteTransaction.__exit__
        timer = self

        def timed_enter(transaction: Any) -> Any:
            if not (transaction.commit and threading.get_ident() == timer.thread):
                return enter(transaction)
            started = time.perf_counter()
            cursor = enter(transaction)
            took = time.perf_counter() - started
            timer.current.begin += took
            timer.current.waits += took >= 0.001
            return cursor

        def timed_exit(transaction: Any, *exc_info: Any) -> Any:
            if not (transaction.commit and threading.get_ident() == timer.thread):
                return leave(transaction, *exc_info)
            started = time.perf_counter()
            result = leave(transaction, *exc_info)
            timer.current.commit += time.perf_counter() - started
            return result

        library.SQLiteTransaction.__enter__ = timed_enter  # type: ignore[method-assign]
        library.SQLiteTransaction.__exit__ = timed_exit  # type: ignore[method-assign]


def wal_resets(database: str) -> int:
    """The checkpoint sequence number in the WAL header: how often the WAL was reset."""
    try:
        with open(f"{database}-wal", "rb") as wal:
            header = wal.read(16)
    except FileNotFoundError:
        return 0
    return int(struct.unpack(">I", header[12:16])[0]) if len(header) == 16 else 0


def measure(rounds: int) -> tuple[dict[str, Timings], dict[str, int], int]:
    """Timings per ledger ("off", "on"), their WAL resets, and checkpoints taken."""
    timer = TransactionTimer()
    drafts = capture_drafts(21)
    totals = {"off": Timings(), "on": Timings()}
    with tempfile.TemporaryDirectory() as place:
        paths = {name: f"{place}/{name}.db" for name in totals}
        recordings = {
            name: RecordingLedger(f"sqlite:///{path}", "sync", drafts)
            for name, path in paths.items()
        }
        on = recordings["on"]
        first = on.ledger.app.last_position()
        on.record(10)
        predictions = max(1, round(DEFAULT_EVERY / ((on.ledger.app.last_position() - first) / 10)))
        on.ledger.start_auto_checkpoints(CheckpointPolicy(every=DEFAULT_EVERY, interval=1.0))
        checkpoints = on.ledger._auto_checkpoints
        assert checkpoints is not None
        for recording in recordings.values():
            recording.record(2 * predictions)
        checkpoints.tick()
        resets = {name: wal_resets(path) for name, path in paths.items()}
        for index in range(rounds):
            for name in ("off", "on") if index % 2 == 0 else ("on", "off"):
                recording = recordings[name]
                timer.current = Timings()
                start = recording.ledger.app.last_position()
                cpu, wall = time.thread_time(), time.perf_counter()
                if name == "off":
                    with checkpoints.paused():
                        recording.record(predictions)
                else:
                    recording.record(predictions)
                    while checkpoints.busy:
                        recording.record(max(1, predictions // 50))
                total, part = totals[name], timer.current
                total.wall += time.perf_counter() - wall
                total.cpu += time.thread_time() - cpu
                total.events += recording.ledger.app.last_position() - start
                total.begin += part.begin
                total.waits += part.waits
                total.commit += part.commit
        resets = {name: wal_resets(path) - resets[name] for name, path in paths.items()}
        taken = checkpoints.taken
        for recording in recordings.values():
            recording.ledger.close()
    return totals, resets, taken


def main() -> None:
    """Print one line per ledger, and the ratio of their throughputs."""
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    totals, resets, taken = measure(rounds)
    for name, total in totals.items():
        scale = 10_000 / total.events
        print(
            f"{name:3}: {total.events / total.wall:6.0f} events/s, thread CPU "
            f"{total.cpu / total.events * 1e6:5.1f} us/event; per 10,000 events: begin "
            f"{total.begin * scale * 1e3:5.1f} ms, waits >= 1 ms {total.waits * scale:4.1f}, "
            f"commit {total.commit * scale * 1e3:6.1f} ms; WAL resets {resets[name]}"
        )
    ratio = (totals["on"].events / totals["on"].wall) / (totals["off"].events / totals["off"].wall)
    print(f"{taken} checkpoints; events/s on / off: {ratio:.3f}")


if __name__ == "__main__":
    main()
