"""Benchmark of the Merkle log: verify and catch-up throughput, checkpointing overhead.

``run(quick)`` returns rows ``{"section", "name", "value", "unit", "baseline", "ratio",
"target"}``, each baseline measured in the same run on the same ledger:

* ``verify``: batched comparison (the default) against the leaf-by-leaf pass;
* hashing: events into leaves and frontier from raw rows in batches, against the
  library's ``Notification`` objects hashed and appended leaf by leaf;
* the cost of one automatic checkpoint (every 10,000 events by default: hashing them
  into the log and recording the checkpoint) as a share of the time recording those
  events took (one transaction per prediction, as the synchronous writer commits).

Run: ``python -m bench.integrity [--quick]``.
"""

from __future__ import annotations

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
from dspy_ledger.checkpointing import DEFAULT_EVERY
from dspy_ledger.ledger import Ledger
from ledger.domain import Prediction
from ledger.integrity.leaf import event_leaf_hash
from ledger.integrity.merkle import Frontier
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


def _checkpoint_share(folder: Path, predictions: int) -> tuple[float, float]:
    """Seconds to record ``predictions`` and to checkpoint them, median of three rounds."""
    ledger = Ledger(f"sqlite:///{folder / 'overhead.db'}", actor="bench")
    ledger.stop_auto_checkpoints()
    recording, checkpointing = [], []
    try:
        ledger.checkpoint()
        for _ in range(3):
            started = time.perf_counter()
            _record(ledger, predictions)
            recording.append(time.perf_counter() - started)
            started = time.perf_counter()
            ledger.checkpoint()
            checkpointing.append(time.perf_counter() - started)
    finally:
        ledger.close()
    return statistics.median(recording), statistics.median(checkpointing)


def run(quick: bool) -> list[Row]:
    """Measure and return the rows (``quick``: small ledgers, for smoke runs)."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(f"sqlite:///{Path(folder) / 'verify.db'}", actor="bench")
        ledger.stop_auto_checkpoints()
        try:
            events = generate(ledger, 10_000 if quick else 100_000)
            ledger.checkpoint()
            events += 1
            log = ledger.merkle_log
            verify_log(ledger.app, log)  # warm the page cache
            leafwise = _rate(events, lambda: verify_log(ledger.app, log, batched=False))
            batched = _rate(events, lambda: verify_log(ledger.app, log))
            rows.append(
                _row(
                    f"verify ({events:,} events, SQLite)",
                    batched,
                    "events/s",
                    leafwise,
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
        rows.append(_overhead_row(Path(folder), DEFAULT_EVERY // 3))
    return rows


def _overhead_row(folder: Path, predictions: int) -> Row:
    # One automatic checkpoint per DEFAULT_EVERY events: its cost (hashing those events
    # into the log, recording the checkpoint) as a share of recording them.
    recording, checkpointing = _checkpoint_share(folder, predictions)
    overhead = checkpointing / recording * 100
    return _row(
        f"checkpointing cost per {3 * predictions:,} recorded events (SQLite)",
        overhead,
        "% of recording time",
        None,
        target="< 5 %",
    )


def main() -> None:
    """Print the rows, one per line."""
    for item in run("--quick" in sys.argv[1:]):
        print(item)


if __name__ == "__main__":
    main()
