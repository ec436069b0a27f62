"""How far past a shared budget do concurrent processes spend, and what does a check cost?

    python bench/governance_overspend.py [postgresql://postgres@127.0.0.1:5432/test]

1. Over-spend: for 1, 2, 4 and 8 processes, each calling the simulated model as the same
   actor until refused, against one PostgreSQL ledger with a daily budget of 20.5 calls'
   worth; prints the spend past the budget, in USD and in calls, per run.
2. Overhead: the median time of one LM call to the simulated model with enforcement off,
   and on with a budget and a rate limit in force, in alternating batches of one run
   (SQLite and PostgreSQL). Only the difference means anything on a shared machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dspy
import psycopg
from psycopg import sql

import dspy_ledger
from dspy_ledger.simulated_model import SimulatedModelServer, register_simulated_prices

ROOT = Path(__file__).parents[1]
WORKER = ROOT / "tests" / "governance_worker.py"
QUESTION = "What is the capital of France?"


def fresh_schema(base: str) -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    return f"{base}?schema={schema}", schema


def drop_schema(base: str, schema: str) -> None:
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


def overspend(
    base: str, server: SimulatedModelServer, processes: int, one_call: float
) -> dict[str, float]:
    url, schema = fresh_schema(base)
    limit = one_call * 20.5
    try:
        with dspy_ledger.open(url, actor="admin") as admin:
            admin.set_budget(limit, actor="shared")
        start_at = time.time() + 2.0 + processes * 0.5
        workers = [
            subprocess.Popen(
                [sys.executable, str(WORKER), url, server.api_base, str(start_at)],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            for _ in range(processes)
        ]
        results = [json.loads(w.communicate(timeout=600)[0]) for w in workers]
    finally:
        drop_schema(base, schema)
    spent = sum(r["cost_usd"] for r in results)
    return {
        "processes": processes,
        "calls": sum(r["calls"] for r in results),
        "limit_usd": limit,
        "spent_usd": spent,
        "over_usd": spent - limit,
        "over_calls": (spent - limit) / one_call,
    }


def call_times(url: str, server: SimulatedModelServer, rounds: int = 10) -> tuple[float, float]:
    """Median call time (ms) with enforcement off and on, in alternating batches."""
    lm = dspy.LM("openai/sim-qa-small", api_base=server.api_base, api_key="sk", cache=False)
    times: dict[bool, list[float]] = {False: [], True: []}
    with dspy_ledger.open(url, actor="bench") as ledger:
        ledger.set_budget(1e6, actor="bench")
        ledger.set_rate_limit(10**6, actor="bench")
        lm(QUESTION)
        for _ in range(rounds):
            for enforced in (False, True):
                if enforced:
                    ledger.enforce()
                for _ in range(20):
                    started = time.perf_counter()
                    lm(QUESTION)
                    times[enforced].append(time.perf_counter() - started)
                ledger.stop_enforcing()
    return statistics.median(times[False]) * 1000, statistics.median(times[True]) * 1000


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/test"
    register_simulated_prices(include_litellm=False)
    with SimulatedModelServer() as server:
        probe = dspy.LM("openai/sim-qa-small", api_base=server.api_base, api_key="sk", cache=False)
        probe(QUESTION)
        one_call = float(probe.history[-1]["cost"])
        print(f"one call costs ${one_call:.8f}; budget = 20.5 calls' worth")
        for processes in (1, 2, 4, 8):
            for _ in range(3):
                r = overspend(base, server, processes, one_call)
                print(
                    f"{processes} processes: {r['calls']} calls, over by ${r['over_usd']:.8f}"
                    f" = {r['over_calls']:.1f} calls"
                )
        with tempfile.TemporaryDirectory() as folder:
            pg_url, schema = fresh_schema(base)
            for name, url in (("sqlite", f"sqlite:///{folder}/bench.db"), ("postgres", pg_url)):
                try:
                    off, on = call_times(url, server)
                finally:
                    if name == "postgres":
                        drop_schema(base, schema)
                print(
                    f"{name}: median call {off:.2f} ms off, {on:.2f} ms enforced ({on / off:.2f}x)"
                )


if __name__ == "__main__":
    main()
