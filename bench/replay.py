"""Benchmark: recorded replay against running the same program bare.

A recorded replay re-runs the program with every LM call answered from the record, and
records the replay (its predictions, one verdict each, the totals). Its throughput
should be bounded by DSPy itself: the target is at least 80% of the throughput of
running the same program (the demo's ``ChainOfThought``) bare, with no ledger, against
``DummyLM``. Both are measured side by side in one process, alternating, best of the
repeats; only the ratio means anything on a shared machine.

    python -m bench.replay [--quick]
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Row, row

PROGRAM = "dspy_ledger.demo:build_program"
TARGET_RATIO = 0.8


def _answers(count: int) -> list[dict[str, str]]:
    return [
        {"reasoning": f"Step by step for question {i}.", "answer": f"answer {i}"}
        for i in range(count)
    ]


def _questions(count: int) -> list[str]:
    return [f"What is the answer to question number {i}?" for i in range(count)]


def _bare(count: int, recorded_by: Any = None) -> float:
    """Seconds to run the program over ``count`` inputs against DummyLM.

    With ``recorded_by`` (a ledger) the run is recorded until committed, under a
    context of its own so that the replays (which choose ``production``) skip it.
    """
    import dspy
    from dspy.utils.dummies import DummyLM

    from commands.scope import in_context
    from dspy_ledger.demo import build_program

    program = build_program()
    with contextlib.ExitStack() as stack:
        stack.enter_context(dspy.context(lm=DummyLM(_answers(count))))
        if recorded_by is not None:
            stack.enter_context(recorded_by.instrument())
            stack.enter_context(in_context("bench"))
        started = time.perf_counter()
        for question in _questions(count):
            program(question=question)
        if recorded_by is not None:
            recorded_by.flush()  # a recorded run is done once it is committed
        seconds = time.perf_counter() - started
    return seconds


def _record(ledger: Any, count: int) -> None:
    import dspy
    from dspy.utils.dummies import DummyLM

    from dspy_ledger.demo import build_program

    program = build_program()
    with ledger.instrument(), dspy.context(lm=DummyLM(_answers(count))):
        for question in _questions(count):
            program(question=question)


def _replay(ledger: Any) -> tuple[float, float]:
    """Seconds for one recorded replay of the production predictions, and its match rate."""
    started = time.perf_counter()
    report = ledger.replay(PROGRAM)
    return time.perf_counter() - started, report.totals.exact_match_rate


def run(quick: bool) -> list[Row]:
    """Measure and return the rows ``{section, name, value, unit, baseline, ratio, target}``."""
    import dspy_ledger

    logging.getLogger("dspy").setLevel(logging.ERROR)
    count, repeats = (40, 2) if quick else (300, 3)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'ledger.db'}"
        with dspy_ledger.open(url, durability="async") as ledger:
            _record(ledger, count)
            ledger.flush()
            _bare(min(count, 10))  # warm DSPy's adapters and imports for both sides
            bare, recorded, replay, match = [], [], [], 1.0
            for _ in range(repeats):
                bare.append(_bare(count))
                recorded.append(_bare(count, recorded_by=ledger))
                seconds, rate = _replay(ledger)
                replay.append(seconds)
                match = min(match, rate)
    bare_rate = count / min(bare)
    recorded_rate = count / min(recorded)
    replay_rate = count / min(replay)
    section = "4. Replay"
    return [
        row(section, "bare program against DummyLM (no ledger)", bare_rate, "predictions/s"),
        row(
            section,
            "recorded replay (served from the record, replay recorded)",
            replay_rate,
            "predictions/s",
            baseline=bare_rate,
            target=f">= {TARGET_RATIO}x bare",
        ),
        row(
            section,
            "the same program recorded by the ledger (async writer)",
            recorded_rate,
            "predictions/s",
            baseline=bare_rate,
        ),
        row(
            section,
            "recorded replay vs the same program recorded",
            replay_rate,
            "predictions/s",
            baseline=recorded_rate,
        ),
        row(
            section,
            "recorded replay exact-match rate",
            match,
            "fraction",
            target="1.0",
        ),
    ]


if __name__ == "__main__":
    for item in run(quick="--quick" in sys.argv[1:]):
        ratio = "" if item["ratio"] is None else f"  ratio {item['ratio']:.3f}"
        print(f"{item['name']:<60} {item['value']:>10.1f} {item['unit']}{ratio}")
