"""Turning finished drafts into aggregates and their events.

Content-addressed streams (program versions, datasets) are created only once: the
handler remembers which it has seen and asks the store about the others.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from commands.drafts import (
    DatasetDraft,
    EvaluationDraft,
    EvaluationOutcome,
    ModelCallDraft,
    OptimizationDraft,
    PredictionDraft,
    Provenance,
    RecordedError,
    VersionDraft,
    call_tree,
    error_message,
    error_type_name,
)
from commands.payloads import PayloadConverter, as_mapping, as_text
from commands.program_state import example_inputs, inputs_digest
from commands.redaction import ALWAYS_ON, NamedRedactor, Redaction
from ledger.application import LedgerApplication
from ledger.domain import (
    Dataset,
    Evaluation,
    LedgerEvent,
    OptimizationRun,
    Prediction,
    ProgramVersion,
)

__all__ = ["DraftHandler", "billed_usd", "describe_failure", "error_message", "pricing"]


def pricing(call: ModelCallDraft, usage: Any) -> tuple[bool, float | None]:
    """(whether it was a cache hit, what it cost or would have) of an LM call, as its
    ``ModelExecuted`` records them; ``usage`` is the call's usage as stored (JSON)."""
    cache_hit = call.cache_hit
    if cache_hit is None:  # DSPy without the finalize hook: cache hits bill no usage
        cache_hit = call.entry is not None and not usage and call.error is None
    cost = (call.entry or {}).get("cost")
    return cache_hit, float(cost) if isinstance(cost, (int, float)) else None


def billed_usd(call: ModelCallDraft) -> float | None:
    """What an LM call billed, as its ``ModelExecuted`` records it (``cost_usd``)."""
    usage = (call.entry or {}).get("usage") or {}
    if type(usage) is not dict:  # stored converted: an object may convert to nothing
        usage = PayloadConverter().convert(usage)
    cache_hit, cost = pricing(call, usage)
    return 0.0 if cache_hit else cost


def _who(provenance: Provenance) -> dict[str, Any]:
    return {
        "actor": provenance.actor,
        "trace_id": provenance.trace_id,
        "span_id": provenance.span_id,
    }


class DraftHandler:
    """Builds the aggregates for drafts, creating content-addressed streams once."""

    def __init__(self, app: LedgerApplication, *, max_string_bytes: int) -> None:
        self.app = app
        self.max_string_bytes = max_string_bytes
        #: Run over every stored string (commands.redaction); secrets are always removed.
        self.redaction = Redaction(ALWAYS_ON)
        self._known: set[UUID] = set()

    @property
    def redactors(self) -> tuple[NamedRedactor, ...]:
        """The redactors every stored string passes through (commands.redaction)."""
        return self.redaction.redactors

    @redactors.setter
    def redactors(self, redactors: tuple[NamedRedactor, ...]) -> None:
        self.redaction = Redaction(redactors)

    def forget_known(self, ids: Iterable[UUID]) -> None:
        """Forget that these streams exist (after a conflicting write)."""
        self._known.difference_update(ids)

    def is_known(self, stream_id: UUID) -> bool:
        """True if the stream is known to exist (asking the store when unsure)."""
        if stream_id in self._known:
            return True
        if self.app.stream_exists(stream_id):
            self._known.add(stream_id)
            return True
        return False

    def mark_written(self, records: Iterable[Aggregate | LedgerEvent]) -> None:
        """Remember the content-addressed streams just committed."""
        for record in records:
            if isinstance(record, (ProgramVersion, Dataset)):
                self._known.add(record.id)

    def build(self, draft: object, batch_ids: set[UUID]) -> Sequence[Aggregate | LedgerEvent]:
        """Return what records one draft: aggregates with pending events, and the events
        of a finished prediction's new stream (:meth:`Prediction.finished`)."""
        if isinstance(draft, PredictionDraft):
            return self._prediction(draft, batch_ids)
        if isinstance(draft, EvaluationDraft):
            return self._evaluation(draft, batch_ids)
        if isinstance(draft, OptimizationDraft):
            return self._optimization(draft, batch_ids)
        msg = f"Unknown draft type {type(draft).__name__}."
        raise TypeError(msg)

    def as_stored(self, value: Any, path: str = "$") -> Any:
        """``value`` as this handler stores a payload: JSON, with its strings redacted and
        held to the string limit (``path`` names it in the converter's notes)."""
        return self._converter().convert(value, path)

    def _converter(self, secrets: frozenset[str] = frozenset()) -> PayloadConverter:
        return PayloadConverter(
            max_string_bytes=self.max_string_bytes, secrets=secrets, redactors=self.redaction
        )

    def _message(self, error: BaseException | RecordedError) -> str:
        """An error's message, redacted like every other recorded string."""
        return as_text(self._converter().convert(error_message(error), "$.message"))

    def _version(
        self, version: VersionDraft | None, provenance: Provenance, batch_ids: set[UUID]
    ) -> list[Aggregate]:
        if version is None or version.version_id in batch_ids or self.is_known(version.version_id):
            return []
        batch_ids.add(version.version_id)
        return [
            ProgramVersion.register(
                program_name=version.program_name,
                module_path=version.module_path,
                state=version.state,
                state_hash=version.state_hash,
                parent_version_id=version.parent_version_id,
                produced_by=version.produced_by,
                occurred_at=provenance.started_at,
                **_who(provenance),
            )
        ]

    def _dataset(
        self, dataset: DatasetDraft | None, provenance: Provenance, batch_ids: set[UUID]
    ) -> list[Aggregate]:
        if dataset is None:
            return []
        stream_id = Dataset.id_for(dataset.digest)
        if stream_id in batch_ids or self.is_known(stream_id):
            return []
        batch_ids.add(stream_id)
        return [
            Dataset.register(
                digest=dataset.digest,
                example_digests=dataset.example_digests,
                examples=dataset.examples,
                occurred_at=provenance.started_at,
                **_who(provenance),
            )
        ]

    def _prediction(
        self, draft: PredictionDraft, batch_ids: set[UUID]
    ) -> list[Aggregate | LedgerEvent]:
        out: list[Aggregate | LedgerEvent] = []
        out += self._version(draft.version, draft.provenance, batch_ids)
        who = _who(draft.provenance)
        converter = self._converter()
        inputs = converter.convert(draft.inputs, "$.inputs")
        start = {
            "prediction_id": draft.prediction_id,
            "program_version_id": draft.version.version_id if draft.version else None,
            "program_name": draft.program_name,
            "inputs": as_mapping(inputs),
            "context": draft.context,
            "payload_notes": dict(converter.notes),
            "occurred_at": draft.provenance.started_at,
            "subject": draft.provenance.subject,
            **who,
        }
        model_calls = []
        for call in draft.model_calls:
            fields = self._model_call(call)
            fields.update(who)
            if call.span_id is not None:  # a traced LM call's event points at its own span
                fields["span_id"] = call.span_id
            fields["occurred_at"] = call.occurred_at
            model_calls.append(fields)
        if draft.error is not None:
            failed = {
                "error_type": error_type_name(draft.error),
                "message": self._message(draft.error),
                "call_tree": call_tree(draft.root, self._converter().convert),
                "latency_ms": draft.latency_ms,
                "occurred_at": draft.finished_at,
                **who,
            }
            out += Prediction.finished(start=start, model_calls=model_calls, failed=failed)
            return out
        converter = self._converter()
        outputs = converter.convert(draft.outputs, "$.outputs")
        completed = {
            "outputs": as_mapping(outputs),
            "call_tree": call_tree(draft.root, converter.convert),
            "latency_ms": draft.latency_ms,
            "payload_notes": dict(converter.notes),
            "occurred_at": draft.finished_at,
            **who,
        }
        out += Prediction.finished(start=start, model_calls=model_calls, completed=completed)
        return out

    def _model_call(self, call: ModelCallDraft) -> dict[str, Any]:
        converter = self._converter(call.secrets)
        entry = call.entry or {}
        usage = converter.convert(entry.get("usage") or {}, "$.usage")
        cache_hit, cost_usd = pricing(call, usage)
        messages = entry.get("messages") if entry else None
        if messages is None:
            messages = call.inputs.get("messages") or call.inputs.get("prompt")
        outputs = entry.get("outputs") if entry else call.outputs
        notes: dict[str, Any] = {}
        if call.dropped_params:
            notes["secrets_removed"] = sorted(call.dropped_params)
        if call.entry is None and call.error is None:
            notes["history"] = "DSPy history was disabled: usage and cost unknown"
        fields = {
            "call_id": call.call_id,
            "parent_call_id": call.parent_call_id,
            "model": call.model,
            "provider": call.provider,
            "request": converter.convert(call.request, "$.request"),
            "messages": converter.convert(messages, "$.messages"),
            "outputs": converter.convert(outputs, "$.outputs"),
            "usage": usage if isinstance(usage, dict) else {},
            # A cache hit bills nothing; what it would have cost is kept apart.
            "cost_usd": 0.0 if cache_hit else cost_usd,
            "cached_cost_usd": cost_usd if cache_hit else None,
            "latency_ms": call.latency_ms,
            "cache_hit": bool(cache_hit),
            "response_model": entry.get("response_model"),
            "error": (
                {"type": error_type_name(call.error), "message": self._message(call.error)}
                if call.error is not None
                else None
            ),
        }
        notes.update(converter.notes)
        fields["payload_notes"] = notes
        return fields

    def _evaluation(self, draft: EvaluationDraft, batch_ids: set[UUID]) -> list[Aggregate]:
        who = _who(draft.provenance)
        out = self._version(draft.version, draft.provenance, batch_ids)
        out += self._dataset(draft.devset, draft.provenance, batch_ids)
        evaluation = Evaluation.start(
            evaluation_id=draft.evaluation_id,
            program_version_id=draft.version.version_id if draft.version else None,
            devset_digest=draft.devset.digest if draft.devset else None,
            metric=draft.metric,
            context=draft.context,
            occurred_at=draft.provenance.started_at,
            **who,
        )
        if draft.error is not None or draft.result is None:
            error = draft.error or RuntimeError("evaluation returned nothing")
            evaluation.fail(
                error_type=error_type_name(error),
                message=self._message(error),
                latency_ms=draft.latency_ms,
                occurred_at=draft.finished_at,
                **who,
            )
        else:
            evaluation.complete(
                score=float(getattr(draft.result, "score", 0.0) or 0.0),
                results=self._evaluation_results(draft),
                latency_ms=draft.latency_ms,
                occurred_at=draft.finished_at,
                **who,
            )
        out.append(evaluation)
        return out

    def _evaluation_results(self, draft: EvaluationDraft) -> list[dict[str, Any]]:
        rows = getattr(draft.result, "results", None) or []
        digests = draft.devset.example_digests if draft.devset else []
        unclaimed = {key: list(ids) for key, ids in draft.predictions_by_inputs.items()}
        results = []
        portable = isinstance(draft.result, EvaluationOutcome)
        for index, row in enumerate(rows):
            example, prediction, score = row
            # A portable outcome carries the example's inputs digest in its place.
            key = example if portable else inputs_digest(example_inputs(example))
            ids = unclaimed.get(key) or []
            converter = self._converter()
            results.append(
                {
                    "index": index,
                    "example_digest": digests[index] if index < len(digests) else None,
                    "prediction_id": str(ids.pop(0)) if ids else None,
                    "score": converter.convert(score),
                    "outputs": converter.convert(prediction),
                }
            )
        return results

    def _optimization(self, draft: OptimizationDraft, batch_ids: set[UUID]) -> list[Aggregate]:
        who = _who(draft.provenance)
        out = self._version(draft.student, draft.provenance, batch_ids)
        out += self._version(draft.teacher, draft.provenance, batch_ids)
        out += self._dataset(draft.trainset, draft.provenance, batch_ids)
        out += self._dataset(draft.valset, draft.provenance, batch_ids)
        run = OptimizationRun.start(
            run_id=draft.run_id,
            optimizer=draft.optimizer,
            params=draft.params,
            student_version_id=draft.student.version_id if draft.student else None,
            teacher_version_id=draft.teacher.version_id if draft.teacher else None,
            trainset_digest=draft.trainset.digest if draft.trainset else None,
            valset_digest=draft.valset.digest if draft.valset else None,
            metric=draft.metric,
            context=draft.context,
            occurred_at=draft.provenance.started_at,
            **who,
        )
        if draft.error is not None:
            run.fail(
                error_type=error_type_name(draft.error),
                message=self._message(draft.error),
                latency_ms=draft.latency_ms,
                occurred_at=draft.finished_at,
                **who,
            )
            out.append(run)
            return out
        # The result version names the run that produced it, so it is written with it.
        result_aggregates = self._version(draft.result, draft.provenance, batch_ids)
        run.complete(
            result_version_id=draft.result.version_id if draft.result else None,
            score=draft.score,
            latency_ms=draft.latency_ms,
            occurred_at=draft.finished_at,
            **who,
        )
        out.append(run)
        return out + result_aggregates


def describe_failure(draft: object, error: BaseException) -> str:
    """A log line for a draft that could not be turned into events."""
    lines = traceback.format_exception_only(type(error), error)
    return f"{type(draft).__name__}: {''.join(lines).strip()}"
