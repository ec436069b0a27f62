"""Replay: re-running recorded predictions, from the record or against something new."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.domain.base import DomainRuleError, LedgerAggregate, provenance


class ReplayAlreadyFinishedError(DomainRuleError):
    """A replay that has completed cannot take more results or complete again."""


class Replay(LedgerAggregate):
    """One replay run: what was replayed how, one verdict per prediction, the totals.

    The predictions the replay makes are ordinary Prediction streams with the context
    ``replay:<this stream's id>``, so views can keep them apart from production.
    """

    class ReplayStarted(LedgerAggregate.Created):
        """A replay began."""

        mode: str
        program: str
        lm: str | None
        program_version: str
        metric: str | None
        selection: dict[str, Any]
        prediction_ids: list[str]

    class PredictionReplayed(LedgerAggregate.Event):
        """One recorded prediction was replayed and judged.

        The diff, the error and the divergence repeat what the prediction said (its
        outputs, its prompt): personal fields, sealed under the subject's key when the
        prediction concerned a data subject, so forgetting the subject erases them too.
        """

        original_prediction_id: str
        replay_prediction_id: str | None
        verdict: str
        diff: list[dict[str, Any]]
        error: str | None
        divergence: dict[str, Any] | None

        personal_fields = ("diff", "error", "divergence")

        def apply(self, aggregate: Replay) -> None:
            """Count the verdict."""
            aggregate.verdicts[self.verdict] = aggregate.verdicts.get(self.verdict, 0) + 1

    class ReplayCompleted(LedgerAggregate.Event):
        """The replay finished; ``totals`` is the report's summary."""

        totals: dict[str, Any]
        latency_ms: float

        def apply(self, aggregate: Replay) -> None:
            """Mark the replay completed."""
            aggregate.status = "completed"

    def __init__(self, mode: str, program: str) -> None:
        self.mode = mode
        self.program = program
        self.status = "started"
        self.verdicts: dict[str, int] = {}

    @classmethod
    def start(
        cls,
        *,
        replay_id: UUID,
        mode: str,
        program: str,
        lm: str | None,
        program_version: str,
        metric: str | None,
        selection: dict[str, Any],
        prediction_ids: list[str],
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Replay:
        """Start a replay stream (``ReplayStarted``)."""
        extra: dict[str, Any] = {} if occurred_at is None else {"timestamp": occurred_at}
        return cls._create(
            cls.ReplayStarted,
            id=replay_id,
            mode=mode,
            program=program,
            lm=lm,
            program_version=program_version,
            metric=metric,
            selection=selection,
            prediction_ids=prediction_ids,
            **provenance(actor, trace_id, span_id),
            **extra,
        )

    def record_result(
        self,
        *,
        original_prediction_id: str,
        replay_prediction_id: str | None,
        verdict: str,
        diff: list[dict[str, Any]],
        error: str | None,
        divergence: dict[str, Any] | None,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        subject: str | None = None,
    ) -> None:
        """Record the verdict on one replayed prediction (``PredictionReplayed``); pass
        the data subject the prediction concerned, if any."""
        self._check_not_finished()
        self.record(
            self.PredictionReplayed,
            None,
            original_prediction_id=original_prediction_id,
            replay_prediction_id=replay_prediction_id,
            verdict=verdict,
            diff=diff,
            error=error,
            divergence=divergence,
            **provenance(actor, trace_id, span_id, subject),
        )

    def complete(
        self,
        *,
        totals: dict[str, Any],
        latency_ms: float,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
    ) -> None:
        """Record that the replay finished (``ReplayCompleted``)."""
        self._check_not_finished()
        self.record(
            self.ReplayCompleted,
            None,
            totals=totals,
            latency_ms=latency_ms,
            **provenance(actor, trace_id, span_id),
        )

    def _check_not_finished(self) -> None:
        if self.status != "started":
            msg = f"Replay {self.id} has already {self.status}; it takes no more results."
            raise ReplayAlreadyFinishedError(msg)
