"""``dspy-ledger replay``: re-run recorded predictions and report what changed.

Exit codes: 0 every prediction replayed identically; 4 the replay ran but at least one
prediction was different or failed; 2 bad input for the whole run (a program or
metric that does not import, a factory that returns no DSPy module, a bad option);
3 the store is unavailable.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from commands.replay import ReplayReport
from dspy_ledger.cli.options import DbOption, JsonOption
from dspy_ledger.cli.output import folding_table, stdout_console
from dspy_ledger.ledger import Ledger
from ledger.errors import InvalidInputError

#: The replay ran, and not every prediction replayed identically.
EXIT_NOT_IDENTICAL = 6


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        msg = f"{option} {value!r} is not an ISO date or time; use e.g. 2025-06-01T12:00:00Z."
        raise InvalidInputError(msg) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _live_lm(model: str | None, api_base: str | None) -> Any:
    if model is None:
        if api_base is not None:
            msg = "--lm-api-base needs --lm MODEL: the model to reach at that URL."
            raise InvalidInputError(msg)
        return None
    import dspy

    # A counterfactual must reach the model: DSPy's cache would hide cost and latency.
    return dspy.LM(model, api_base=api_base, cache=False) if api_base else model


def replay(  # noqa: PLR0917 - typer reads options from parameters
    program: Annotated[
        str | None,
        typer.Option(
            "--program",
            help="module:attr of a factory returning a fresh DSPy module "
            "(default: the recorded module path).",
        ),
    ] = None,
    prediction: Annotated[
        list[str] | None,
        typer.Option("--prediction", help="Replay this prediction id (repeatable)."),
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="From this ISO time.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Up to this ISO time.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this actor's.")] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Only predictions of this program version.")
    ] = None,
    context: Annotated[
        str, typer.Option("--context", help="Only this context ('any' for all).")
    ] = "production",
    recorded: Annotated[
        bool,
        typer.Option(
            "--recorded/--live",
            help="Answer every LM call from the record (default), or call a live LM.",
        ),
    ] = True,
    lm: Annotated[
        str | None,
        typer.Option("--lm", help="Replay live against this model (e.g. openai/gpt-4o-mini)."),
    ] = None,
    lm_api_base: Annotated[
        str | None, typer.Option("--lm-api-base", help="The live model's API base URL.")
    ] = None,
    program_version: Annotated[
        str,
        typer.Option(
            "--program-version",
            help="Run 'recorded' (each prediction's own version), 'current' (your code "
            "as it is) or a version id.",
        ),
    ] = "recorded",
    metric: Annotated[
        str | None, typer.Option("--metric", help="module:attr of metric(example, prediction).")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, max=256, help="In parallel.")] = 1,
    asynchronous: Annotated[
        bool | None,
        typer.Option("--async/--no-async", help="Call the program with acall (default: auto)."),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Replay recorded predictions from the record, or live, and report the differences."""
    # A replayed failure is reported below; DSPy's own log lines would only repeat it.
    logging.getLogger("dspy").setLevel(logging.CRITICAL)
    window = (_time(since, "--since"), _time(until, "--until"))
    live = _live_lm(lm, lm_api_base)
    # The replay's predictions are group-committed by the writer: the replay waits for
    # all of them to be committed before it records its verdicts and reports.
    ledger = Ledger(db, create=False, durability="async")
    try:
        with (
            contextlib.redirect_stdout(sys.stderr),
            Progress(
                TextColumn("replaying"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                disable=as_json,
            ) as bar,
        ):
            task = bar.add_task("replay", total=None)
            report = ledger.replay(
                program,
                prediction_ids=prediction or (),
                since=window[0],
                until=window[1],
                actor=actor,
                version=version,
                context=None if context == "any" else context,
                recorded=recorded,
                lm=live,
                program_version=program_version,
                metric=metric,
                threads=threads,
                asynchronous=asynchronous,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    finally:
        ledger.close()
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        _print(report)
    if not report.all_identical:
        raise typer.Exit(EXIT_NOT_IDENTICAL)


def _print(report: ReplayReport) -> None:
    out = stdout_console(soft_wrap=True)
    totals = report.totals
    out.print(f"[bold]replay {report.replay_id}[/bold] ({report.mode}, {report.program})")
    for result in report.results:
        if result.verdict == "identical":
            continue
        out.print(f"  {result.verdict:<9} {result.original_prediction_id}")
        if result.error:
            out.print(f"            {result.error}", markup=False)
        for diff in result.diff:
            line = f"{diff.field}: {diff.recorded!r} -> {diff.replayed!r}"
            out.print(f"            {line}", markup=False)
        if result.divergence:
            out.print(f"            {result.divergence['message']}", markup=False)
            for line in str(result.divergence.get("request_diff", "")).splitlines()[:20]:
                out.print(f"              {line}", markup=False)
    out.print(
        f"  {totals.predictions} predictions: {totals.identical} identical, "
        f"{totals.different} different, {totals.failed} failed "
        f"(exact match {totals.exact_match_rate:.1%})"
    )
    if report.metric:
        before = "n/a" if totals.metric_before is None else f"{totals.metric_before:.3f}"
        after = "n/a" if totals.metric_after is None else f"{totals.metric_after:.3f}"
        out.print(f"  metric {report.metric}: {before} -> {after} ({totals.metric_errors} errors)")
    table = folding_table("calls", "cost before", "cost after", "latency before", "after")
    width = max([len(model.model) for model in totals.by_model] or [5])
    table.columns.insert(0, Column("model", no_wrap=True, min_width=width))
    for model in totals.by_model:
        table.add_row(
            model.model,
            f"{model.calls_before} -> {model.calls_after}",
            f"${model.cost_before_usd:.6f}",
            f"${model.cost_after_usd:.6f}",
            f"{model.latency_before_ms:.0f} ms",
            f"{model.latency_after_ms:.0f} ms",
        )
    out.print(table)
    out.print(
        f"  cost ${totals.cost_before_usd:.6f} -> ${totals.cost_after_usd:.6f} "
        f"(delta ${totals.cost_delta_usd:+.6f}); latency delta {totals.latency_delta_ms:+.0f} ms"
    )
