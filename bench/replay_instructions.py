"""Section 4b: a recorded replay's instructions per prediction, against the bare program's.

By the clock, a replay's ratio to the bare program moves by a tenth from one run to the
next on a shared two-core machine (docs/performance.md, run K); counted instructions do
not. Each variant runs in a fresh interpreter under ``valgrind --tool=callgrind``, with
the settings of section 1b (:mod:`bench.instructions`: a fixed hash seed, the writer
process lingering a minute), once with ``N`` and once with ``3N`` predictions; the
difference over ``2N`` is the count per prediction, so start-up cancels out (and the
collector is frozen once DSPy and the package are imported, as in section 1b, so that a
full collection walking start-up's objects cannot fall in one variant's window only):

- *the bare program*: the demo's ``ChainOfThought`` (what section 4 replays) over ``N``
  questions against ``DummyLM``, no ledger;
- *a recorded replay*: ``ledger.replay(...)`` of a copy of a ledger that holds ``N``
  recorded production predictions, served from the record and recorded itself.

Only the replaying process is counted: the writer process that commits the replay's
predictions runs on the other core, as in section 1b. The quick run replays two
predictions natively, so that the section cannot rot unseen.

    python -m bench.replay_instructions [--quick]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import Row, row, usable_cpus, writer_ready
from bench.instructions import counted, counting_environment, counting_main, freeze_start_up
from bench.replay import PROGRAM, TARGET_RATIO, _bare, _record

SECTION = "4b. Replay, instructions per prediction (callgrind, this process only)"
VARIANTS = ("bare program", "recorded replay")
COUNT = 100


def _recorded(folder: str, count: int) -> Path:
    return Path(folder, f"recorded-{count}.db")


def _record_ledgers(folder: str, counts: list[int]) -> None:
    """Record the ledgers the replays read: ``count`` production predictions each."""
    import dspy_ledger

    for count in counts:
        with dspy_ledger.open(
            f"sqlite:///{_recorded(folder, count)}", durability="async"
        ) as ledger:
            _record(ledger, count)


def _work(variant: str, count: int, folder: str) -> None:
    """What one counted interpreter runs."""
    import dspy  # noqa: F401  (imported before the freeze, as is the package below)

    import dspy_ledger.demo

    freeze_start_up()
    if variant == "bare program":
        _bare(count)
        return
    if variant != "recorded replay":
        msg = f"Unknown variant {variant!r}; the variants are {', '.join(VARIANTS)}."
        raise ValueError(msg)
    copy = Path(folder, f"replayed-{count}-{variant.replace(' ', '-')}.db")
    shutil.copyfile(_recorded(folder, count), copy)
    with dspy_ledger.open(f"sqlite:///{copy}", durability="async") as ledger:
        writer_ready(ledger)
        report = ledger.replay(PROGRAM)
    if report.totals.predictions != count or report.totals.exact_match_rate != 1.0:
        msg = f"The replay of {count} predictions did not reproduce them all: {report.totals}."
        raise RuntimeError(msg)


def _command(variant: str, count: int, folder: str) -> list[str]:
    module = "bench.replay_instructions"
    return [sys.executable, "-m", module, "--worker", variant, str(count), folder]


def per_prediction(variant: str, folder: str, count: int = COUNT) -> float:
    """Instructions per prediction: (3N predictions minus N predictions) / 2N."""
    many = counted(_command(variant, 3 * count, folder))
    few = counted(_command(variant, count, folder))
    return (many - few) / (2 * count)


def run(quick: bool) -> list[Row]:
    """Count both variants (full run, with valgrind); rows with the replay's ratios."""
    with tempfile.TemporaryDirectory(prefix="dspy-ledger-replay-instructions-") as folder:
        if quick:
            _record_ledgers(folder, [2])
            for variant in VARIANTS:
                subprocess.run(_command(variant, 2, folder), env=counting_environment(), check=True)
            print("bench: replay instructions are counted in the full run only (valgrind is slow).")
            return []
        if shutil.which("valgrind") is None:
            print("bench: valgrind is not installed; replay instructions skipped.")
            return []
        _record_ledgers(folder, [COUNT, 3 * COUNT])
        with ThreadPoolExecutor(max_workers=usable_cpus()) as pool:
            counts = list(pool.map(per_prediction, VARIANTS, [folder] * len(VARIANTS)))
    bare, replay = counts
    return [
        row(SECTION, "bare program", bare, "instructions/prediction"),
        row(SECTION, "recorded replay", replay, "instructions/prediction", baseline=bare),
        # Throughput as predictions per million instructions: its ratio is the replay's
        # throughput against the bare program's, the quantity section 4's target names.
        row(
            SECTION,
            "recorded replay throughput, by instructions",
            1e6 / replay,
            "predictions/M instructions",
            baseline=1e6 / bare,
            target=f">= {TARGET_RATIO}x bare",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.replay_instructions [--quick]``, or one counted ``--worker`` run."""
    return counting_main(argv, sys.modules[__name__], _work, "12,.2f")


if __name__ == "__main__":
    sys.exit(main())
