"""What the recorder gathers while DSPy runs, before it becomes events.

Drafts hold references to the live objects; :mod:`commands.handlers` converts them to
JSON and events. In ``async`` durability that conversion runs in the writer process, so
the user's program pays only for gathering and for pickling. The drafts made on every
prediction have slots: several are made per call, and slots are quicker to fill and to
read. A prediction's call tree (nested lists) and its model calls (tuples) are gathered
in the very form they are pickled in, so that handing them to the writer process runs
no Python code per node or per call.
"""

from __future__ import annotations

import operator
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeAlias


@dataclass(frozen=True)
class RecordedError:
    """An exception as the events keep it: its class's qualified name and its message."""

    type_name: str
    message: str


def error_type_name(error: BaseException | RecordedError) -> str:
    """The qualified class name of an exception or of a recorded one."""
    if isinstance(error, RecordedError):
        return error.type_name
    return type(error).__qualname__


def error_message(error: BaseException | RecordedError) -> str:
    """The error's message, or its type when it has none."""
    if isinstance(error, RecordedError):
        return error.message
    return str(error) or type(error).__name__


def recorded_error(error: BaseException | RecordedError | None) -> RecordedError | None:
    """An error as the events keep it (taken when it happens: the exception may change)."""
    if error is None or isinstance(error, RecordedError):
        return error
    return RecordedError(error_type_name(error), error_message(error))


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


#: A call tree node is a list, in the layout that is pickled for the writer process (the
#: C pickler copies nested lists of plain values without calling back into Python):
#: ``[call_id, kind, name, started, children, latency_ms, error, detail]``. The recorder
#: changes it in place while the call runs; these name the positions.
CallNode: TypeAlias = list[Any]
CALL_ID, KIND, NAME, STARTED, CHILDREN, LATENCY_MS, ERROR, DETAIL = range(8)


def new_node(call_id: str, kind: str, name: str, started: float) -> CallNode:
    """A node for a call (a module, an LM call or a tool) that started at ``started``
    (``time.perf_counter()``)."""
    return [call_id, kind, name, started, [], None, None, {}]


def call_tree(
    node: CallNode, convert: Callable[[Any, str], Any] | None = None, path: str = "$.call_tree"
) -> dict[str, Any]:
    """The node and its children as the events keep them.

    ``convert(value, path)`` (a payload converter's) is applied to what the calls carry
    (errors, tool arguments and results), not to the tree's own ids, kinds, names and
    latencies: a redactor must not rewrite a call id that happens to look like a card
    number (one random call id in 600 does), or the tree would no longer name its calls.
    """
    call_id, kind, name, _, children, latency_ms, error, detail = node
    out: dict[str, Any] = {"call_id": call_id, "kind": kind, "name": name}
    if latency_ms is not None:
        out["latency_ms"] = round(latency_ms, 3)
    if error is not None:
        out["error"] = error if convert is None else convert(error, f"{path}.error")
    for key, value in detail.items():
        out[key] = value if convert is None else convert(value, f"{path}.{key}")
    if children:
        out["children"] = [
            call_tree(child, convert, f"{path}.children[{index}]")
            for index, child in enumerate(list(children))
        ]
    return out


#: The parts of DSPy's LM history entry that the events keep.
ENTRY_KEYS = ("usage", "cost", "messages", "outputs", "response_model")
_ENTRY_KEY_SET = frozenset(ENTRY_KEYS)
_entry_values = operator.itemgetter(*ENTRY_KEYS)


def entry_parts(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The :data:`ENTRY_KEYS` of a history entry (all of them, as DSPy makes it, in one
    C call)."""
    if entry is None:
        return None
    if entry.keys() >= _ENTRY_KEY_SET:
        return dict(zip(ENTRY_KEYS, _entry_values(entry), strict=True))
    return {key: entry[key] for key in ENTRY_KEYS if key in entry}


#: The epoch and the unit of the UTC microseconds that drafts carry times in.
UTC_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def utc_microseconds() -> int:
    """Now, as microseconds since the epoch (UTC): cheaper to read and to send than a
    datetime."""
    return time.time_ns() // 1000


def utc_moment(microseconds: int) -> datetime:
    """The UTC datetime of :func:`utc_microseconds`' value."""
    return UTC_EPOCH + microseconds * MICROSECOND


class ModelCallDraft(NamedTuple):
    """One LM call, with the parts of DSPy's history entry that the events keep.

    A tuple, so that a prediction's calls travel to the writer process as plain tuples
    (``list(map(tuple, calls))``, with no Python code per field).
    """

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
    occurred_us: int
    error: RecordedError | None
    outputs: Any
    secrets: frozenset[str]
    trace_id: str | None = None
    span_id: str | None = None

    @property
    def occurred_at(self) -> datetime:
        """When the call started."""
        return utc_moment(self.occurred_us)


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
