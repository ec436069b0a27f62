"""Recording cost of per-subject encryption: predictions per second with and without a subject.

    .venv/bin/python bench/bench_privacy.py [N]

Runs both variants side by side on fresh SQLite ledgers (sync durability, DummyLM) and
prints the ratio; only the ratio means anything on a shared machine.
"""

from __future__ import annotations

import sys
import tempfile
import time
from contextlib import nullcontext

import dspy
from dspy.utils.dummies import DummyLM

import dspy_ledger
from ledger.privacy import generate_master_key


def run(n: int, subject: str | None, key: str) -> float:
    """Seconds to record ``n`` predictions (each for ``subject`` when given)."""
    folder = tempfile.mkdtemp()
    with dspy_ledger.open(f"sqlite:///{folder}/bench.db", master_key=key) as ledger:
        ledger.instrument()
        program = dspy.Predict("question -> answer")
        with dspy.context(lm=DummyLM([{"answer": "a"}] * n)):
            start = time.perf_counter()
            for i in range(n):
                scope = ledger.acting_for(f"{subject}-{i % 10}") if subject else nullcontext()
                with scope:
                    program(question=f"question {i} from jane@example.com")
            ledger.flush()
            return time.perf_counter() - start


def main() -> None:
    """Print predictions per second for both variants and their ratio."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    key = generate_master_key()
    run(20, None, key)  # warm up imports and caches
    plain = min(run(n, None, key) for _ in range(3))
    subject = min(run(n, "customer", key) for _ in range(3))
    print(f"without subject: {n / plain:8.1f} predictions/s")
    print(f"with subject:    {n / subject:8.1f} predictions/s")
    print(f"ratio (with / without time): {subject / plain:.2f}")


if __name__ == "__main__":
    main()
