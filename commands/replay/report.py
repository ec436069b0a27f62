"""The replay report: a verdict per prediction, and totals (pydantic, so ``--json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Verdict = Literal["identical", "different", "failed"]


class FieldDiff(BaseModel):
    """One output field whose value changed (``None``: the field was absent)."""

    field: str
    recorded: Any = None
    replayed: Any = None


class PredictionResult(BaseModel):
    """What replaying one recorded prediction gave."""

    original_prediction_id: str
    replay_prediction_id: str | None = None
    program_version_id: str | None = None
    verdict: Verdict
    diff: list[FieldDiff] = Field(default_factory=list)
    error: str | None = None
    divergence: dict[str, Any] | None = None
    recorded_status: str
    replayed_outputs: dict[str, Any] | None = None
    metric_before: float | None = None
    metric_after: float | None = None
    metric_error: str | None = None
    cost_before_usd: float = 0.0
    cost_after_usd: float = 0.0
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    models_before: list[str] = Field(default_factory=list)
    models_after: list[str] = Field(default_factory=list)


class ModelTotals(BaseModel):
    """Cost and latency of the LM calls of one model, recorded and replayed."""

    model: str
    calls_before: int = 0
    calls_after: int = 0
    cost_before_usd: float = 0.0
    cost_after_usd: float = 0.0
    latency_before_ms: float = 0.0
    latency_after_ms: float = 0.0


class ReplayTotals(BaseModel):
    """The report's summary (also recorded in ``ReplayCompleted``)."""

    predictions: int = 0
    identical: int = 0
    different: int = 0
    failed: int = 0
    exact_match_rate: float = 0.0
    metric_before: float | None = None
    metric_after: float | None = None
    metric_errors: int = 0
    cost_before_usd: float = 0.0
    cost_after_usd: float = 0.0
    cost_delta_usd: float = 0.0
    latency_before_ms: float = 0.0
    latency_after_ms: float = 0.0
    latency_delta_ms: float = 0.0
    by_model: list[ModelTotals] = Field(default_factory=list)


class ReplayReport(BaseModel):
    """A whole replay: how it ran, each prediction's result, and the totals."""

    replay_id: str
    mode: Literal["recorded", "live"]
    program: str
    lm: str | None
    program_version: str
    metric: str | None
    results: list[PredictionResult]
    totals: ReplayTotals

    @property
    def all_identical(self) -> bool:
        """True if every prediction replayed identically (the exit code says so)."""
        return self.totals.identical == self.totals.predictions


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(results: list[PredictionResult], by_model: dict[str, ModelTotals]) -> ReplayTotals:
    """Add the results up into the report's totals."""
    count = len(results)
    identical = sum(1 for r in results if r.verdict == "identical")
    before = [r.metric_before for r in results if r.metric_before is not None]
    after = [r.metric_after for r in results if r.metric_after is not None]
    cost_before = sum(r.cost_before_usd for r in results)
    cost_after = sum(r.cost_after_usd for r in results)
    latency_before = sum(r.latency_before_ms or 0.0 for r in results)
    latency_after = sum(r.latency_after_ms or 0.0 for r in results)
    return ReplayTotals(
        predictions=count,
        identical=identical,
        different=sum(1 for r in results if r.verdict == "different"),
        failed=sum(1 for r in results if r.verdict == "failed"),
        exact_match_rate=identical / count if count else 0.0,
        metric_before=_mean(before),
        metric_after=_mean(after),
        metric_errors=sum(1 for r in results if r.metric_error),
        cost_before_usd=cost_before,
        cost_after_usd=cost_after,
        cost_delta_usd=cost_after - cost_before,
        latency_before_ms=latency_before,
        latency_after_ms=latency_after,
        latency_delta_ms=latency_after - latency_before,
        by_model=sorted(by_model.values(), key=lambda m: m.model),
    )
