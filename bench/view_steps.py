"""Where one view rebuild spends its time: wall and CPU time per step, per event.

Times the steps of one rebuild of a view over a SQLite ledger: reading a batch (the
database extracts the fields), whatever the view reads from the ledger before a batch's
transaction opens, writing the rows, and writing plus committing.

Run: ``python -m bench.view_steps LEDGER.db [--view cost] [--batch-size N]
[--generate N]`` (``--generate``: first append N synthetic predictions to the file).
To measure another checkout's ``projections``, run this file by its path with that
checkout first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from bench.synthetic import generate
from dspy_ledger.ledger import Ledger
from projections.runner import DEFAULT_BATCH_SIZE, open_view, rebuild

#: Step name -> the object and method name timed as that step.
_STEPS = (
    ("read a batch", "reader", "read"),
    ("read from the ledger before writing", "view", "read_before_writing"),
    ("write the rows", "view", "write"),
    ("write and commit", "view", "process"),
)


def _timed(totals: list[float], call: Callable[..., Any]) -> Callable[..., Any]:
    """``call``, adding its wall and CPU seconds to ``totals``."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return call(*args, **kwargs)
        finally:
            totals[0] += time.perf_counter() - wall
            totals[1] += time.thread_time() - cpu

    return timed


def measure(path: str, view: str, batch_size: int) -> list[str]:
    """Rebuild ``view`` of the ledger at ``path`` once; lines describing each step."""
    ledger = Ledger(f"sqlite:///{path}", actor="bench")
    try:
        projection = open_view(ledger.app, view)
        projection.view.reset()  # deleting the last rebuild's rows is not timed
        owners = {"reader": projection.reader, "view": projection.view}
        totals: dict[str, list[float]] = {}
        for step, owner, method in _STEPS:
            if hasattr(owners[owner], method):
                totals[step] = [0.0, 0.0]
                bound = getattr(owners[owner], method)
                setattr(owners[owner], method, _timed(totals[step], bound))
        wall, cpu = time.perf_counter(), time.thread_time()
        events = rebuild(projection, batch_size=batch_size)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    finally:
        ledger.close()
    lines = [
        f"rebuild {view}, {events:,} events in batches of {batch_size:,}: "
        f"{events / wall:,.0f} events/s ({events / cpu:,.0f} per CPU second)"
    ]
    for step, (step_wall, step_cpu) in totals.items():
        per_event = f"{step_wall * 1e6 / events:.2f} µs wall, {step_cpu * 1e6 / events:.2f} µs CPU"
        lines.append(f"  {step}: {per_event} per event")
    return lines


def main() -> None:
    """Print the steps of one rebuild."""
    parser = argparse.ArgumentParser(prog="python -m bench.view_steps")
    parser.add_argument("ledger", help="a SQLite ledger file")
    parser.add_argument("--view", default="cost")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--generate", type=int, default=0, help="first add N predictions")
    args = parser.parse_args()
    if args.generate:
        ledger = Ledger(f"sqlite:///{args.ledger}", actor="bench")
        try:
            generate(ledger, args.generate)
        finally:
            ledger.close()
    print("\n".join(measure(args.ledger, args.view, args.batch_size)))


if __name__ == "__main__":
    main()
