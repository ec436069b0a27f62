"""Prediction: one top-level call of a DSPy program, with every LM call it made."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from ledger.domain.base import DomainRuleError, LedgerAggregate, LedgerEvent, provenance


class PredictionAlreadyFinishedError(DomainRuleError):
    """A prediction that has completed or failed cannot complete or fail again."""


class Prediction(LedgerAggregate):
    """The record of one top-level program call.

    A stream starts with ``PredictionStarted``, holds one ``ModelExecuted`` per LM call
    made inside the call, ends with ``PredictionCompleted`` or ``PredictionFailed``, and
    may later receive ``FeedbackRecorded``.
    """

    class PredictionStarted(LedgerAggregate.Created):
        """A program was called."""

        program_version_id: UUID | None
        program_name: str
        inputs: dict[str, Any]
        context: str
        payload_notes: dict[str, Any]

        personal_fields = ("inputs",)
        converted_fields = frozenset({"inputs"})

    class ModelExecuted(LedgerAggregate.Event):
        """A language model was called inside the prediction."""

        call_id: str
        parent_call_id: str | None
        model: str
        provider: str
        request: dict[str, Any]
        messages: Any
        outputs: Any
        usage: dict[str, Any]
        cost_usd: float | None
        cached_cost_usd: float | None
        latency_ms: float
        cache_hit: bool
        response_model: str | None
        error: dict[str, str] | None
        payload_notes: dict[str, Any]

        personal_fields = ("messages", "outputs", "error")
        converted_fields = frozenset({"request", "messages", "outputs", "usage"})

        def apply(self, aggregate: Prediction) -> None:
            """Count the LM call."""
            aggregate.model_calls += 1

    class PredictionCompleted(LedgerAggregate.Event):
        """The program returned."""

        outputs: dict[str, Any]
        call_tree: dict[str, Any]
        latency_ms: float
        payload_notes: dict[str, Any]

        personal_fields = ("outputs", "call_tree")
        converted_fields = frozenset({"outputs", "call_tree"})

        def apply(self, aggregate: Prediction) -> None:
            """Mark the prediction completed."""
            aggregate.status = "completed"

    class PredictionFailed(LedgerAggregate.Event):
        """The program raised; the user's exception propagated unchanged."""

        error_type: str
        message: str
        call_tree: dict[str, Any]
        latency_ms: float

        personal_fields = ("message", "call_tree")
        converted_fields = frozenset({"call_tree"})

        def apply(self, aggregate: Prediction) -> None:
            """Mark the prediction failed."""
            aggregate.status = "failed"

    class FeedbackRecorded(LedgerAggregate.Event):
        """Someone judged the prediction after the fact."""

        score: float | None
        label: str | None
        by: str
        comment: str | None

        personal_fields = ("label", "comment")

    def __init__(
        self,
        program_version_id: UUID | None,
        program_name: str,
        context: str,
        subject: str | None = None,
    ) -> None:
        self.program_version_id = program_version_id
        self.program_name = program_name
        self.context = context
        # The data subject the prediction concerns: its later events inherit it.
        self.subject = subject
        self.status = "started"
        self.model_calls = 0

    @classmethod
    def start(
        cls,
        *,
        prediction_id: UUID,
        program_version_id: UUID | None,
        program_name: str,
        inputs: dict[str, Any],
        context: str,
        payload_notes: dict[str, Any] | None = None,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        subject: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Prediction:
        """Start a prediction stream (``PredictionStarted``)."""
        extra: dict[str, Any] = {} if occurred_at is None else {"timestamp": occurred_at}
        return cls._create(
            cls.PredictionStarted,
            id=prediction_id,
            program_version_id=program_version_id,
            program_name=program_name,
            inputs=inputs,
            context=context,
            payload_notes=payload_notes or {},
            **provenance(actor, trace_id, span_id, subject),
            **extra,
        )

    def record_model_execution(self, *, occurred_at: datetime | None = None, **fields: Any) -> None:
        """Record one LM call (``ModelExecuted``); see the event for its fields."""
        fields.setdefault("payload_notes", {})
        fields.setdefault("subject", self.subject)
        self.record(self.ModelExecuted, occurred_at, **fields)

    def complete(
        self,
        *,
        outputs: dict[str, Any],
        call_tree: dict[str, Any],
        latency_ms: float,
        payload_notes: dict[str, Any] | None = None,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        subject: str | None = None,
        occurred_at: datetime | None = None,
    ) -> None:
        """Record that the program returned (``PredictionCompleted``)."""
        self._check_not_finished()
        self.record(
            self.PredictionCompleted,
            occurred_at,
            outputs=outputs,
            call_tree=call_tree,
            latency_ms=latency_ms,
            payload_notes=payload_notes or {},
            **provenance(actor, trace_id, span_id, subject or self.subject),
        )

    def fail(
        self,
        *,
        error_type: str,
        message: str,
        call_tree: dict[str, Any],
        latency_ms: float,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        subject: str | None = None,
        occurred_at: datetime | None = None,
    ) -> None:
        """Record that the program raised (``PredictionFailed``)."""
        self._check_not_finished()
        self.record(
            self.PredictionFailed,
            occurred_at,
            error_type=error_type,
            message=message,
            call_tree=call_tree,
            latency_ms=latency_ms,
            **provenance(actor, trace_id, span_id, subject or self.subject),
        )

    @classmethod
    def finished(
        cls,
        *,
        start: dict[str, Any],
        model_calls: Iterable[dict[str, Any]] = (),
        completed: dict[str, Any] | None = None,
        failed: dict[str, Any] | None = None,
    ) -> list[LedgerEvent]:
        """The whole stream of a call that has already returned or raised, in one step.

        ``start`` holds the keyword arguments of :meth:`start`, each of ``model_calls``
        those of :meth:`record_model_execution`, and ``completed`` those of
        :meth:`complete` or else ``failed`` those of :meth:`fail`. The events are the
        ones those methods trigger one after another, with the same defaults (a missing
        ``occurred_at`` is now; later events inherit the prediction's subject), and
        tests/test_prediction_stream.py holds them to it field by field. A finished call
        is known whole, so there is no state to check each event against: built without
        an aggregate in between, its events cost a third as much, on the path every
        recorded prediction takes (docs/performance.md, item 27).
        """
        if (completed is None) == (failed is None):
            msg = "A finished prediction either completed or failed: give exactly one."
            raise DomainRuleError(msg)
        now = cls.Event.create_timestamp
        stream_id: UUID = start["prediction_id"]
        subject = start.get("subject")
        started_at = start.get("occurred_at")
        events: list[LedgerEvent] = [
            cls.PredictionStarted(  # type: ignore[call-arg]
                originator_id=stream_id,
                originator_version=1,
                timestamp=now() if started_at is None else started_at,
                originator_topic=get_topic(cls),
                program_version_id=start["program_version_id"],
                program_name=start["program_name"],
                inputs=start["inputs"],
                context=start["context"],
                payload_notes=start.get("payload_notes") or {},
                **provenance(start["actor"], start.get("trace_id"), start.get("span_id"), subject),
            )
        ]
        for call in model_calls:
            fields = dict(call)
            at = fields.pop("occurred_at", None)
            fields.setdefault("payload_notes", {})
            fields.setdefault("subject", subject)
            events.append(
                cls.ModelExecuted(
                    originator_id=stream_id,
                    originator_version=len(events) + 1,
                    timestamp=now() if at is None else at,
                    **fields,
                )
            )
        end = cls.PredictionCompleted if completed is not None else cls.PredictionFailed
        fields = dict(completed if completed is not None else failed)  # type: ignore[arg-type]
        at = fields.pop("occurred_at", None)
        if end is cls.PredictionCompleted:
            fields["payload_notes"] = fields.get("payload_notes") or {}
        fields.update(
            provenance(
                fields.pop("actor"),
                fields.pop("trace_id", None),
                fields.pop("span_id", None),
                fields.pop("subject", None) or subject,
            )
        )
        events.append(
            end(
                originator_id=stream_id,
                originator_version=len(events) + 1,
                timestamp=now() if at is None else at,
                **fields,
            )
        )
        return events

    def record_feedback(
        self,
        *,
        score: float | None,
        label: str | None,
        by: str,
        comment: str | None = None,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
    ) -> None:
        """Record a judgement of this prediction (``FeedbackRecorded``)."""
        self.record(
            self.FeedbackRecorded,
            None,
            score=score,
            label=label,
            by=by,
            comment=comment,
            # Feedback on a subject's prediction is about the subject too.
            **provenance(actor, trace_id, span_id, self.subject),
        )

    def _check_not_finished(self) -> None:
        if self.status != "started":
            msg = f"Prediction {self.id} has already {self.status}; it cannot finish twice."
            raise PredictionAlreadyFinishedError(msg)
