"""Benchmark of the Merkle log: verify and catch-up throughput, checkpointing overhead.

``run(quick)`` returns rows ``{"section", "name", "value", "unit", "baseline", "ratio",
"target"}``, each baseline measured in the same run on the same ledger:

* ``verify``: ranges checked side by side in worker processes (the default) against
  the same ranges checked one after another in this process, interleaved rounds;
* hashing: events into leaves and frontier from raw rows in batches, against the
  library's ``Notification`` objects hashed and appended leaf by leaf;
* recording with automatic checkpoints on against off, interleaved rounds, with sync
  durability and with async durability (the writer process): DSPy predictions' drafts
  handed to the ledger as its recorder hands them, events per second of wall time and
  per CPU second of the recording processes (steadier on a shared machine), and the
  CPU the checkpoint thread and the hashing worker process spent.

Run: ``python -m bench.integrity [--quick] [--checkpoints]`` (``--checkpoints``: the
recording rows alone).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from bench.common import Row, row, writer_ready
from bench.overhead import process_cpu, writer_process_cpu
from bench.synthetic import generate
from bench.throughput import capture_drafts
from dspy_ledger.checkpointing import DEFAULT_EVERY, CheckpointPolicy
from dspy_ledger.ledger import Durability, Ledger
from ledger.integrity.leaf import event_leaf_hash
from ledger.integrity.merkle import Frontier
from ledger.integrity.parallel import ScanSettings
from ledger.integrity.scan import LeafHasher, extend_frontier, read_event_rows
from ledger.integrity.verify import verify_log

#: Both ways of recording: committed in the program's thread, or by a writer process.
DURABILITIES: Final[tuple[Durability, ...]] = ("sync", "async")


def _row(name: str, value: float, unit: str, baseline: float | None, *, target: str | None) -> Row:
    return row("integrity", name, value, unit, baseline=baseline, target=target)


def _rate(events: int, call: Any) -> float:
    started = time.perf_counter()
    call()
    return events / (time.perf_counter() - started)


def _hash_batched(ledger: Ledger) -> None:
    frontier, hasher, position = Frontier(), LeafHasher(), 1
    while rows := read_event_rows(ledger.app, position, 5000):
        extend_frontier(frontier, hasher.hash_rows(rows))
        position = rows[-1][0] + 1


def _catch_up_leaf_by_leaf(ledger: Ledger) -> None:
    frontier = Frontier()
    for n in ledger.app.notifications(batch_size=5000):
        frontier.append(event_leaf_hash(n.topic, n.originator_id, n.originator_version, n.state))


class RecordingLedger:
    """One ledger recording predictions the way an instrumented program does.

    Each prediction is a draft captured from a DSPy program (``ChainOfThought`` and
    ``DummyLM``) with a fresh id, handed to the ledger as its recorder hands drafts:
    committed in this thread (sync durability) or sent to the writer process (async,
    the default writer). A round ends when every draft is committed.
    """

    def __init__(self, url: str, durability: Durability, drafts: list[Any]) -> None:
        self.ledger = Ledger(url, actor="bench", durability=durability)
        self.ledger.stop_auto_checkpoints()
        self._drafts = drafts
        writer_ready(self.ledger)
        self.ledger._submit(drafts[0])  # the program version, registered once
        self.ledger.flush()

    def record(self, predictions: int) -> None:
        """Record ``predictions`` new predictions and wait until they are committed."""
        templates = self._drafts[1:]
        for i in range(predictions):
            template = templates[i % len(templates)]
            self.ledger._submit(replace(template, prediction_id=uuid.uuid4()))
        self.ledger.flush()

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far: this process and its writer process; the hashing worker."""
        recording = time.process_time() + writer_process_cpu(self.ledger)
        catch_up = self.ledger._background_catch_up
        worker = catch_up._worker if catch_up is not None else None
        hashing = process_cpu(getattr(worker, "_process", None))
        return recording, hashing


def _checkpoint_rows(
    folder: Path, durability: Durability, drafts: list[Any], quick: bool
) -> list[Row]:
    """Recording with automatic checkpoints on against off, interleaved rounds.

    Checkpoints come every ``DEFAULT_EVERY`` events, looked for every second: at least
    as often as the default policy (which looks every 10 s) takes them, so the figures
    bound what it costs; a look reads the ledger's last position in this process,
    which a write of the recording thread may wait for, so the bench does not look
    more often than that. Each round records about that many events, so each "on"
    round pays for about one checkpoint; if one is still running when the round's
    events are committed, "on" records on (as a program would) until it has finished,
    so all of its cost falls inside the round. The rounds alternate which goes first,
    and while "off" records, the other ledger's checkpoints are held off (they would
    slow "off"); a look due meanwhile takes its checkpoint when its ledger records again.
    """
    every = 1_000 if quick else DEFAULT_EVERY
    interval = 0.1 if quick else 1.0  # quick rounds last less than a second
    rounds = 2 if quick else 20
    with tempfile.TemporaryDirectory(dir=folder) as place:
        off = RecordingLedger(f"sqlite:///{place}/off.db", durability, drafts)
        on = RecordingLedger(f"sqlite:///{place}/on.db", durability, drafts)
        try:
            start = on.ledger.app.last_position()
            on.record(10)
            per_prediction = (on.ledger.app.last_position() - start) / 10
            predictions = max(1, round(every / per_prediction))
            on.ledger.start_auto_checkpoints(CheckpointPolicy(every=every, interval=interval))
            checkpointer = on.ledger._auto_checkpoints
            assert checkpointer is not None
            for recording in (off, on):  # warm up: caches, and the hashing worker's start
                recording.record(2 * predictions)
            checkpointer.tick()  # one checkpoint at least: the worker has started
            thread_cpu, taken = checkpointer.cpu_seconds, checkpointer.taken
            rates: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
            cpu: dict[str, float] = {"off": 0.0, "on": 0.0}
            hashing = 0.0

            def measure(name: str, recording: RecordingLedger) -> None:
                nonlocal hashing
                cpu_before, hashing_before = recording.cpu()
                first = recording.ledger.app.last_position()
                started = time.perf_counter()
                recording.record(predictions)
                while name == "on" and checkpointer.busy:
                    recording.record(max(1, predictions // 50))
                elapsed = time.perf_counter() - started
                cpu_after, hashing_after = recording.cpu()
                events = recording.ledger.app.last_position() - first
                rates[name].append((events / elapsed, events / (cpu_after - cpu_before)))
                cpu[name] += cpu_after - cpu_before
                hashing += hashing_after - hashing_before

            for index in range(rounds):
                for name in ("off", "on") if index % 2 == 0 else ("on", "off"):
                    if name == "on":
                        measure("on", on)
                    else:
                        with checkpointer.paused():
                            measure("off", off)
            thread_cpu = checkpointer.cpu_seconds - thread_cpu
            taken = checkpointer.taken - taken
        finally:
            off.ledger.close()
            on.ledger.close()

    def median_rate(name: str, which: int) -> float:
        return statistics.median(rate[which] for rate in rates[name])

    writer = "a writer process" if durability == "async" else "committed in the recording thread"
    text = (
        f"{durability} durability ({writer}), SQLite, a checkpoint every {every:,} events, "
        f"median of {rounds} interleaved rounds"
    )
    processes = "this process and its writer process" if durability == "async" else "this process"
    rows = [
        _row(
            f"recording with automatic checkpoints ({text}; baseline: off)",
            median_rate("on", 0),
            "events/s",
            median_rate("off", 0),
            target="ratio >= 0.95",
        ),
        _row(
            f"recording per CPU second of {processes} ({text}; baseline: off)",
            median_rate("on", 1),
            "events/CPU s",
            median_rate("off", 1),
            target="ratio >= 0.95",
        ),
        _row(
            f"checkpoint thread CPU ({taken} checkpoints, {durability}), share of the CPU of "
            f"{processes}",
            max(thread_cpu, 1e-9) / cpu["on"] * 100,
            "%",
            None,
            target="< 5 %",
        ),
    ]
    if hashing > 0:  # none when no checkpoint fell in a round (quick runs)
        rows.append(
            _row(
                f"hashing worker process CPU ({durability}), share of the CPU of {processes}",
                hashing / cpu["on"] * 100,
                "%",
                None,
                target=None,
            )
        )
    return rows


def _verify_rate(ledger: Ledger, events: int, settings: ScanSettings) -> float:
    return _rate(events, lambda: verify_log(ledger.app, ledger.merkle_log, settings=settings))


def checkpoint_rows(quick: bool) -> list[Row]:
    """The recording rows alone, sync then async durability."""
    drafts = capture_drafts(21)  # the program version, then 20 predictions to copy
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        for durability in DURABILITIES:
            rows.extend(_checkpoint_rows(Path(folder), durability, drafts, quick))
    return rows


def run(quick: bool) -> list[Row]:
    """Measure and return the rows (``quick``: small ledgers, for smoke runs)."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(f"sqlite:///{Path(folder) / 'verify.db'}", actor="bench")
        ledger.stop_auto_checkpoints()
        try:
            events = generate(ledger, 3_000 if quick else 100_000)
            ledger.checkpoint()
            events += 1
            defaults = ScanSettings.from_environment()
            # The quick ledger is a single range by default: cut it so that workers run.
            parallel = ScanSettings(defaults.workers, 2048) if quick else defaults
            serial = ScanSettings(1, defaults.width)
            verify_log(ledger.app, ledger.merkle_log)  # warm the page cache
            rounds = 1 if quick else 5
            side_by_side, one_process = [], []
            for _ in range(rounds):
                side_by_side.append(_verify_rate(ledger, events, parallel))
                one_process.append(_verify_rate(ledger, events, serial))
            rows.append(
                _row(
                    f"verify ({events:,} events, SQLite, {parallel.workers} workers; "
                    f"baseline: one process; median of {rounds})",
                    statistics.median(side_by_side),
                    "events/s",
                    statistics.median(one_process),
                    target=">= 200000 events/s",
                )
            )
            old = _rate(events, lambda: _catch_up_leaf_by_leaf(ledger))
            new = _rate(events, lambda: _hash_batched(ledger))
            rows.append(
                _row(
                    f"hashing events into the log ({events:,} events, SQLite)",
                    new,
                    "events/s",
                    old,
                    target=None,
                )
            )
        finally:
            ledger.close()
    return rows + checkpoint_rows(quick)


def main() -> None:
    """Print the rows, one per line."""
    quick = "--quick" in sys.argv[1:]
    for item in checkpoint_rows(quick) if "--checkpoints" in sys.argv[1:] else run(quick):
        print(item)


if __name__ == "__main__":
    main()
