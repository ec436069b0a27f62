"""Benchmark of the Merkle log: verify and catch-up throughput, checkpointing overhead.

``run(quick)`` returns rows ``{"section", "name", "value", "unit", "baseline", "ratio",
"target"}``, each baseline measured in the same run on the same ledger:

* ``verify``: batched comparison (the default) against the leaf-by-leaf pass;
* ``catch-up``: hashing events into the log from raw rows, against hashing the
  library's ``Notification`` objects leaf by leaf;
* recording with automatic checkpoints on (a checkpoint every 2,000 events) against
  recording with them off; the value is the throughput lost, in percent.

Run: ``python -m bench.integrity [--quick]``.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.rows import Row, bench_row
from bench.synthetic import generate
from dspy_ledger.checkpointing import CheckpointPolicy
from dspy_ledger.ledger import Ledger
from ledger.domain import Prediction
from ledger.integrity.leaf import event_leaf_hash
from ledger.integrity.merkle import Frontier
from ledger.integrity.verify import verify_log


def _row(
    name: str, value: float, unit: str, baseline: float | None, *, target: str | None, ratio: float
) -> Row:
    return bench_row("integrity", name, value, unit, baseline=baseline, ratio=ratio, target=target)


def _rate(events: int, call: Any) -> float:
    started = time.perf_counter()
    call()
    return events / (time.perf_counter() - started)


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


def _recording_rate(folder: Path, name: str, predictions: int, *, checkpoints: bool) -> float:
    ledger = Ledger(f"sqlite:///{folder / name}", actor="bench")
    try:
        if checkpoints:
            ledger.start_auto_checkpoints(CheckpointPolicy(every=2_000, interval=0.2))
        return _rate(3 * predictions, lambda: _record(ledger, predictions))
    finally:
        ledger.close()


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
                    ratio=batched / leafwise,
                )
            )
            old = _rate(events, lambda: _catch_up_leaf_by_leaf(ledger))
            fresh = Ledger(f"sqlite:///{Path(folder) / 'verify.db'}", actor="bench")
            fresh.stop_auto_checkpoints()
            try:
                _reset_log(fresh)
                new = _rate(events, fresh.merkle_log.catch_up)
            finally:
                fresh.close()
            rows.append(
                _row(
                    f"catch-up hashing ({events:,} events, SQLite)",
                    new,
                    "events/s",
                    old,
                    target=None,
                    ratio=new / old,
                )
            )
        finally:
            ledger.close()
        rows.append(_overhead_row(Path(folder), 1_000 if quick else 6_000))
    return rows


def _reset_log(ledger: Ledger) -> None:
    datastore: Any = ledger.app.recorder.datastore  # type: ignore[attr-defined]
    ledger.merkle_log  # noqa: B018 - creates the log's tables
    with datastore.transaction(commit=True) as c:
        c.execute("DELETE FROM merkle_leaves")
        c.execute("DELETE FROM merkle_frontier")
        c.execute("DELETE FROM tracking WHERE application_name = 'DspyLedgerMerkleLog'")


def _overhead_row(folder: Path, predictions: int) -> Row:
    # Alternate runs so that background noise falls on both sides alike.
    without, with_ = [], []
    for i in range(2):
        without.append(_recording_rate(folder, f"plain{i}.db", predictions, checkpoints=False))
        with_.append(_recording_rate(folder, f"auto{i}.db", predictions, checkpoints=True))
    plain, auto = max(without), max(with_)
    overhead = max(0.0, (plain - auto) / plain * 100)
    return _row(
        "recording throughput lost to automatic checkpoints (every 2,000 events)",
        overhead,
        "%",
        None,
        target="< 5 %",
        ratio=auto / plain,
    )


def main() -> None:
    """Print the rows, one per line."""
    for row in run("--quick" in sys.argv[1:]):
        print(row)


if __name__ == "__main__":
    threading.excepthook = lambda args: print(args.exc_value, file=sys.stderr)
    main()
