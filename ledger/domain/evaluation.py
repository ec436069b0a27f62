"""Evaluation: one run of ``dspy.Evaluate`` over a devset."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.domain.base import DomainRuleError, LedgerAggregate, provenance


class Evaluation(LedgerAggregate):
    """An offline evaluation of one program version on one devset with one metric."""

    class EvaluationStarted(LedgerAggregate.Created):
        """``dspy.Evaluate`` was called."""

        program_version_id: UUID | None
        devset_digest: str | None
        metric: str | None
        context: str

    class EvaluationCompleted(LedgerAggregate.Event):
        """The evaluation finished with a score (DSPy's percentage) and per-example results."""

        program_version_id: UUID | None
        devset_digest: str | None
        metric: str | None
        score: float
        results: list[dict[str, Any]]
        latency_ms: float

        def apply(self, aggregate: Evaluation) -> None:
            """Mark the evaluation completed."""
            aggregate.status = "completed"
            aggregate.score = self.score

    class EvaluationFailed(LedgerAggregate.Event):
        """The evaluation raised."""

        error_type: str
        message: str
        latency_ms: float

        def apply(self, aggregate: Evaluation) -> None:
            """Mark the evaluation failed."""
            aggregate.status = "failed"

    def __init__(
        self, program_version_id: UUID | None, devset_digest: str | None, metric: str | None
    ) -> None:
        self.program_version_id = program_version_id
        self.devset_digest = devset_digest
        self.metric = metric
        self.status = "started"
        self.score: float | None = None

    @classmethod
    def start(
        cls,
        *,
        evaluation_id: UUID,
        program_version_id: UUID | None,
        devset_digest: str | None,
        metric: str | None,
        context: str,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Evaluation:
        """Start an evaluation stream (``EvaluationStarted``)."""
        extra: dict[str, Any] = {} if occurred_at is None else {"timestamp": occurred_at}
        return cls._create(
            cls.EvaluationStarted,
            id=evaluation_id,
            program_version_id=program_version_id,
            devset_digest=devset_digest,
            metric=metric,
            context=context,
            **provenance(actor, trace_id, span_id),
            **extra,
        )

    def complete(
        self,
        *,
        score: float,
        results: list[dict[str, Any]],
        latency_ms: float,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> None:
        """Record the score and per-example results (``EvaluationCompleted``)."""
        self._check_running()
        self.record(
            self.EvaluationCompleted,
            occurred_at,
            program_version_id=self.program_version_id,
            devset_digest=self.devset_digest,
            metric=self.metric,
            score=score,
            results=results,
            latency_ms=latency_ms,
            **provenance(actor, trace_id, span_id),
        )

    def fail(
        self,
        *,
        error_type: str,
        message: str,
        latency_ms: float,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> None:
        """Record that the evaluation raised (``EvaluationFailed``)."""
        self._check_running()
        self.record(
            self.EvaluationFailed,
            occurred_at,
            error_type=error_type,
            message=message,
            latency_ms=latency_ms,
            **provenance(actor, trace_id, span_id),
        )

    def _check_running(self) -> None:
        if self.status != "started":
            msg = f"Evaluation {self.id} has already {self.status}."
            raise DomainRuleError(msg)
