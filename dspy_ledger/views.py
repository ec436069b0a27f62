"""Views as a Python API: cost, accuracy, lineage and audit reports from a ``Ledger``.

Every function brings the embedded view up to date before answering, or, with
``as_of``, rebuilds a throw-away in-memory view up to that position.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from dspy_ledger.ledger import Ledger, parse_stream_id
from ledger.domain import PriceTable
from ledger.errors import InvalidInputError, StreamNotFoundError
from projections.accuracy import FEEDBACK_DIMENSIONS
from projections.base import utc_text
from projections.cost import COST_DIMENSIONS
from projections.runner import (
    VIEW_NAMES,
    ViewProjection,
    catch_up,
    open_memory_view,
    open_view,
    rebuild,
)


class Price(BaseModel):
    """One recorded price of a model."""

    model: str
    input_usd_per_1m: float
    output_usd_per_1m: float
    effective_from: str
    actor: str


class CostRow(BaseModel):
    """Totals for one group of LM calls."""

    group: dict[str, str | None]
    calls: int
    cache_hits: int
    failed_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    saved_usd: float
    repriced_usd: float | None
    unpriced_calls: int


class CostReport(BaseModel):
    """Spend as billed and repriced, grouped by the chosen dimensions."""

    position: int
    by: list[str]
    rows: list[CostRow]
    total: CostRow


class EvaluationRow(BaseModel):
    """One completed offline evaluation."""

    evaluation_id: str
    program_version_id: str | None
    devset_digest: str | None
    metric: str | None
    score: float
    occurred_at: str


class FeedbackRow(BaseModel):
    """Online feedback for one group (version, model, day)."""

    group: dict[str, str | None]
    feedback: int
    scored: int
    mean_score: float | None


class OptimizationOutcome(BaseModel):
    """One optimization run: the student's latest evaluation beside the result's."""

    run_id: str
    optimizer: str
    status: str
    student_version_id: str | None
    result_version_id: str | None
    score_before: float | None
    score_after: float | None


class AccuracyReport(BaseModel):
    """Evaluations, feedback and optimization before/after."""

    position: int
    evaluations: list[EvaluationRow]
    feedback: list[FeedbackRow]
    optimizations: list[OptimizationOutcome]


class AuditEntry(BaseModel):
    """One thing an actor did."""

    position: int
    occurred_at: str
    stream_id: str
    stream_version: int
    event_type: str
    trace_id: str | None


class AuditReport(BaseModel):
    """Everything one actor did, in order."""

    position: int
    actor: str
    entries: list[AuditEntry]


class RunLineage(BaseModel):
    """An optimization run and, recursively, where its student and teacher came from."""

    run_id: str
    optimizer: str
    params: dict[str, Any]
    status: str
    trainset_digest: str | None
    valset_digest: str | None
    metric: str | None
    student: VersionLineage | None
    teacher: VersionLineage | None


class VersionLineage(BaseModel):
    """A program version, the run that produced it and its parent, recursively."""

    version_id: str
    program_name: str | None
    state_hash: str | None
    registered_at: str
    produced_by: RunLineage | None
    parent: VersionLineage | None


class PredictionLineage(BaseModel):
    """Where one prediction's program came from."""

    prediction_id: str
    status: str
    context: str | None
    actor: str | None
    started_at: str
    version: VersionLineage | None


class ExampleUse(BaseModel):
    """A run that trained or validated on a dataset holding the example."""

    run_id: str
    optimizer: str
    dataset_digest: str
    result_version_id: str | None
    predictions: list[str]


class ExampleLineage(BaseModel):
    """Which runs used an example, what they produced, and what that predicted."""

    example_digest: str
    runs: list[ExampleUse]


class ViewStatus(BaseModel):
    """How far along a view is."""

    view: str
    position: int
    ledger_position: int
    behind: int
    skipped_events: dict[str, int]


# -- helpers ------------------------------------------------------------------------


def parse_time(text: str, option: str = "time") -> str:
    """Parse an ISO date or date-time (UTC if no zone) into the views' time text."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        msg = (
            f"The {option} {text!r} is not an ISO date or time; "
            "use e.g. 2025-06-01 or 2025-06-01T12:00:00Z."
        )
        raise InvalidInputError(msg) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return utc_text(value)


def resolve_as_of(ledger: Ledger, as_of: str | int) -> int:
    """Turn ``--as-of`` (a position, or a time) into a position of the ledger.

    A time means: up to the last event recorded at or before it (events of a type
    the views do not know carry no time they can read and are not counted).
    """
    last = ledger.app.last_position()
    text = str(as_of).strip()
    if text.isdigit():
        position = int(text)
        if position > last:
            msg = f"Position {position} is beyond the end of the ledger (last position {last})."
            raise InvalidInputError(msg)
        return position
    moment = parse_time(text, "--as-of time")
    # The audit view holds every known event's time, indexed: bring it up to date and
    # ask it, instead of decoding the whole ledger.
    audit = open_view(ledger.app, "audit")
    catch_up(audit)
    found = audit.view.rows(
        "SELECT MAX(position) AS position FROM {audit_events} WHERE occurred_at <= ?", (moment,)
    )
    return int(found[0]["position"] or 0) if found else 0


def _projection(ledger: Ledger, name: str, as_of: str | int | None) -> tuple[ViewProjection, int]:
    if as_of is None:
        projection = open_view(ledger.app, name)
        catch_up(projection)
        return projection, projection.view.position()
    stop = resolve_as_of(ledger, as_of)
    projection = open_memory_view(ledger.app, name)
    if stop:
        catch_up(projection, stop=stop)
    return projection, stop


def _window(since: str | None, until: str | None) -> tuple[str | None, str | None]:
    return (
        None if since is None else parse_time(since, "--since"),
        None if until is None else parse_time(until, "--until"),
    )


def _check_by(by: list[str], allowed: dict[str, str]) -> None:
    unknown = [name for name in by if name not in allowed]
    if unknown:
        msg = f"Cannot group by {', '.join(unknown)}; choose from {', '.join(allowed)}."
        raise InvalidInputError(msg)


# -- prices -------------------------------------------------------------------------


def set_price(
    ledger: Ledger,
    model: str,
    *,
    input_usd_per_1m: float,
    output_usd_per_1m: float,
    effective_from: str | None = None,
) -> Price:
    """Record a model's price (``PriceSet``), effective from now unless told otherwise."""
    if not model.strip():
        raise InvalidInputError(
            "The model name is empty; give it as recorded, e.g. openai/gpt-4o-mini."
        )
    when = (
        datetime.now(UTC)
        if effective_from is None
        else datetime.fromisoformat(
            parse_time(effective_from, "--effective-from").replace("Z", "+00:00")
        )
    )
    table = ledger.app.get_aggregate(PriceTable.id_for(model))
    if not isinstance(table, PriceTable):
        table = PriceTable.create(model=model, actor=ledger.actor)
    try:
        table.set_price(
            input_usd_per_1m=input_usd_per_1m,
            output_usd_per_1m=output_usd_per_1m,
            effective_from=when,
            actor=ledger.actor,
        )
    except ValueError as error:
        raise InvalidInputError(str(error)) from None
    except Exception as error:
        raise InvalidInputError(str(error)) from None
    ledger.app.save_aggregates(table)
    return Price(
        model=model,
        input_usd_per_1m=input_usd_per_1m,
        output_usd_per_1m=output_usd_per_1m,
        effective_from=utc_text(when),
        actor=ledger.actor,
    )


def list_prices(ledger: Ledger) -> list[Price]:
    """Every recorded price, by model and effective date."""
    projection, _ = _projection(ledger, "cost", None)
    return [Price.model_validate(row) for row in projection.view.prices()]  # type: ignore[attr-defined]


# -- reports ------------------------------------------------------------------------


def _cost_row(row: dict[str, Any], by: list[str]) -> CostRow:
    repriced = row["repriced_usd"]
    return CostRow(
        group={name: None if row[name] is None else str(row[name]) for name in by},
        calls=int(row["calls"] or 0),
        cache_hits=int(row["cache_hits"] or 0),
        failed_calls=int(row["failed_calls"] or 0),
        prompt_tokens=int(row["prompt_tokens"] or 0),
        completion_tokens=int(row["completion_tokens"] or 0),
        cost_usd=float(row["cost_usd"] or 0.0),
        saved_usd=float(row["saved_usd"] or 0.0),
        repriced_usd=None if repriced is None else float(repriced),
        unpriced_calls=int(row["unpriced_calls"] or 0),
    )


def cost_report(
    ledger: Ledger,
    *,
    by: list[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    as_of: str | int | None = None,
) -> CostReport:
    """Spend and tokens grouped by ``by`` (model, provider, program, version, actor,
    context, day), as billed and repriced; ``since`` inclusive, ``until`` exclusive."""
    by = list(by or [])
    _check_by(by, COST_DIMENSIONS)
    window = _window(since, until)
    projection, position = _projection(ledger, "cost", as_of)
    view: Any = projection.view
    rows = [_cost_row(r, by) for r in view.cost_rows(by, *window)] if by else []
    total = _cost_row(view.cost_rows([], *window)[0], [])
    return CostReport(position=position, by=by, rows=rows, total=total)


def accuracy_report(
    ledger: Ledger,
    *,
    by: list[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    as_of: str | int | None = None,
) -> AccuracyReport:
    """Evaluation scores, feedback grouped by ``by`` (version, model, day), and each
    optimization run's student and result scores."""
    by = list(by or ["version"])
    _check_by(by, FEEDBACK_DIMENSIONS)
    window = _window(since, until)
    projection, position = _projection(ledger, "accuracy", as_of)
    view: Any = projection.view
    evaluations = [EvaluationRow.model_validate(r) for r in view.evaluations(*window)]
    feedback = [
        FeedbackRow(
            group={n: None if r[n] is None else str(r[n]) for n in by},
            feedback=int(r["feedback"]),
            scored=int(r["scored"]),
            mean_score=None if r["mean_score"] is None else float(r["mean_score"]),
        )
        for r in view.feedback(by, *window)
    ]
    outcomes = []
    for run in view.runs():
        before = view.latest_evaluation(run["student_version_id"])
        after = view.latest_evaluation(run["result_version_id"])
        outcomes.append(
            OptimizationOutcome(
                run_id=run["run_id"],
                optimizer=run["optimizer"],
                status=run["status"],
                student_version_id=run["student_version_id"],
                result_version_id=run["result_version_id"],
                score_before=None if before is None else float(before["score"]),
                score_after=None if after is None else float(after["score"]),
            )
        )
    return AccuracyReport(
        position=position, evaluations=evaluations, feedback=feedback, optimizations=outcomes
    )


def audit_report(
    ledger: Ledger,
    actor: str,
    *,
    since: str | None = None,
    until: str | None = None,
    as_of: str | int | None = None,
) -> AuditReport:
    """Everything ``actor`` did, in the order it was recorded."""
    window = _window(since, until)
    projection, position = _projection(ledger, "audit", as_of)
    rows = projection.view.by_actor(actor, *window)  # type: ignore[attr-defined]
    entries = [AuditEntry.model_validate(r) for r in rows]
    return AuditReport(position=position, actor=actor, entries=entries)


# -- lineage ------------------------------------------------------------------------


def _version(view: Any, version_id: str | None, seen: set[str]) -> VersionLineage | None:
    # ``seen`` stops a malformed history (a version its own ancestor) from looping.
    if version_id is None or version_id in seen:
        return None
    seen = seen | {version_id}
    row = view.version(version_id)
    if row is None:
        return None
    run = view.run(row["produced_by"]) if row["produced_by"] else None
    produced_by = None
    if run is not None:
        produced_by = RunLineage(
            run_id=run["run_id"],
            optimizer=run["optimizer"],
            params=run["params"],
            status=run["status"],
            trainset_digest=run["trainset_digest"],
            valset_digest=run["valset_digest"],
            metric=run["metric"],
            student=_version(view, run["student_version_id"], seen),
            teacher=_version(view, run["teacher_version_id"], seen),
        )
    return VersionLineage(
        version_id=version_id,
        program_name=row["program_name"],
        state_hash=row["state_hash"],
        registered_at=row["registered_at"],
        produced_by=produced_by,
        parent=_version(view, row["parent_version_id"], seen),
    )


def prediction_lineage(
    ledger: Ledger, prediction_id: str, *, as_of: str | int | None = None
) -> PredictionLineage:
    """Prediction -> program version -> optimization run -> data, teacher, parent."""
    stream_id = str(parse_stream_id(prediction_id))
    projection, _ = _projection(ledger, "lineage", as_of)
    view: Any = projection.view
    row = view.prediction(stream_id)
    if row is None:
        raise StreamNotFoundError(stream_id)
    return PredictionLineage(
        prediction_id=stream_id,
        status=row["status"],
        context=row["context"],
        actor=row["actor"],
        started_at=row["started_at"],
        version=_version(view, row["program_version_id"], set()),
    )


def example_lineage(ledger: Ledger, example_digest: str) -> ExampleLineage:
    """Runs whose datasets held the example, the versions they made and their predictions."""
    digest = example_digest.strip().lower()
    projection, _ = _projection(ledger, "lineage", None)
    view: Any = projection.view
    if not view.example_known(digest):
        msg = f"No recorded dataset contains an example with digest {example_digest!r}."
        raise InvalidInputError(msg)
    uses = [
        ExampleUse(
            run_id=r["run_id"],
            optimizer=r["optimizer"],
            dataset_digest=r["dataset_digest"],
            result_version_id=r["result_version_id"],
            predictions=view.predictions_of(r["result_version_id"])
            if r["result_version_id"]
            else [],
        )
        for r in view.runs_using_example(digest)
    ]
    return ExampleLineage(example_digest=digest, runs=uses)


# -- running ------------------------------------------------------------------------


def _names(view: str | None) -> list[str]:
    if view is None:
        return list(VIEW_NAMES)
    if view not in VIEW_NAMES:
        msg = f"There is no view named {view!r}; the views are {', '.join(VIEW_NAMES)}."
        raise InvalidInputError(msg)
    return [view]


def views_status(ledger: Ledger, view: str | None = None) -> list[ViewStatus]:
    """Each view's position against the ledger's last position."""
    last = ledger.app.last_position()
    out = []
    for name in _names(view):
        projection = open_view(ledger.app, name)
        position = projection.view.position()
        out.append(
            ViewStatus(
                view=name,
                position=position,
                ledger_position=last,
                behind=max(last - position, 0),
                skipped_events=projection.view.skipped(),
            )
        )
    return out


def update_views(
    ledger: Ledger,
    view: str | None = None,
    *,
    from_zero: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Catch views up (or rebuild them from zero); returns events processed per view."""
    done = {}
    for name in _names(view):
        projection = open_view(ledger.app, name)

        def advance(count: int, name: str = name) -> None:
            if progress is not None:
                progress(name, count)

        run = rebuild if from_zero else catch_up
        done[name] = run(projection, progress=advance)
    return done


RunLineage.model_rebuild()
VersionLineage.model_rebuild()
