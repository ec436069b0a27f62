"""Section 1c: where async recording's clock time goes, one step added at a time.

Six variants, each a step more of async recording than the one before, measured in
turn, round after round, in one process (medians of the rounds, ratios to bare DSPy):

1. bare DSPy;
2. the hooks, with a recorder that does nothing;
3. the recorder, its drafts discarded;
4. the recorder, each draft encoded for the writer process and then discarded
   (:class:`commands.portable_drafts.DraftEncoder`, one pickler reused, which is what
   ``submit`` does before writing);
5. async recording with a writer process that reads, decodes and acknowledges every
   draft but builds and commits nothing (:mod:`bench.discarding_writer`);
6. async recording on SQLite, the real writer process.

Steps 5 and 6 differ only in the writer process's own work (building the events,
encrypting, inserting, the fsync'd commit), which runs on the other core: their gap is
what that work costs the program. Rounds are long (thousands of predictions) because
rounds of a few hundred scatter by several percent on a shared two-core machine.

    python -m bench.clock_split [--quick]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from unittest import mock

from bench.common import (
    NoOpRecorder,
    Row,
    bench_recorder,
    configure_dspy,
    interleaved,
    make_program,
    median,
    predict_many,
    print_rows,
    row,
)

SECTION = "1c. Where async recording's clock time goes (program's hot path)"
VARIANTS = (
    "bare",
    "hooks with a no-op recorder",
    "recorder alone, drafts discarded",
    "recorder, drafts encoded for the writer process",
    "async/sqlite, writer process discarding drafts",
    "async/sqlite (writer process)",
)


@contextmanager
def _hooked(recorder: Any) -> Iterator[None]:
    from commands import hooks

    hooks.attach(recorder)
    try:
        yield
    finally:
        hooks.detach(recorder)


def _writer_module(module: str) -> AbstractContextManager[Any]:
    """Start writer processes from ``module`` instead of ``commands.writer_process``."""
    from commands import process_writer
    from ledger.subprocess_command import module_command

    def command(_module: str, *arguments: str) -> list[str]:
        return module_command(module, *arguments)

    return mock.patch.object(process_writer, "module_command", new=command)


@contextmanager
def _enabled(variant: str) -> Iterator[Callable[[], None]]:
    """Switch ``variant`` on; yield what waits until everything recorded so far is written."""
    from commands.portable_drafts import DraftEncoder

    if variant == "bare":
        yield lambda: None
    elif variant == "hooks with a no-op recorder":
        with _hooked(NoOpRecorder()):
            yield lambda: None
    elif variant == "recorder alone, drafts discarded":
        with _hooked(bench_recorder()):
            yield lambda: None
    elif variant == "recorder, drafts encoded for the writer process":
        # The writer's own encoder: versions go once and one pickler is reused, as in
        # ProcessWriter.submit (a pickler made per draft: 10.1 against 9.3 µs in a loop).
        encoder = DraftEncoder()

        def encode(draft: object) -> None:
            encoder.encode(draft)

        with _hooked(bench_recorder(encode)):
            yield lambda: None
    else:
        import dspy_ledger

        module = "bench.discarding_writer" if "discarding" in variant else "commands.writer_process"
        store = tempfile.TemporaryDirectory(prefix="dspy-ledger-split-")
        with store as folder, _writer_module(module):
            ledger = dspy_ledger.open(f"sqlite:///{folder}/ledger.db", durability="async")
            try:
                ledger.instrument()
                yield ledger.flush
            finally:
                ledger.close()


def _measure(program: Any, variant: str, count: int, warm_up: int) -> float:
    """Microseconds per prediction in the timed loop, the variant warmed up first."""
    with _enabled(variant) as settle:
        predict_many(program, warm_up)
        settle()  # the warm-up's drafts are written before the timed loop starts
        elapsed = predict_many(program, count, offset=warm_up)
        settle()
    return elapsed / count * 1e6


def run(quick: bool) -> list[Row]:
    """Measure every variant in turn, ``rounds`` times; report medians and ratios."""
    import dspy_ledger  # noqa: F401  (first: it reads DSPy's LM call before any hook wraps it)

    configure_dspy()
    program = make_program()
    count, rounds, warm_up = (20, 1, 5) if quick else (3000, 7, 200)
    measures: dict[str, Callable[[], float]] = {
        variant: functools.partial(_measure, program, variant, count, warm_up)
        for variant in VARIANTS
    }
    results = interleaved(measures, rounds)
    bare = median(results["bare"])
    return [
        row(
            SECTION,
            variant,
            median(values),
            "µs/prediction",
            baseline=None if variant == "bare" else bare,
            target="<= 1.15x bare" if variant == VARIANTS[-1] else None,
        )
        for variant, values in results.items()
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.clock_split [--quick]``: print the split."""
    parser = argparse.ArgumentParser(prog="python -m bench.clock_split", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few predictions per variant")
    args = parser.parse_args(argv)
    print_rows(run(args.quick), "9.1f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
