"""Benchmark: recorded replay against running the same program bare.

A recorded replay re-runs the program with every LM call answered from the record, and
records the replay (its predictions, one verdict each, the totals). Its throughput
should be bounded by DSPy itself: the target is at least 80% of the throughput of
running the same program (the demo's ``ChainOfThought``) bare, with no ledger, against
``DummyLM``.

The variants run side by side in one process, interleaved round by round, each after a
full garbage collection (opening each round's ledger copy leaves thousands of new
long-lived objects, and the full collection they trigger, about 150 ms with DSPy loaded,
would otherwise land in whichever timed run comes next), and the medians are reported:
the bare program; the same program recorded by the ledger (async writer, until
committed); and a recorded replay of the same number of recorded predictions. Each
recorded run and each replay gets a fresh copy of one recorded ledger (of N or of 3N
predictions), so every round replays against the same record. Both open the copy with
``durability="async"`` (what ``dspy-ledger replay`` uses): the writer process
group-commits the replay's predictions, the replay waits for them before it records its
verdicts, and its own ``ReplayStarted`` and verdicts are two direct commits of its own,
at the start and end.
The gap between replay and bare splits into two parts, both reported per prediction:
recording (recorded minus bare) and the replay's own work (replay minus recorded:
choosing and reading the record, serving it, judging, waiting for the writer to commit
what the replay made, recording the verdicts).

A replay also costs a fixed amount once, whatever it covers: building the program from
its recorded state, committing ``ReplayStarted``, waiting for the writer's last commit
and committing the verdicts (about 10-16 ms here, 0.01-0.02x of a replay of 1,000).
Throughput is the steady rate, so the bare program and the replay also run over 3N
predictions in each round, and the target row compares the two rates over the extra 2N
(3N minus N, per round; the median of the rounds), as section 4b does with
instructions. The ratios of whole runs of N and of 3N are reported beside it.

    python -m bench.replay [--quick]
"""

from __future__ import annotations

import contextlib
import gc
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Row, interleaved, median, row, writer_ready

PROGRAM = "dspy_ledger.demo:build_program"
TARGET_RATIO = 0.8
SECTION = "4. Replay"


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
        gc.collect()  # what opening a ledger copy left is not this run's to collect
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


def _replay(ledger: Any, count: int) -> tuple[float, float]:
    """Seconds for one recorded replay of the production predictions, and its match rate."""
    gc.collect()
    started = time.perf_counter()
    report = ledger.replay(PROGRAM)
    seconds = time.perf_counter() - started
    if report.totals.predictions != count:
        msg = f"The replay covered {report.totals.predictions} predictions, not {count}."
        raise RuntimeError(msg)
    return seconds, report.totals.exact_match_rate


class _Copies:
    """Fresh copies of one recorded SQLite ledger, one per measured run."""

    def __init__(self, folder: Path, original: Path) -> None:
        self.folder = folder
        self.original = original
        self.made = 0

    @contextlib.contextmanager
    def open(self) -> Any:
        """Open a new copy of the recorded ledger; delete it when done."""
        import dspy_ledger

        self.made += 1
        copy = self.folder / f"copy-{self.made}.db"
        shutil.copyfile(self.original, copy)
        try:
            with dspy_ledger.open(f"sqlite:///{copy}", durability="async") as ledger:
                writer_ready(ledger)
                yield ledger
        finally:
            for leftover in self.folder.glob(f"{copy.name}*"):
                leftover.unlink()


def _steady_rate(small: list[float], large: list[float], extra: int) -> float:
    """Predictions per second over the ``extra`` predictions a large run makes more than a
    small one: the median over rounds of each round's difference."""
    return extra / median([b - a for a, b in zip(small, large, strict=True)])


def run(quick: bool) -> list[Row]:
    """Measure and return the rows ``{section, name, value, unit, baseline, ratio, target}``."""
    import dspy_ledger

    logging.getLogger("dspy").setLevel(logging.ERROR)
    # Rounds of 1,000 and 3,000: rounds of 300 scattered by a fifth on a shared two-core
    # machine.
    count, rounds = (40, 3) if quick else (1000, 7)
    large = 3 * count
    matches: list[float] = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        copies = {}
        for size in (count, large):
            original = folder / f"recorded-{size}.db"
            with dspy_ledger.open(f"sqlite:///{original}", durability="async") as ledger:
                _record(ledger, size)
            # Closed: everything is in the main database file, which is all a copy takes.
            copies[size] = _Copies(folder, original)

        def recorded() -> float:
            with copies[count].open() as ledger:
                return _bare(count, recorded_by=ledger)

        def replay(size: int) -> float:
            with copies[size].open() as ledger:
                seconds, rate = _replay(ledger, size)
            matches.append(rate)
            return seconds

        variants = {
            "bare": lambda: _bare(count),
            "recorded": recorded,
            "replay": lambda: replay(count),
            "bare 3N": lambda: _bare(large),
            "replay 3N": lambda: replay(large),
        }
        interleaved(variants, 1)  # warm DSPy's adapters, imports and caches for every variant
        times = interleaved(variants, rounds)
    bare, recorded_s, replay_s = (median(times[n]) for n in ("bare", "recorded", "replay"))
    bare_large, replay_large = median(times["bare 3N"]), median(times["replay 3N"])
    bare_rate = _steady_rate(times["bare"], times["bare 3N"], large - count)
    replay_rate = _steady_rate(times["replay"], times["replay 3N"], large - count)
    per_prediction = 1e6 / count
    recording_us = median([r - b for r, b in zip(times["recorded"], times["bare"], strict=True)])
    replay_us = median([p - r for p, r in zip(times["replay"], times["recorded"], strict=True)])
    return [
        row(SECTION, "bare program against DummyLM (no ledger)", count / bare, "predictions/s"),
        row(
            SECTION,
            f"recorded replay, steady rate (the {large - count:,} predictions 3N adds to N)",
            replay_rate,
            "predictions/s",
            baseline=bare_rate,
            target=f">= {TARGET_RATIO}x bare",
        ),
        row(
            SECTION,
            f"recorded replay, whole run of {count:,} (served from the record, async)",
            count / replay_s,
            "predictions/s",
            baseline=count / bare,
        ),
        row(
            SECTION,
            f"recorded replay, whole run of {large:,}",
            large / replay_large,
            "predictions/s",
            baseline=large / bare_large,
        ),
        row(
            SECTION,
            "the same program recorded by the ledger (async writer)",
            count / recorded_s,
            "predictions/s",
            baseline=count / bare,
        ),
        row(
            SECTION,
            "recorded replay vs the same program recorded",
            count / replay_s,
            "predictions/s",
            baseline=count / recorded_s,
        ),
        row(
            SECTION,
            "recording cost per prediction (recorded minus bare)",
            recording_us * per_prediction,
            "us/prediction",
        ),
        row(
            SECTION,
            "replay-specific cost per prediction (replay minus recorded)",
            replay_us * per_prediction,
            "us/prediction",
        ),
        row(SECTION, "recorded replay exact-match rate", min(matches), "fraction", target="1.0"),
    ]


if __name__ == "__main__":
    for item in run(quick="--quick" in sys.argv[1:]):
        ratio = "" if item["ratio"] is None else f"  ratio {item['ratio']:.3f}"
        print(f"{item['name']:<62} {item['value']:>10.1f} {item['unit']}{ratio}")
