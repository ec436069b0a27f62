"""Benchmark of the views: rebuild throughput and a cost report over many predictions.

``run(quick)`` returns rows ``{"section", "name", "value", "unit", "baseline", "ratio",
"target"}``. Throughput rows compare, in the same run and on the same ledger, the
views' field reader (the database extracts the few fields a view needs) with the
library mapper decoding every event in full (``baseline``). The report row times a
cost-by-model-by-day report over a synthetic ledger of 1,000,000 predictions (20,000
with ``quick``); its baseline is the same report summed from the per-call facts.

Run: ``python -m bench.views [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Row, row
from bench.synthetic import generate
from dspy_ledger.ledger import Ledger
from projections.runner import VIEW_NAMES, open_view, rebuild


def _row(
    name: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    target: str | None = None,
) -> Row:
    return row("views", name, value, unit, baseline=baseline, target=target)


def _rebuild_rate(ledger: Ledger, view: str, *, fast: bool) -> float:
    projection = open_view(ledger.app, view)
    projection.reader.fast = fast and projection.reader._statement is not None
    started = time.perf_counter()
    events = rebuild(projection)
    return events / (time.perf_counter() - started)


def _timed(call: Any, repeat: int) -> float:
    """Median wall time of ``call()`` in milliseconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run(quick: bool) -> list[Row]:
    """Measure and return the rows (``quick``: a small ledger, for smoke runs)."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        small = Ledger(f"sqlite:///{Path(folder) / 'rebuild.db'}", actor="bench")
        try:
            generate(small, 5_000 if quick else 50_000)
            for view in VIEW_NAMES:
                _rebuild_rate(small, view, fast=True)  # warm the page cache and indexes
                baseline = _rebuild_rate(small, view, fast=False)
                value = _rebuild_rate(small, view, fast=True)
                rows.append(_rebuild_row(view, value, baseline))
        finally:
            small.close()
        rows.extend(_report_rows(Path(folder), 20_000 if quick else 1_000_000))
    return rows


def _rebuild_row(view: str, value: float, baseline: float) -> Row:
    return _row(f"rebuild {view} (SQLite)", value, "events/s", baseline, ">= 50000 events/s")


def _report_rows(folder: Path, predictions: int) -> list[Row]:
    ledger = Ledger(f"sqlite:///{folder / 'report.db'}", actor="bench")
    try:
        started = time.perf_counter()
        events = generate(ledger, predictions)
        generated = time.perf_counter() - started
        projection = open_view(ledger.app, "cost")
        started = time.perf_counter()
        rebuild(projection, batch_size=20_000)
        rebuilt = time.perf_counter() - started
        view: Any = projection.view
        report = _timed(lambda: view.cost_rows(["model", "day"]), 5)
        facts = _timed(lambda: view._fact_rows(["model", "day"], (None, None, "0", "0"), []), 1)
        label = f"{predictions:,} predictions"
        return [
            _row(f"generate synthetic ledger ({label})", events / generated, "events/s"),
            _row(f"rebuild cost view ({label})", events / rebuilt, "events/s"),
            _row(
                f"cost by model by day ({label})",
                report,
                "ms",
                facts,
                "< 50 ms",
            ),
        ]
    finally:
        ledger.close()


def main() -> None:
    """Print the rows, one per line."""
    for item in run("--quick" in sys.argv[1:]):
        print(item)


if __name__ == "__main__":
    main()
