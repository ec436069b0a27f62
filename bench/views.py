"""Benchmark of the views: rebuild and catch-up throughput, and a cost report over many
predictions.

``run(quick)`` returns rows ``{"section", "name", "value", "unit", "baseline", "ratio",
"target"}``. Rebuild rows compare, in the same run and on the same ledger, the views'
field reader (the database extracts the few fields a view needs) with the library mapper
decoding every event in full (``baseline``). Catch-up rows time a view that already holds
the first half of the ledger, with its indexes, as a live view does, taking in the second
half: in batches of 20,000 events (what a report's catch-up reads at once) and of 500
(what following a busy ledger gives, a poll's or a notification's worth, each batch its
own read and transaction); their baseline is the view's rebuild. The report row times a
cost-by-model-by-day report over a synthetic ledger of 1,000,000 predictions (20,000
with ``quick``); its baseline is the same report summed from the per-call facts.

Rebuild figures are medians of interleaved rounds, wall clock and per CPU second of the
rebuilding thread (the machine may be shared; CPU time is what the code costs); catch-up
figures, medians of three rounds, wall clock.

Run: ``python -m bench.views [--quick]``. ``python -m bench.views --against DIR`` instead
rebuilds each view alternately with the ``projections`` package found in ``DIR`` (an
older checkout) and with this one, in child processes, on one synthetic ledger of
50,000 predictions (``--predictions N``) and the cost view on 1,000,000 predictions
(``--large N``, 0 to skip; ``--large-rounds`` rounds, default one), and prints both
sides' medians. A rebuild deletes the rows the previous one left, timed (``--fresh``:
before its clock starts, so that each side builds into an empty view). ``--batch-size N``
rebuilds in batches of N events (20,000 by default; small ones are what following a
busy ledger gives).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Row, row
from bench.synthetic import generate
from dspy_ledger.ledger import Ledger
from projections.runner import DEFAULT_BATCH_SIZE, VIEW_NAMES, catch_up, open_view, rebuild

ROOT = Path(__file__).resolve().parent.parent


def _row(
    name: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    target: str | None = None,
) -> Row:
    return row("views", name, value, unit, baseline=baseline, target=target)


def _rebuild_rate(ledger: Ledger, view: str, *, fast: bool) -> tuple[float, float]:
    """(events per second, events per CPU second) of one rebuild of ``view``."""
    projection = open_view(ledger.app, view)
    projection.reader.fast = fast and projection.reader._statement is not None
    started, cpu = time.perf_counter(), time.thread_time()
    events = rebuild(projection)
    return events / (time.perf_counter() - started), events / (time.thread_time() - cpu)


#: The batch sizes catch-up is timed with (see the module's docstring).
CATCH_UP_BATCHES = (DEFAULT_BATCH_SIZE, 500)


def _catch_up_rate(ledger: Ledger, view: str, batch_size: int) -> float:
    """Events per second of catching ``view`` up on the second half of the ledger, the
    first half already in it with its indexes."""
    projection = open_view(ledger.app, view)
    projection.view.reset()
    last = ledger.app.last_position()
    catch_up(projection, stop=last // 2)
    projection.view.build_indexes()
    started = time.perf_counter()
    events = catch_up(projection, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    if projection.view.position() != last:
        msg = f"The {view} view caught up to {projection.view.position()}, not to {last}."
        raise RuntimeError(msg)
    return events / elapsed


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
                _rebuild_rate(small, view, fast=True)  # warm the page cache
                rounds = [
                    (_rebuild_rate(small, view, fast=False), _rebuild_rate(small, view, fast=True))
                    for _ in range(1 if quick else 3)
                ]
                rows.extend(_rebuild_rows(view, rounds))
                rebuilt = statistics.median(fast[0] for _, fast in rounds)
                for batch_size in CATCH_UP_BATCHES:
                    rates = [
                        _catch_up_rate(small, view, batch_size) for _ in range(1 if quick else 3)
                    ]
                    rows.append(
                        _row(
                            f"catch up {view} (SQLite), batches of {batch_size:,} events",
                            statistics.median(rates),
                            "events/s",
                            rebuilt,
                        )
                    )
        finally:
            small.close()
        rows.extend(_report_rows(Path(folder), 20_000 if quick else 1_000_000))
    return rows


def _rebuild_rows(
    view: str, rounds: list[tuple[tuple[float, float], tuple[float, float]]]
) -> list[Row]:
    """Median rates of (mapper, field reader) rounds: wall clock, then per CPU second."""
    mapper = [m for m, _ in rounds]
    fast = [f for _, f in rounds]
    return [
        _row(
            f"rebuild {view} (SQLite){label}",
            statistics.median(f[i] for f in fast),
            unit,
            statistics.median(m[i] for m in mapper),
            ">= 50000 events/s" if i == 0 else None,
        )
        for i, (label, unit) in enumerate((("", "events/s"), (", per CPU second", "events/s")))
    ]


def _report_rows(folder: Path, predictions: int) -> list[Row]:
    ledger = Ledger(f"sqlite:///{folder / 'report.db'}", actor="bench")
    try:
        started = time.perf_counter()
        events = generate(ledger, predictions)
        generated = time.perf_counter() - started
        projection = open_view(ledger.app, "cost")
        started, cpu = time.perf_counter(), time.thread_time()
        rebuild(projection, batch_size=20_000)
        rebuilt, rebuilt_cpu = time.perf_counter() - started, time.thread_time() - cpu
        view: Any = projection.view
        report = _timed(lambda: view.cost_rows(["model", "day"]), 5)
        facts = _timed(lambda: view._fact_rows(["model", "day"], (None, None, "0", "0"), []), 1)
        label = f"{predictions:,} predictions"
        return [
            _row(f"generate synthetic ledger ({label})", events / generated, "events/s"),
            _row(f"rebuild cost view ({label})", events / rebuilt, "events/s", target=">= 50000"),
            _row(f"rebuild cost view ({label}), per CPU second", events / rebuilt_cpu, "events/s"),
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


#: A child process's rebuild; prints JSON. argv: the ledger URL, the view, "fresh" or not
#: (fresh: the rows the previous round left are deleted before the clock starts, so each
#: side builds into an empty view; otherwise the rebuild deletes them, as rebuilding a
#: view that exists does), and the batch size.
_CHILD = """
import json, sys, time
from dspy_ledger.ledger import Ledger
from projections.runner import open_view, rebuild
ledger = Ledger(sys.argv[1], actor="bench")
projection = open_view(ledger.app, sys.argv[2])
if sys.argv[3] == "fresh":
    projection.view.reset()
started, cpu = time.perf_counter(), time.thread_time()
events = rebuild(projection, batch_size=int(sys.argv[4]))
wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
ledger.close()
print(json.dumps({"wall": events / wall, "cpu": events / cpu}))
"""


def _child_rate(source: Path, url: str, view: str, options: list[str]) -> dict[str, float]:
    """Rebuild ``view`` in a child process importing ``projections`` from ``source``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, url, view, *options],
        env=env,
        cwd=source,
        capture_output=True,
        text=True,
        check=True,
    )
    rates: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return rates


def compare(
    against: Path,
    predictions: int,
    *,
    large: int,
    rounds: int,
    large_rounds: int,
    fresh: bool,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> None:
    """Print median rebuild rates of the code in ``against`` and this code, side by side."""
    sides = {"against": against.resolve(), "this": ROOT}
    with tempfile.TemporaryDirectory() as folder:
        cases = [(predictions, view) for view in VIEW_NAMES] + ([(large, "cost")] if large else [])
        ledgers: dict[int, str] = {}
        for size, view in cases:
            if size not in ledgers:
                ledgers[size] = f"sqlite:///{Path(folder) / f'{size}.db'}"
                ledger = Ledger(ledgers[size], actor="bench")
                generate(ledger, size)
                ledger.close()
            results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
            options = ["fresh" if fresh else "in place", str(batch_size)]
            _child_rate(ROOT, ledgers[size], view, options)  # warm the page cache
            for turn in range(rounds if size == predictions else large_rounds):
                # Alternate which side goes first: the second may find more in the cache.
                order = list(sides.items()) if turn % 2 == 0 else list(sides.items())[::-1]
                for side, source in order:
                    results[side].append(_child_rate(source, ledgers[size], view, options))
            line = [f"{view} ({size:,} predictions):"]
            for side, rates in results.items():
                wall = statistics.median(r["wall"] for r in rates)
                cpu = statistics.median(r["cpu"] for r in rates)
                line.append(f"{side} {wall:,.0f} events/s ({cpu:,.0f} per CPU second)")
            print(" ".join(line), flush=True)


def main() -> None:
    """Print the rows, one per line (or, with ``--against DIR``, the comparison)."""
    parser = argparse.ArgumentParser(prog="python -m bench.views")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--against", type=Path, help="a checkout holding older projections/")
    parser.add_argument("--predictions", type=int, default=50_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--large-rounds", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="time rebuilds into empty views")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    args = parser.parse_args()
    if args.against is not None:
        compare(
            args.against,
            args.predictions,
            large=args.large,
            rounds=args.rounds,
            large_rounds=args.large_rounds,
            fresh=args.fresh,
            batch_size=args.batch_size,
        )
        return
    for item in run(args.quick):
        print(item)


if __name__ == "__main__":
    main()
