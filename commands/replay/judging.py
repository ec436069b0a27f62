"""Verdicts: comparing each replayed outcome with the record, and scoring both."""

from __future__ import annotations

from typing import Any

from commands.handlers import error_message
from commands.replay.diffing import failure_diff, output_diff
from commands.replay.report import ModelTotals, PredictionResult
from commands.replay.runner import Outcome
from commands.replay.selection import MadePrediction, RecordedPrediction
from ledger.application import LedgerApplication
from ledger.hashing import digest
from ledger.reading import plain


def recorded_failure(error: BaseException) -> tuple[str, str]:
    """(type, message) of a failure, seeing through DSPy's wrapping of recorded errors."""
    seen: BaseException | None = error
    while seen is not None:
        if type(seen).__module__ == "recorded":
            return type(seen).__name__, error_message(seen)
        seen = seen.__cause__ or seen.__context__
    return type(error).__qualname__, error_message(error)


def judge(recorded: RecordedPrediction, outcome: Outcome) -> PredictionResult:
    """The verdict on one replayed prediction (without costs: see :func:`add_costs`)."""
    result = PredictionResult(
        original_prediction_id=str(recorded.prediction_id),
        program_version_id=str(recorded.program_version_id or "") or None,
        verdict="identical",
        recorded_status=recorded.status,
        replayed_outputs=outcome.outputs,
        cost_before_usd=recorded.cost_usd,
        latency_before_ms=recorded.latency_ms,
        models_before=sorted({str(call.get("model")) for call in recorded.model_calls}),
    )
    if outcome.divergences:
        result.divergence = outcome.divergences[0]
    if outcome.error is None and recorded.status == "completed":
        result.diff = output_diff(recorded.outputs or {}, outcome.outputs or {})
    else:
        before = (recorded.error_type, recorded.error_message)
        after = recorded_failure(outcome.error) if outcome.error else (None, None)
        result.diff = failure_diff(before, after)
        if outcome.error is not None:
            result.error = f"{after[0]}: {after[1]}"
    if result.divergence is not None:
        result.verdict = "different"
        if outcome.error is not None:
            # The divergence is the difference; the error it raised only repeats it.
            result.diff, result.error = [], None
    elif outcome.error is not None and result.diff:
        result.verdict = "failed"
    elif result.diff:
        result.verdict = "different"
    return result


def failed_result(prediction_id: str, message: str, status: str = "unknown") -> PredictionResult:
    """A prediction that could not be replayed at all, with the reason."""
    return PredictionResult(
        original_prediction_id=prediction_id,
        verdict="failed",
        error=message,
        recorded_status=status,
    )


def score(metric: Any, example: Any, prediction: Any) -> float:
    """The metric's value as a float (booleans count 1 and 0)."""
    value = metric(example, prediction)
    return float(value)


def _model_totals(by_model: dict[str, ModelTotals], call: dict[str, Any]) -> ModelTotals:
    """The totals of the call's model (made on first use: a model is built only once)."""
    model = str(call["model"])
    totals = by_model.get(model)
    if totals is None:
        totals = by_model[model] = ModelTotals(model=model)
    return totals


def add_costs(
    result: PredictionResult,
    recorded: RecordedPrediction,
    replayed: MadePrediction | None,
    by_model: dict[str, ModelTotals],
) -> None:
    """Fill in the replay's prediction id, cost and latency, and the per-model totals."""
    for call in recorded.model_calls:
        totals = _model_totals(by_model, call)
        totals.calls_before += 1
        totals.cost_before_usd += float(call.get("cost_usd") or 0.0)
        totals.latency_before_ms += float(call.get("latency_ms") or 0.0)
    if replayed is None:
        return
    result.replay_prediction_id = str(replayed.prediction_id)
    result.latency_after_ms = replayed.latency_ms
    result.cost_after_usd = replayed.cost_usd
    result.models_after = sorted({str(c.get("model")) for c in replayed.model_calls})
    for call in replayed.model_calls:
        totals = _model_totals(by_model, call)
        totals.calls_after += 1
        totals.cost_after_usd += float(call.get("cost_usd") or 0.0)
        totals.latency_after_ms += float(call.get("latency_ms") or 0.0)


def label_index(app: LedgerApplication) -> dict[str, dict[str, Any]]:
    """Gold examples from every recorded dataset, by the digest of their inputs.

    Production predictions carry no labels; a metric is scored against the recorded
    dataset example with the same inputs when there is one.
    """
    index: dict[str, dict[str, Any]] = {}
    for notification in app.notifications():
        if not notification.topic.endswith("Dataset.DatasetRegistered"):
            continue
        for example in plain(app.decode(notification).examples):
            fields = example.get("fields") or {}
            keys = example.get("input_keys") or list(fields)
            inputs = {key: fields.get(key) for key in keys}
            index.setdefault(inputs_key(inputs), example)
    return index


def inputs_key(inputs: dict[str, Any]) -> str:
    """The digest a prediction's inputs are matched to a labelled example by."""
    return digest({key: value for key, value in inputs.items() if key != "$args"})


def example_for(inputs: dict[str, Any], labels: dict[str, dict[str, Any]]) -> Any:
    """A ``dspy.Example`` of the inputs, with the labels of a recorded example if any."""
    import dspy

    found = labels.get(inputs_key(inputs))
    fields = dict(found["fields"]) if found else dict(inputs)
    keys = found.get("input_keys") if found else None
    return dspy.Example(**fields).with_inputs(*(keys or list(inputs)))
