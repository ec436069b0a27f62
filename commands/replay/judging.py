"""Verdicts: comparing each replayed outcome with the record, and scoring both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from commands.handlers import error_message
from commands.replay.diffing import failure_diff, output_diff
from commands.replay.report import ModelTotals, PredictionResult, Verdict
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


def judge(
    recorded: RecordedPrediction, outcome: Outcome, by_model: dict[str, ModelSums]
) -> PredictionResult:
    """The verdict on one replayed prediction, with its recorded cost and latency.

    Needs nothing the writer has yet to commit, so it runs while the writer catches up;
    :func:`add_replayed` adds what the replay's own record says afterwards. The recorded
    LM calls are added to ``by_model``. The result is built in one go: a pydantic model
    costs more to change field by field than to build.
    """
    divergence = outcome.divergences[0] if outcome.divergences else None
    error = None
    if outcome.error is None and recorded.status == "completed":
        diff = output_diff(recorded.outputs or {}, outcome.outputs or {})
    else:
        before = (recorded.error_type, recorded.error_message)
        after = recorded_failure(outcome.error) if outcome.error else (None, None)
        diff = failure_diff(before, after)
        if outcome.error is not None:
            error = f"{after[0]}: {after[1]}"
    verdict: Verdict = "identical"
    if divergence is not None:
        verdict = "different"
        if outcome.error is not None:
            # The divergence is the difference; the error it raised only repeats it.
            diff, error = [], None
    elif outcome.error is not None and diff:
        verdict = "failed"
    elif diff:
        verdict = "different"
    add_calls(by_model, recorded.model_calls, after=False)
    return PredictionResult(
        original_prediction_id=recorded.prediction_id,
        program_version_id=recorded.program_version_id,
        verdict=verdict,
        diff=diff,
        error=error,
        divergence=divergence,
        recorded_status=recorded.status,
        replayed_outputs=outcome.outputs,
        cost_before_usd=recorded.cost_usd,
        latency_before_ms=recorded.latency_ms,
        models_before=sorted({str(call.get("model")) for call in recorded.model_calls}),
    )


def add_replayed(
    result: PredictionResult, replayed: MadePrediction, by_model: dict[str, ModelSums]
) -> None:
    """Add the replay's own recorded prediction (its id, cost, latency, models) to a result."""
    add_calls(by_model, replayed.model_calls, after=True)
    result.replay_prediction_id = str(replayed.prediction_id)
    result.latency_after_ms = replayed.latency_ms
    result.cost_after_usd = replayed.cost_usd
    result.models_after = sorted({str(call.get("model")) for call in replayed.model_calls})


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


@dataclass
class ModelSums:
    """One model's LM calls, cost and latency, recorded (before) and replayed (after)."""

    calls: list[int] = field(default_factory=lambda: [0, 0])
    cost_usd: list[float] = field(default_factory=lambda: [0.0, 0.0])
    latency_ms: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def totals(self, model: str) -> ModelTotals:
        """The report's form of the sums."""
        return ModelTotals(
            model=model,
            calls_before=self.calls[0],
            calls_after=self.calls[1],
            cost_before_usd=self.cost_usd[0],
            cost_after_usd=self.cost_usd[1],
            latency_before_ms=self.latency_ms[0],
            latency_after_ms=self.latency_ms[1],
        )


def add_calls(
    by_model: dict[str, ModelSums], model_calls: list[dict[str, Any]], *, after: bool
) -> None:
    """Add recorded (``after=False``) or replayed LM calls to the per-model sums."""
    side = 1 if after else 0
    for call in model_calls:
        model = str(call["model"])
        sums = by_model.get(model)
        if sums is None:
            sums = by_model[model] = ModelSums()
        sums.calls[side] += 1
        sums.cost_usd[side] += float(call.get("cost_usd") or 0.0)
        sums.latency_ms[side] += float(call.get("latency_ms") or 0.0)


def model_totals(by_model: dict[str, ModelSums]) -> dict[str, ModelTotals]:
    """The per-model sums as the report's totals."""
    return {model: sums.totals(model) for model, sums in by_model.items()}


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
