"""Section 1b: instructions per prediction, which the machine's load does not move.

Wall-clock ratios on a shared two-core machine move by several percent between runs.
The number of machine instructions a prediction executes does not: for the same
interpreter, code and inputs, valgrind's callgrind counts the same total whatever else
the machine is doing. Each variant runs in a fresh interpreter under
``valgrind --tool=callgrind``, twice: with ``N`` and with ``3N`` predictions after the
same warm-up. The difference divided by ``2N`` is the count per prediction, so start-up
(imports, opening a ledger, starting the writer process) cancels out.

Two settings make the difference repeatable:

- ``PYTHONHASHSEED`` is fixed. With random hashing, the dict work of start-up alone
  moves by tens of millions of instructions from one interpreter to the next, which
  would be a hundred thousand per prediction at ``N = 100``.
- The writer process lingers for up to a minute
  (:data:`commands.writer_process.LINGER_ENV_VAR`), so it commits once, when the run
  flushes. Under valgrind this process runs some fifty times slower, so a 20 ms linger
  would commit a batch per prediction, and its status reports, read here, would be
  counted as the recorder's.

Only the program's process is counted: the writer process is not run under valgrind.
For ``async`` durability this is the work on the program's side (recording and handing
over); for ``sync`` it is everything, including building and inserting the events, but
not the time spent waiting for the disk.

The section needs valgrind and is slow (a few minutes), so only the full run counts;
``--quick`` runs each variant natively for a couple of predictions, so that the variants
cannot rot unseen.

    python -m bench.instructions [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    NoOpRecorder,
    Row,
    bench_recorder,
    configure_dspy,
    make_program,
    predict_many,
    print_rows,
    row,
    usable_cpus,
)

SECTION = "1b. Instructions per prediction (callgrind, this process only)"
#: The variants, in report order; the first is every other's baseline.
VARIANTS = (
    "bare",
    "hooks with a no-op recorder",
    "recorder alone, drafts discarded",
    "async/sqlite (writer process)",
    "sync/sqlite",
)
WARM_UP = 30
COUNT = 100
#: Long enough that the writer process commits only when the run flushes.
_LINGER_MS = "60000"


def _enable(variant: str, folder: str) -> Any:
    """Switch ``variant`` on; return the ledger to flush and close, if there is one."""
    from commands import hooks

    if variant == "hooks with a no-op recorder":
        hooks.attach(NoOpRecorder())
    elif variant == "recorder alone, drafts discarded":
        hooks.attach(bench_recorder())
    elif variant in ("async/sqlite (writer process)", "sync/sqlite"):
        import dspy_ledger

        url = f"sqlite:///{folder}/ledger.db"
        if variant == "sync/sqlite":
            ledger = dspy_ledger.open(url, durability="sync")
        else:
            ledger = dspy_ledger.open(url, durability="async")
        ledger.instrument()
        return ledger
    elif variant != "bare":
        msg = f"Unknown variant {variant!r}; the variants are {', '.join(VARIANTS)}."
        raise ValueError(msg)
    return None


def freeze_start_up() -> None:
    """Collect, then freeze every object alive now, before the counted predictions.

    A full collection walks every object start-up made, tens of millions of
    instructions, once every few thousand predictions, as often bare as recorded:
    whether one fell between N and 3N moved a ratio by 0.07x (docs/performance.md, item
    28). Frozen, start-up's objects are not walked again, and every variant counts its
    own work alone.
    """
    gc.collect()
    gc.freeze()


def _work(variant: str, count: int, folder: str) -> None:
    """What one counted interpreter runs: the warm-up, then ``count`` predictions."""
    configure_dspy()
    program = make_program()
    ledger = _enable(variant, folder)
    predict_many(program, WARM_UP)
    freeze_start_up()
    predict_many(program, count, offset=WARM_UP)
    if ledger is not None:
        ledger.close()  # flushes: everything recorded is committed


def _command(variant: str, count: int, folder: str) -> list[str]:
    return [sys.executable, "-m", "bench.instructions", "--worker", variant, str(count), folder]


def counting_environment() -> dict[str, str]:
    """A fixed hash seed, and a writer process that commits only when the run flushes."""
    from commands.writer_process import LINGER_ENV_VAR

    return {**os.environ, "PYTHONHASHSEED": "0", LINGER_ENV_VAR: _LINGER_MS}


def counted(command: list[str]) -> int:
    """Instructions the interpreter running ``command`` executed, start-up and all, under
    callgrind with this section's settings (:func:`counting_environment`)."""
    with tempfile.TemporaryDirectory(prefix="dspy-ledger-callgrind-") as folder:
        out = Path(folder, "callgrind.out")
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--quiet"]
        subprocess.run(
            [*valgrind, *command], env=counting_environment(), check=True, stdout=subprocess.DEVNULL
        )
        for line in out.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    msg = f"callgrind wrote no total for {' '.join(command)!r}."
    raise RuntimeError(msg)


def _counted(variant: str, count: int) -> int:
    """Instructions this interpreter executed, start-up and all, for ``count`` predictions."""
    with tempfile.TemporaryDirectory(prefix="dspy-ledger-instructions-") as folder:
        return counted(_command(variant, count, folder))


def per_prediction(variant: str, count: int = COUNT) -> float:
    """Instructions per prediction: (3N predictions minus N predictions) / 2N."""
    return (_counted(variant, 3 * count) - _counted(variant, count)) / (2 * count)


def _exercise() -> None:
    """Run every variant natively for a few predictions (the quick run's check)."""
    for variant in VARIANTS:
        with tempfile.TemporaryDirectory(prefix="dspy-ledger-instructions-") as folder:
            subprocess.run(_command(variant, 2, folder), env=counting_environment(), check=True)


def run(quick: bool) -> list[Row]:
    """Count every variant (full run, with valgrind); rows with ratios to bare DSPy."""
    if quick:
        _exercise()
        print("bench: instructions are counted in the full run only (valgrind is slow).")
        return []
    if shutil.which("valgrind") is None:
        print("bench: valgrind is not installed; instructions per prediction skipped.")
        return []
    with ThreadPoolExecutor(max_workers=usable_cpus()) as pool:
        counts = dict(zip(VARIANTS, pool.map(per_prediction, VARIANTS), strict=True))
    bare = counts["bare"]
    return [
        row(
            SECTION,
            variant,
            value,
            "instructions/prediction",
            baseline=None if variant == "bare" else bare,
        )
        for variant, value in counts.items()
    ]


def counting_main(
    argv: list[str] | None,
    module: Any,
    work: Callable[[str, int, str], None],
    value_format: str,
) -> int:
    """``python -m <module> [--quick]`` for a counting section, or one ``--worker`` run
    (what :func:`counted` counts: ``work(variant, count, folder)``)."""
    name = getattr(module.__spec__, "name", None) or module.__name__  # not "__main__"
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=module.__doc__)
    parser.add_argument("--quick", action="store_true", help="run the variants natively only")
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "COUNT", "FOLDER"))
    args = parser.parse_args(argv)
    if args.worker:
        variant, count, folder = args.worker
        work(variant, int(count), folder)
        return 0
    print_rows(module.run(args.quick), value_format)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.instructions [--quick]``, or one counted ``--worker`` run."""
    return counting_main(argv, sys.modules[__name__], _work, "12,.0f")


if __name__ == "__main__":
    sys.exit(main())
