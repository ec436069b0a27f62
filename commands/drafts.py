"""What the recorder gathers while DSPy runs, before it becomes events.

Drafts hold references to the live objects; :mod:`commands.handlers` converts them to
JSON and events. In ``async`` durability that conversion runs on the writer thread, so
the user's program pays only for gathering. The drafts made on every prediction have
slots: several are made per call, and slots are quicker to fill and to read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class RecordedError:
    """An exception as the events keep it: its class's qualified name and its message."""

    type_name: str
    message: str


@dataclass(frozen=True)
class EvaluationOutcome:
    """What the events keep of ``dspy.Evaluate``'s result.

    ``results`` rows are ``(inputs digest of the example, prediction, score)``.
    """

    score: float
    results: list[tuple[str, Any, Any]]


@dataclass(frozen=True)
class VersionDraft:
    """A program state seen by the recorder (registered if new).

    Frozen: one draft is shared by every prediction of an unchanged program
    (:func:`commands.program_state.version_of`), so none may change it.
    """

    version_id: uuid.UUID
    program_name: str
    module_path: str
    state: dict[str, Any]
    state_hash: str
    parent_version_id: uuid.UUID | None = None
    produced_by: uuid.UUID | None = None


@dataclass
class DatasetDraft:
    """A list of examples (converted to JSON already: needed for digests)."""

    digest: str
    example_digests: list[str]
    examples: list[dict[str, Any]]


@dataclass(slots=True)
class Provenance:
    """Who, when and under which trace something happened."""

    actor: str
    started_at: datetime
    trace_id: str | None = None
    span_id: str | None = None
    subject: str | None = None


@dataclass(slots=True)
class CallNode:
    """One call in a prediction's call tree (a module, an LM call or a tool)."""

    call_id: str
    kind: str
    name: str
    started: float
    children: list[CallNode] = field(default_factory=list)
    latency_ms: float | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_tree(self) -> dict[str, Any]:
        """The node and its children as plain data."""
        out: dict[str, Any] = {"call_id": self.call_id, "kind": self.kind, "name": self.name}
        if self.latency_ms is not None:
            out["latency_ms"] = round(self.latency_ms, 3)
        if self.error is not None:
            out["error"] = self.error
        if self.detail:
            out.update(self.detail)
        if self.children:
            out["children"] = [child.to_tree() for child in list(self.children)]
        return out


@dataclass(slots=True)
class ModelCallDraft:
    """One LM call, with DSPy's history entry when it was captured."""

    call_id: str
    parent_call_id: str | None
    model: str
    provider: str
    request: dict[str, Any]
    dropped_params: list[str]
    inputs: dict[str, Any]
    entry: dict[str, Any] | None
    cache_hit: bool | None
    latency_ms: float
    occurred_at: datetime
    error: BaseException | RecordedError | None
    outputs: Any
    secrets: frozenset[str]
    trace_id: str | None = None
    span_id: str | None = None


@dataclass(slots=True)
class PredictionDraft:
    """One top-level program call being recorded."""

    prediction_id: uuid.UUID
    program_name: str
    version: VersionDraft | None
    inputs: dict[str, Any]
    context: str
    provenance: Provenance
    root: CallNode
    model_calls: list[ModelCallDraft] = field(default_factory=list)
    outputs: Any = None
    error: BaseException | RecordedError | None = None
    latency_ms: float = 0.0
    finished_at: datetime | None = None


@dataclass
class EvaluationDraft:
    """One ``dspy.Evaluate`` call being recorded."""

    evaluation_id: uuid.UUID
    version: VersionDraft | None
    devset: DatasetDraft | None
    metric: str | None
    context: str
    provenance: Provenance
    started: float
    # input digest -> prediction ids made under this evaluation, to link results.
    predictions_by_inputs: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    result: Any = None  # dspy's EvaluationResult, or an EvaluationOutcome once portable
    error: BaseException | RecordedError | None = None
    latency_ms: float = 0.0
    finished_at: datetime | None = None


@dataclass
class OptimizationDraft:
    """One optimizer ``compile`` call being recorded."""

    run_id: uuid.UUID
    optimizer: str
    params: dict[str, Any]
    student: VersionDraft | None
    teacher: VersionDraft | None
    trainset: DatasetDraft | None
    valset: DatasetDraft | None
    metric: str | None
    context: str
    provenance: Provenance
    started: float
    result: VersionDraft | None = None
    score: float | None = None
    error: BaseException | RecordedError | None = None
    latency_ms: float = 0.0
    finished_at: datetime | None = None
