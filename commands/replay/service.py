"""A replay from start to finish: select, run, judge, and record it as a run of its own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from commands import scope
from commands.payloads import as_text
from commands.replay.judging import (
    ModelSums,
    add_replayed,
    example_for,
    failed_result,
    judge,
    label_index,
    model_totals,
    score,
)
from commands.replay.memory import frozen_while_running
from commands.replay.planning import ProgramBuilder, ReplayOptions, live_lm, metric_callable
from commands.replay.programs import ProgramLoadError
from commands.replay.recorded_lm import RecordedAnswersLM, recorded_calls
from commands.replay.report import PredictionResult, ReplayReport, ReplayTotals, summarize
from commands.replay.runner import Job, Outcome, as_json, is_async_program, run_jobs
from commands.replay.selection import (
    RecordedPrediction,
    load_prediction,
    predictions_made,
    select_predictions,
)
from ledger.application import LedgerApplication
from ledger.collector import collector_paused
from ledger.domain import Replay
from ledger.privacy import ERASED

Progress = Callable[[int, int], None]
#: Converts a value to JSON as the ledger stores it: ``convert(value, path)``.
Convert = Callable[[Any, str], Any]


def _chosen(
    app: LedgerApplication, options: ReplayOptions
) -> tuple[list[RecordedPrediction], list[PredictionResult]]:
    """The predictions to replay, and a failed result for each id that names none."""
    if not options.selection.prediction_ids:
        return select_predictions(app, options.selection), []
    found, missing = [], []
    for given in options.selection.prediction_ids:
        try:
            prediction = load_prediction(app, UUID(str(given).strip()))
        except ValueError:
            missing.append(failed_result(given, f"{given!r} is not a prediction id (a UUID)."))
            continue
        if prediction is None:
            missing.append(failed_result(given, f"No prediction with id {given} exists."))
        elif prediction.status == "started":
            message = f"Prediction {given} never finished; there is nothing to compare with."
            missing.append(failed_result(given, message, "started"))
        else:
            found.append(prediction)
    return found, missing


def _erased(prediction: RecordedPrediction) -> bool:
    """True if the prediction's inputs were erased with its data subject (they are
    recorded as a dict, and read as ERASED once the subject is forgotten)."""
    recorded_inputs: Any = prediction.inputs
    return bool(recorded_inputs == ERASED or not isinstance(recorded_inputs, dict))


def _jobs(
    predictions: list[RecordedPrediction],
    builder: ProgramBuilder,
    recorded_mode: bool,
    convert: Convert,
) -> tuple[list[Job], dict[int, str]]:
    jobs, load_errors = [], {}
    for index, prediction in enumerate(predictions):
        if _erased(prediction):
            load_errors[index] = (
                f"Prediction {prediction.prediction_id}'s inputs were erased (its data "
                "subject was forgotten); there is nothing to replay."
            )
            continue
        try:
            program = builder.program_for(prediction)
        except ProgramLoadError as error:
            load_errors[index] = str(error)
            continue
        record = (
            recorded_calls(prediction.model_calls, prediction.call_tree) if recorded_mode else None
        )
        jobs.append(
            Job(
                index=index,
                program=program,
                inputs=prediction.inputs,
                record=record,
                subject=prediction.subject,
                convert=convert,
            )
        )
    return jobs, load_errors


def _run(
    jobs: list[Job], options: ReplayOptions, lm: Any, context: str, tick: Callable[[], None]
) -> list[Outcome]:
    import dspy

    asynchronous = options.asynchronous
    if asynchronous is None:
        asynchronous = bool(jobs) and is_async_program(jobs[0].program)
    overrides: dict[str, Any] = {} if lm is None else {"lm": lm}
    with dspy.context(**overrides), scope.in_context(context):
        return run_jobs(
            jobs, threads=options.threads, asynchronous=asynchronous, done=lambda _: tick()
        )


def _score(
    result: PredictionResult,
    recorded: RecordedPrediction,
    outcome: Outcome,
    metric: Any,
    labels: dict[str, dict[str, Any]],
) -> None:
    import dspy

    example = example_for(recorded.inputs, labels)
    try:
        if recorded.status == "completed":
            result.metric_before = score(metric, example, dspy.Prediction(**recorded.outputs or {}))
        if outcome.prediction is not None:
            result.metric_after = score(metric, example, outcome.prediction)
    except Exception as error:
        result.metric_error = f"The metric raised {type(error).__name__}: {error}"


def run_replay(
    app: LedgerApplication,
    options: ReplayOptions,
    *,
    actor: str,
    flush: Callable[[], None],
    progress: Progress | None = None,
    recording_errors: Callable[[], int] = lambda: 0,
    convert: Convert = as_json,
) -> ReplayReport:
    """Replay the chosen predictions and record the replay; return its report.

    ``flush`` must return once the recorder has committed what it recorded: the
    replay's report and verdicts name its own predictions, so they must exist first.
    Their cost and latency are taken from what the recorder gathered (what their events
    say); if ``recording_errors`` (the count of recording failures) grew meanwhile,
    they are read back from the store instead, so a report never names a prediction
    that was not recorded.

    ``convert(value, path)`` turns a value into JSON as the ledger stores it (its
    redactors and string limit): the replayed outputs are compared with the recorded
    ones in that form, and what the verdicts store passes through it. Each prediction
    is replayed, and its verdict recorded, under the data subject it concerned.
    """
    options.check()
    metric, metric_name = metric_callable(options.metric)
    builder = ProgramBuilder(app, options)
    lm = RecordedAnswersLM() if options.mode == "recorded" else live_lm(options.lm)
    replay_id = uuid.uuid4()
    started = time.perf_counter()
    with collector_paused():  # reading the record makes no cycles; see .memory
        predictions, unknown = _chosen(app, options)
        replay = Replay.start(
            replay_id=replay_id,
            mode=options.mode,
            program=options.program or "(recorded module path)",
            lm=options.lm_name(),
            program_version=options.program_version,
            metric=metric_name,
            selection=options.selection.describe(),
            prediction_ids=[p.prediction_id for p in predictions],
            actor=actor,
        )
        app.save_aggregates(replay)
        first_position = app.last_position() + 1
    total, done = len(predictions) + len(unknown), [len(unknown)]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    if progress is not None:
        progress(done[0], total)
    with collector_paused():
        jobs, load_errors = _jobs(predictions, builder, options.mode == "recorded", convert)
    errors_before = recording_errors()
    for _ in load_errors:
        tick()
    outcomes: dict[int, Outcome] = {}
    if jobs:
        with frozen_while_running():
            ran = _run(jobs, options, lm, f"replay:{replay_id}", tick)
        outcomes = {outcome.index: outcome for outcome in ran}
    with collector_paused():
        # Judged while the writer commits the replay's predictions; only what those
        # records say is added once they are committed.
        results, by_model = _judged(predictions, outcomes, load_errors)
        flush()
        if recording_errors() != errors_before:
            _read_back(app, outcomes, first_position)
        for index, outcome in outcomes.items():
            if outcome.made is not None:
                add_replayed(results[index], outcome.made, by_model)
    if metric is not None:
        _score_all(app, metric, predictions, outcomes, results)
    # A verdict on an erased prediction holds nothing of its subject's: it is not sealed
    # (sealing would give the forgotten subject a key again).
    subjects = [None if _erased(p) else p.subject for p in predictions] + [None] * len(unknown)
    results.extend(unknown)
    totals = summarize(results, model_totals(by_model))
    with collector_paused():
        _record_results(
            app,
            replay,
            zip(results, subjects, strict=True),
            totals,
            actor=actor,
            started=started,
            convert=convert,
        )
    return ReplayReport(
        replay_id=str(replay_id),
        mode=options.mode,
        program=options.program or "(recorded module path)",
        lm=options.lm_name(),
        program_version=options.program_version,
        metric=metric_name,
        results=results,
        totals=totals,
    )


def _judged(
    predictions: list[RecordedPrediction],
    outcomes: dict[int, Outcome],
    load_errors: dict[int, str],
) -> tuple[list[PredictionResult], dict[str, ModelSums]]:
    """Each chosen prediction's verdict, and its recorded LM calls by model."""
    by_model: dict[str, ModelSums] = {}
    results = []
    for index, recorded in enumerate(predictions):
        if index in load_errors:
            result = failed_result(recorded.prediction_id, load_errors[index], recorded.status)
        else:
            result = judge(recorded, outcomes[index], by_model)
        results.append(result)
    return results, by_model


def _read_back(app: LedgerApplication, outcomes: dict[int, Outcome], first_position: int) -> None:
    """Take each run's prediction from what the store holds (None where it holds none)."""
    call_ids = {outcome.call_id for outcome in outcomes.values() if outcome.call_id}
    replayed = predictions_made(app, call_ids, start=first_position)
    for outcome in outcomes.values():
        outcome.made = replayed.get(outcome.call_id or "")


def _score_all(
    app: LedgerApplication,
    metric: Any,
    predictions: list[RecordedPrediction],
    outcomes: dict[int, Outcome],
    results: list[PredictionResult],
) -> None:
    """The metric before and after, for each prediction that ran."""
    labels = label_index(app)
    for index, recorded in enumerate(predictions):
        if index in outcomes:
            _score(results[index], recorded, outcomes[index], metric, labels)


def _record_results(
    app: LedgerApplication,
    replay: Replay,
    results: Iterable[tuple[PredictionResult, str | None]],
    totals: ReplayTotals,
    *,
    actor: str,
    started: float,
    convert: Convert,
) -> None:
    """Record one ``PredictionReplayed`` per result (under the data subject its
    prediction concerned) and ``ReplayCompleted``, in one write.

    The diff, error and divergence repeat what the program said and was asked, live
    values included, so they are stored as the ledger stores such values: converted,
    redacted, and (for a subject) sealed.
    """
    for result, subject in results:
        diff = [d.model_dump(mode="json") for d in result.diff]
        replay.record_result(
            original_prediction_id=result.original_prediction_id,
            replay_prediction_id=result.replay_prediction_id,
            verdict=result.verdict,
            diff=convert(diff, "$.diff") if diff else diff,
            error=None if result.error is None else as_text(convert(result.error, "$.error")),
            divergence=(
                None if result.divergence is None else convert(result.divergence, "$.divergence")
            ),
            actor=actor,
            subject=subject,
        )
    replay.complete(
        totals=totals.model_dump(mode="json"),
        latency_ms=(time.perf_counter() - started) * 1000,
        actor=actor,
    )
    app.save_aggregates(replay)
