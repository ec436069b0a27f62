"""``dspy-ledger demo``: record a small DSPy application end to end."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dspy_ledger.cli.options import DbOption, JsonOption
from dspy_ledger.cli.output import stdout_console
from dspy_ledger.demo import run_demo
from dspy_ledger.ledger import Ledger


def demo(
    db: DbOption = None,
    lm: Annotated[
        str | None,
        typer.Option(
            "--lm",
            help="Use this real model (e.g. openai/gpt-4o-mini; needs its API key in the "
            "environment) instead of the built-in simulated one.",
        ),
    ] = None,
    predictions: Annotated[
        int, typer.Option("--predictions", min=1, max=100_000, help="Production predictions.")
    ] = 52,
    as_json: JsonOption = False,
) -> None:
    """Run a DSPy program, evaluate it, compile it, and record it all in the ledger."""
    # DSPy logs each failing call of the demo; the ledger records them instead.
    logging.getLogger("dspy").setLevel(logging.CRITICAL)
    console = Console(stderr=True)
    ledger = Ledger(db, actor="demo")
    total = 20 + 12 + 20 + predictions
    try:
        # DSPy prints to stdout while compiling; keep stdout for the summary (--json).
        with (
            contextlib.redirect_stdout(sys.stderr),
            Progress(
                TextColumn("{task.description:<32}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                disable=as_json,
            ) as bar,
        ):
            task = bar.add_task("recording the demo", total=total)

            def progress(step: str, advance: int) -> None:
                bar.update(task, advance=advance, description=step)

            summary = run_demo(
                ledger, model=lm, production_predictions=predictions, progress=progress
            )
    finally:
        ledger.close()
    if as_json:
        typer.echo(summary.model_dump_json(indent=2))
        return
    out = stdout_console()
    out.print("[bold]dspy-ledger demo[/bold] — recorded and read back from the ledger")
    out.print(f"  model                {summary.model}")
    out.print(f"  events               {summary.events}")
    out.print(f"  predictions          {summary.predictions} ({summary.failed_predictions} failed)")
    out.print(f"  LM calls             {summary.lm_calls}")
    out.print(f"  total cost           ${summary.total_cost_usd:.6f}")
    before = "n/a" if summary.accuracy_before is None else f"{summary.accuracy_before:.1f}%"
    after = "n/a" if summary.accuracy_after is None else f"{summary.accuracy_after:.1f}%"
    out.print(f"  accuracy             {before} before BootstrapFewShot, {after} after")
    out.print(f"  program versions     {summary.program_versions}")
    out.print(f"  ledger               {summary.ledger_url}")
    out.print("Next: dspy-ledger stats, dspy-ledger export | head, dspy-ledger show <stream id>")
