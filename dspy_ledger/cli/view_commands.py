"""View commands: prices, feedback, report, lineage, projections."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import partial
from typing import Annotated, TypedDict, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dspy_ledger import views
from dspy_ledger.cli.lineage_tree import print_lineage, print_uses
from dspy_ledger.cli.options import DbOption, JsonOption
from dspy_ledger.cli.output import folding_table, stdout_console
from dspy_ledger.ledger import Ledger
from ledger.application import error_reason
from ledger.errors import InvalidInputError
from projections.runner import VIEW_NAMES

SinceOption = Annotated[str | None, typer.Option("--since", help="From this ISO time (inclusive).")]
UntilOption = Annotated[
    str | None, typer.Option("--until", help="Up to this ISO time (exclusive).")
]
AsOfOption = Annotated[
    str | None, typer.Option("--as-of", help="Answer as of a past position or ISO time.")
]
ByOption = Annotated[
    list[str] | None, typer.Option("--by", help="Group by this dimension (repeatable).")
]

AnswerT = TypeVar("AnswerT")


class _Window(TypedDict):
    since: str | None
    until: str | None
    as_of: str | None


prices_app = typer.Typer(help="Model prices used to reprice recorded calls.", no_args_is_help=True)
report_app = typer.Typer(help="Reports from the views.", no_args_is_help=True)
projections_app = typer.Typer(
    help="Status, catch-up and rebuild of the views.", no_args_is_help=True
)


def _echo_json(value: BaseModel | list[BaseModel]) -> None:
    if isinstance(value, list):
        typer.echo(json.dumps([v.model_dump() for v in value], indent=2))
    else:
        typer.echo(value.model_dump_json(indent=2))


def _answer(
    db: str | None,
    ask: Callable[[Ledger], AnswerT],
    as_json: bool,
    render: Callable[[AnswerT], None],
) -> None:
    """Open the ledger for reading, ask it, close it; print JSON or the readable form."""
    with Ledger(db, create=False) as ledger:
        answer = ask(ledger)
    if as_json:
        _echo_json(answer)  # type: ignore[arg-type]
    else:
        render(answer)


@prices_app.command("set")
def prices_set(
    model: Annotated[str, typer.Argument(help="The model as recorded, e.g. openai/gpt-4o-mini.")],
    *,
    input_price: Annotated[float, typer.Option("--input", help="USD per 1M input tokens.")],
    output_price: Annotated[float, typer.Option("--output", help="USD per 1M output tokens.")],
    effective_from: Annotated[
        str | None, typer.Option("--effective-from", help="ISO time (default: now).")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Record a model's price (a PriceSet event)."""
    with Ledger(db) as ledger:
        price = views.set_price(
            ledger,
            model,
            input_usd_per_1m=input_price,
            output_usd_per_1m=output_price,
            effective_from=effective_from,
        )
    if as_json:
        _echo_json(price)
    else:
        typer.echo(
            f"{price.model}: ${price.input_usd_per_1m}/1M in, "
            f"${price.output_usd_per_1m}/1M out, from {price.effective_from}"
        )


@prices_app.command("list")
def prices_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List every recorded price."""
    _answer(db, views.list_prices, as_json, _print_prices)


def _print_prices(prices: list[views.Price]) -> None:
    table = folding_table("model", "input $/1M", "output $/1M", "effective from", "set by")
    for p in prices:
        table.add_row(
            p.model,
            f"{p.input_usd_per_1m:g}",
            f"{p.output_usd_per_1m:g}",
            p.effective_from,
            p.actor,
        )
    stdout_console().print(table)


def feedback(
    prediction_id: Annotated[str, typer.Argument(help="The prediction's stream id.")],
    score: Annotated[float | None, typer.Option("--score", help="A score, e.g. 1.0.")] = None,
    label: Annotated[str | None, typer.Option("--label", help="A label, e.g. correct.")] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who judged (default: you).")] = None,
    db: DbOption = None,
) -> None:
    """Record feedback on a past prediction (a FeedbackRecorded event)."""
    with Ledger(db, create=False) as ledger:
        ledger.record_feedback(prediction_id, score=score, label=label, by=by)
    typer.echo(f"Feedback recorded on {prediction_id}.")


@report_app.command("cost")
def report_cost(
    *,
    by: ByOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    as_of: AsOfOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Spend and tokens (as billed and repriced) by model, provider, program, version,
    actor, context or day."""
    window: _Window = {"since": since, "until": until, "as_of": as_of}
    _answer(db, partial(views.cost_report, by=by, **window), as_json, _print_cost)


def _print_cost(report: views.CostReport) -> None:
    table = folding_table(
        *report.by,
        "calls",
        "cache hits",
        "tokens in",
        "tokens out",
        "billed $",
        "saved $",
        "repriced $",
    )
    for row in [*report.rows, report.total]:
        label = [str(v) for v in row.group.values()] if row.group else ["TOTAL"] * len(report.by)
        repriced = "n/a" if row.repriced_usd is None else f"{row.repriced_usd:.6f}"
        if row.unpriced_calls and row.repriced_usd is not None:
            repriced += f" ({row.unpriced_calls} unpriced)"
        table.add_row(
            *label,
            str(row.calls),
            str(row.cache_hits),
            str(row.prompt_tokens),
            str(row.completion_tokens),
            f"{row.cost_usd:.6f}",
            f"{row.saved_usd:.6f}",
            repriced,
        )
    console = stdout_console()
    console.print(f"Cost as of position {report.position}")
    console.print(table)


@report_app.command("accuracy")
def report_accuracy(
    *,
    by: ByOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    as_of: AsOfOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluation scores, online feedback and optimization before/after."""
    window: _Window = {"since": since, "until": until, "as_of": as_of}
    _answer(db, partial(views.accuracy_report, by=by, **window), as_json, _print_accuracy)


def _print_accuracy(report: views.AccuracyReport) -> None:
    console = stdout_console()
    table = folding_table("time", "version", "devset", "metric", "score")
    for e in report.evaluations:
        table.add_row(
            e.occurred_at,
            (e.program_version_id or "-")[:8],
            (e.devset_digest or "-")[:8],
            e.metric or "-",
            f"{e.score:g}",
        )
    console.print(f"Accuracy as of position {report.position}")
    console.print(table)
    table = folding_table("run", "optimizer", "status", "before", "after")
    for o in report.optimizations:
        table.add_row(
            o.run_id[:8], o.optimizer, o.status, _score(o.score_before), _score(o.score_after)
        )
    console.print(table)
    table = folding_table(
        *(report.feedback[0].group if report.feedback else ["group"]),
        "feedback",
        "scored",
        "mean score",
    )
    for f in report.feedback:
        table.add_row(
            *[str(v) for v in f.group.values()],
            str(f.feedback),
            str(f.scored),
            _score(f.mean_score),
        )
    console.print(table)


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


@report_app.command("audit")
def report_audit(
    *,
    actor: Annotated[str, typer.Option("--actor", help="Whose actions to list.")],
    since: SinceOption = None,
    until: UntilOption = None,
    as_of: AsOfOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Everything one actor did, in order."""
    window: _Window = {"since": since, "until": until, "as_of": as_of}
    _answer(db, partial(views.audit_report, actor=actor, **window), as_json, _print_audit)


def _print_audit(report: views.AuditReport) -> None:
    table = folding_table("position", "time", "event", "stream", "version")
    for e in report.entries:
        table.add_row(
            str(e.position), e.occurred_at, e.event_type, e.stream_id, str(e.stream_version)
        )
    console = stdout_console()
    console.print(
        f"{len(report.entries)} events by {report.actor} (as of position {report.position})"
    )
    console.print(table)


def lineage(
    prediction_id: Annotated[str | None, typer.Argument(help="The prediction's stream id.")] = None,
    example: Annotated[
        str | None, typer.Option("--example", help="An example digest instead.")
    ] = None,
    as_of: AsOfOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Where a prediction's program came from, or who used an example."""
    if example is not None:
        _answer(db, lambda ledger: views.example_lineage(ledger, example), as_json, print_uses)
    elif prediction_id is not None:
        _answer(
            db,
            lambda ledger: views.prediction_lineage(ledger, prediction_id, as_of=as_of),
            as_json,
            print_lineage,
        )
    else:
        raise InvalidInputError("Give a PREDICTION_ID or --example DIGEST.")


@projections_app.command("status")
def projections_status(
    view: Annotated[str | None, typer.Argument(help="One view (default: all).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """How far along each view is."""
    _answer(db, lambda ledger: views.views_status(ledger, view), as_json, _print_status)


def _print_status(status: list[views.ViewStatus]) -> None:
    table = folding_table("view", "position", "ledger", "behind", "skipped")
    for s in status:
        table.add_row(
            s.view,
            str(s.position),
            str(s.ledger_position),
            str(s.behind),
            str(sum(s.skipped_events.values())),
        )
    stdout_console().print(table)


def _update(db: str | None, view: str | None, *, from_zero: bool) -> None:
    with Ledger(db, create=False) as ledger:
        names = [view] if view else list(VIEW_NAMES)
        total = ledger.app.last_position()
        with Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as bar:
            tasks = {n: bar.add_task(n, total=total if from_zero else None) for n in names}
            done = views.update_views(
                ledger,
                view,
                from_zero=from_zero,
                progress=lambda name, count: bar.advance(tasks[name], count),
            )
    typer.echo(", ".join(f"{name}: {count} events" for name, count in done.items()))


@projections_app.command("rebuild")
def projections_rebuild(
    view: Annotated[str | None, typer.Argument(help="One view (default: all).")] = None,
    db: DbOption = None,
) -> None:
    """Rebuild views from zero, committing per batch."""
    _update(db, view, from_zero=True)


@projections_app.command("run")
def projections_run(
    view: Annotated[str | None, typer.Argument(help="One view (default: all).")] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--once", help="Keep following new events.")
    ] = True,
    db: DbOption = None,
) -> None:
    """Catch views up, then follow the ledger live (Ctrl-C to stop)."""
    if not follow:
        _update(db, view, from_zero=False)
        return
    from projections.runner import follow as follow_views
    from projections.runner import open_view

    with Ledger(db, create=False) as ledger:
        names = [view] if view else list(VIEW_NAMES)
        views.update_views(ledger, view)
        stopping = threading.Event()
        store = ledger.app.store
        try:
            follow_views(
                [open_view(ledger.app, n) for n in names],
                stopping,
                on_batch=lambda name, count: typer.echo(f"{name}: +{count} events", err=True),
                on_lost=lambda error: typer.echo(
                    f"dspy-ledger: lost the ledger's database ({error_reason(store, error)}); "
                    "following again once it answers.",
                    err=True,
                ),
                on_resumed=lambda: typer.echo(
                    "dspy-ledger: the ledger's database answers again; following.", err=True
                ),
            )
        except KeyboardInterrupt:
            stopping.set()


def register(app: typer.Typer) -> None:
    """Add the view commands to the ``dspy-ledger`` app."""
    app.add_typer(prices_app, name="prices")
    app.add_typer(report_app, name="report")
    app.add_typer(projections_app, name="projections")
    app.command()(feedback)
    app.command()(lineage)
