"""Benchmark of the Merkle log: verify and catch-up throughput, checkpointing overhead.

``run(quick)`` returns rows ``{"section", "name", "value", "unit", "baseline", "ratio",
"target"}``, each baseline measured in the same run on the same ledger:

* ``verify``: ranges checked side by side in worker processes (the default) against
  the same ranges checked one after another in this process, interleaved rounds;
* hashing: events into leaves and frontier from raw rows in batches, against the
  library's ``Notification`` objects hashed and appended leaf by leaf;
* recording (one transaction per prediction, as the synchronous writer commits) with
  automatic checkpoints on against off, interleaved rounds: events per second of wall
  time and per CPU second of the recording process (steadier on a shared machine),
  and the CPU the checkpoint thread and the hashing worker process spent.

Run: ``python -m bench.integrity [--quick]``.
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import Row, row
from bench.synthetic import generate
from dspy_ledger.checkpointing import DEFAULT_EVERY, CheckpointPolicy
from dspy_ledger.ledger import Ledger
from ledger.domain import Prediction
from ledger.integrity.leaf import event_leaf_hash
from ledger.integrity.merkle import Frontier
from ledger.integrity.parallel import ScanSettings
from ledger.integrity.scan import LeafHasher, extend_frontier, read_event_rows
from ledger.integrity.verify import verify_log


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


def _record(ledger: Ledger, predictions: int) -> None:
    """Record predictions as the synchronous writer does: one transaction each."""
    at = datetime(2025, 1, 1, tzinfo=UTC)
    for _ in range(predictions):
        prediction = Prediction.start(
            prediction_id=uuid.uuid4(),
            program_version_id=None,
            program_name="qa",
            inputs={"question": "What is 2 + 2?"},
            context="production",
            actor="bench",
            occurred_at=at,
        )
        prediction.record_model_execution(
            occurred_at=at,
            call_id=uuid.uuid4().hex,
            parent_call_id=None,
            model="openai/gpt-4o-mini",
            provider="openai",
            request={},
            messages=[{"role": "user", "content": "What is 2 + 2?"}],
            outputs=["4"],
            usage={"prompt_tokens": 12, "completion_tokens": 1},
            cost_usd=0.00001,
            cached_cost_usd=None,
            latency_ms=120.0,
            cache_hit=False,
            response_model=None,
            error=None,
            actor="bench",
            trace_id=None,
            span_id=None,
        )
        prediction.complete(
            outputs={"answer": "4"}, call_tree={}, latency_ms=121.0, actor="bench", occurred_at=at
        )
        ledger.app.save_aggregates(prediction)


def _record_round(ledger: Ledger, predictions: int) -> tuple[float, float]:
    """Record ``predictions``; wall and CPU seconds, a checkpoint in progress included."""
    started, cpu = time.perf_counter(), time.process_time()
    _record(ledger, predictions)
    checkpointer = ledger._auto_checkpoints
    if checkpointer is not None:
        checkpointer.wait()  # a checkpoint still running counts against its round
    return time.perf_counter() - started, time.process_time() - cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _checkpoint_rows(folder: Path, quick: bool) -> list[Row]:
    # Checkpoints every quarter of the default (every 2,500 events): the fixed cost of a
    # checkpoint weighs more the more often it is paid, so this bounds the default's.
    every = 250 if quick else DEFAULT_EVERY // 4
    predictions = every  # 3 events each: three checkpoints per round
    rounds = 2 if quick else 9
    off = Ledger(f"sqlite:///{folder / 'off.db'}", actor="bench")
    on = Ledger(f"sqlite:///{folder / 'on.db'}", actor="bench")
    children = _children_cpu()
    try:
        off.stop_auto_checkpoints()
        on.stop_auto_checkpoints()
        on.start_auto_checkpoints(CheckpointPolicy(every=every, interval=0.05))
        checkpointer = on._auto_checkpoints
        assert checkpointer is not None
        for ledger in (off, on):  # warm up: caches, and the hashing worker's start
            _record_round(ledger, predictions)
        thread_cpu, taken = checkpointer.cpu_seconds, checkpointer.taken
        timings: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
        for _ in range(rounds):
            timings["off"].append(_record_round(off, predictions))
            timings["on"].append(_record_round(on, predictions))
        thread_cpu = checkpointer.cpu_seconds - thread_cpu
        taken = checkpointer.taken - taken
    finally:
        off.close()
        on.close()
    worker_cpu = _children_cpu() - children  # the worker has exited: its CPU is known

    def median_rate(mode: str, which: int) -> float:
        return statistics.median(3 * predictions / t[which] for t in timings[mode])

    recording_cpu = sum(t[1] for t in timings["on"])
    every_text = f"every {every:,} events, median of {rounds} interleaved rounds, SQLite"
    rows = [
        _row(
            f"recording with automatic checkpoints ({every_text}; baseline: off)",
            median_rate("on", 0),
            "events/s",
            median_rate("off", 0),
            target="ratio >= 0.95",
        ),
        _row(
            f"recording per CPU second of the recording process ({every_text}; baseline: off)",
            median_rate("on", 1),
            "events/CPU s",
            median_rate("off", 1),
            target="ratio >= 0.95",
        ),
        _row(
            f"checkpoint thread CPU ({taken} checkpoints), share of the recording process's CPU",
            max(thread_cpu, 1e-9) / recording_cpu * 100,
            "%",
            None,
            target="< 5 %",
        ),
    ]
    if worker_cpu > 0:
        rows.append(
            _row(
                "hashing worker process CPU, its start included, share of the recording "
                "process's CPU",
                worker_cpu / recording_cpu * 100,
                "%",
                None,
                target=None,
            )
        )
    return rows


def _verify_rate(ledger: Ledger, events: int, settings: ScanSettings) -> float:
    return _rate(events, lambda: verify_log(ledger.app, ledger.merkle_log, settings=settings))


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
        rows.extend(_checkpoint_rows(Path(folder), quick))
    return rows


def main() -> None:
    """Print the rows, one per line."""
    for item in run("--quick" in sys.argv[1:]):
        print(item)


if __name__ == "__main__":
    main()
