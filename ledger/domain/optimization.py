"""OptimizationRun: one ``compile`` of a DSPy program by an optimizer (teleprompter)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.domain.base import DomainRuleError, LedgerAggregate, provenance


class OptimizationRun(LedgerAggregate):
    """A compile: which optimizer, with what, on which data, producing which version."""

    class OptimizationStarted(LedgerAggregate.Created):
        """An optimizer's ``compile`` was called."""

        optimizer: str
        params: dict[str, Any]
        student_version_id: UUID | None
        teacher_version_id: UUID | None
        trainset_digest: str | None
        valset_digest: str | None
        metric: str | None
        context: str

    class OptimizationCompleted(LedgerAggregate.Event):
        """``compile`` returned a program, registered as ``result_version_id``."""

        result_version_id: UUID | None
        score: float | None
        latency_ms: float

        def apply(self, aggregate: OptimizationRun) -> None:
            """Mark the run completed."""
            aggregate.status = "completed"
            aggregate.result_version_id = self.result_version_id

    class OptimizationFailed(LedgerAggregate.Event):
        """``compile`` raised."""

        error_type: str
        message: str
        latency_ms: float

        def apply(self, aggregate: OptimizationRun) -> None:
            """Mark the run failed."""
            aggregate.status = "failed"

    def __init__(self, optimizer: str, student_version_id: UUID | None) -> None:
        self.optimizer = optimizer
        self.student_version_id = student_version_id
        self.result_version_id: UUID | None = None
        self.status = "started"

    @classmethod
    def start(
        cls,
        *,
        run_id: UUID,
        optimizer: str,
        params: dict[str, Any],
        student_version_id: UUID | None,
        teacher_version_id: UUID | None,
        trainset_digest: str | None,
        valset_digest: str | None,
        metric: str | None,
        context: str,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> OptimizationRun:
        """Start a run (``OptimizationStarted``)."""
        extra: dict[str, Any] = {} if occurred_at is None else {"timestamp": occurred_at}
        return cls._create(
            cls.OptimizationStarted,
            id=run_id,
            optimizer=optimizer,
            params=params,
            student_version_id=student_version_id,
            teacher_version_id=teacher_version_id,
            trainset_digest=trainset_digest,
            valset_digest=valset_digest,
            metric=metric,
            context=context,
            **provenance(actor, trace_id, span_id),
            **extra,
        )

    def complete(
        self,
        *,
        result_version_id: UUID | None,
        score: float | None,
        latency_ms: float,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> None:
        """Record the compiled program (``OptimizationCompleted``)."""
        self._check_running()
        self.record(
            self.OptimizationCompleted,
            occurred_at,
            result_version_id=result_version_id,
            score=score,
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
        """Record that compile raised (``OptimizationFailed``)."""
        self._check_running()
        self.record(
            self.OptimizationFailed,
            occurred_at,
            error_type=error_type,
            message=message,
            latency_ms=latency_ms,
            **provenance(actor, trace_id, span_id),
        )

    def _check_running(self) -> None:
        if self.status != "started":
            msg = f"Optimization run {self.id} has already {self.status}."
            raise DomainRuleError(msg)
