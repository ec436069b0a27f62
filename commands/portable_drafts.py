"""Drafts as bytes another process can read, with the program's objects reduced.

A draft holds references to the program's live objects (``dspy.Prediction``, history
entries, exceptions, classes). :func:`encode_draft` pickles it with every such object
replaced by what :class:`~commands.payloads.PayloadConverter` would convert in its place
(:func:`commands.payloads.portable_step`), so the bytes unpickle without the program's
code, and the writer process (:mod:`commands.writer_process`) builds exactly the events
this process would have built. Plain data (dicts, lists, strings, numbers) is pickled by
the C pickler directly; Python code runs only for the objects that need reducing.
Pickling when the call ends also records the values as they were then, even if the
program mutates them afterwards.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import operator
import pickle
import sys
import uuid
from collections.abc import Callable
from types import BuiltinFunctionType, FunctionType
from typing import Any

from commands.drafts import (
    CallNode,
    DatasetDraft,
    EvaluationDraft,
    EvaluationOutcome,
    ModelCallDraft,
    OptimizationDraft,
    PredictionDraft,
    Provenance,
    RecordedError,
    VersionDraft,
)
from commands.payloads import Opaque, PortableSet, portable_step
from commands.program_state import example_inputs, inputs_digest


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


def same(value: Any) -> Any:
    """Unpickling helper: the reduced value stands in for the object."""
    return value


def uuid_from_bytes(data: bytes) -> uuid.UUID:
    """Unpickling helper: a UUID from its 16 bytes."""
    return uuid.UUID(bytes=data)


def _recorded(error: BaseException | RecordedError | None) -> RecordedError | None:
    """A draft's error as the events keep it (an exception in a payload stays a payload)."""
    if error is None or isinstance(error, RecordedError):
        return error
    return RecordedError(error_type_name(error), error_message(error))


def _fields(cls: type, names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    def reduce(obj: Any) -> tuple[Any, ...]:
        values = tuple(
            _recorded(obj.error) if name == "error" else getattr(obj, name) for name in names
        )
        return cls, values

    return reduce


#: The parts of DSPy's LM history entry that the events keep.
ENTRY_KEYS = ("usage", "cost", "messages", "outputs", "response_model")


_ENTRY_KEY_SET = frozenset(ENTRY_KEYS)
_entry_values = operator.itemgetter(*ENTRY_KEYS)


def _evaluation_outcome(result: Any) -> EvaluationOutcome | None:
    if result is None or isinstance(result, EvaluationOutcome):
        return result
    rows = [
        (inputs_digest(example_inputs(example)), prediction, score)
        for example, prediction, score in getattr(result, "results", None) or []
    ]
    return EvaluationOutcome(float(getattr(result, "score", 0.0) or 0.0), rows)


def _evaluation(draft: EvaluationDraft) -> tuple[Any, ...]:
    values = tuple(
        _evaluation_outcome(draft.result)
        if name == "result"
        else _recorded(draft.error)
        if name == "error"
        else getattr(draft, name)
        for name in _names(EvaluationDraft)
    )
    return EvaluationDraft, values


def _names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


_REDUCERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {
    uuid.UUID: lambda value: (uuid_from_bytes, (value.bytes,)),
    EvaluationDraft: _evaluation,
    **{
        cls: _fields(cls, _names(cls))
        for cls in (
            OptimizationDraft,
            Provenance,
            VersionDraft,
            DatasetDraft,
        )
    },
}
#: Types pickled the ordinary way: the standard library's and this package's own.
_AS_IS = frozenset(
    {
        dt.datetime,
        dt.date,
        dt.time,
        dt.timedelta,
        Opaque,
        PortableSet,
        RecordedError,
        EvaluationOutcome,
    }
)


#: Modules whose classes and functions the writer process imports as well: such objects
#: (those the reductions name, and those the standard ones do) are pickled by reference.
_SHARED_MODULES = frozenset(
    {"builtins", "copyreg", "collections", "datetime", "uuid", "zoneinfo", "commands"}
)


class _DraftPickler(pickle.Pickler):
    """Pickles drafts, reducing every object of the program's to plain data."""

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        reducer = _REDUCERS.get(kind)
        if reducer is not None:
            return reducer(obj)
        if kind in _AS_IS or isinstance(obj, dt.tzinfo):
            return NotImplemented
        if isinstance(obj, (type, FunctionType, BuiltinFunctionType)):
            module = str(getattr(obj, "__module__", None) or "")
            if module.partition(".")[0] in _SHARED_MODULES:
                return NotImplemented
        return same, (portable_step(obj),)


def _pickle(value: Any) -> bytes:
    buffer = io.BytesIO()
    _DraftPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


# A prediction, the draft recorded most, is sent as nested tuples of builtins rather than
# as its dataclasses (ids as bytes, UTC times as microseconds): the C pickler then does
# nearly all the work, and Python code runs only for objects that need reducing.
_PREDICTION = "prediction:1"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_BUILTIN_VALUES = frozenset({dict, list, str, int, float, bool, type(None)})


def _instant(moment: dt.datetime | None) -> Any:
    if moment is not None and moment.tzinfo is dt.UTC:
        return (moment - _EPOCH) // _MICROSECOND
    return moment


def _moment(value: Any) -> Any:
    return _EPOCH + value * _MICROSECOND if type(value) is int else value


def _value(value: Any) -> Any:
    """A payload, with its outermost object (typically a ``dspy.Prediction``) reduced."""
    kind = type(value)
    if kind in _BUILTIN_VALUES:
        return value
    plain_fields = _plain_fields.get(kind)
    if plain_fields is None:
        plain_fields = _plain_fields[kind] = _fields_are_plain(kind)
    if plain_fields:
        store = value._store
        if _SCALARS.issuperset(map(type, store.values())):
            return dict(store)  # what DSPy's toDict() returns for scalar fields
    for _ in range(8):
        if type(value) in _BUILTIN_VALUES:
            return value
        value = portable_step(value)
    return value


#: Field values that DSPy's ``Example.toDict()`` returns unchanged.
_SCALARS = frozenset({str, int, float, bool, type(None)})
#: Per type: whether it is a DSPy ``Example`` (``Prediction``) that keeps ``toDict()``.
_plain_fields: dict[type, bool] = {}


def _fields_are_plain(kind: type) -> bool:
    """True if ``kind`` is DSPy's Example or a subclass that does not change ``toDict``.

    Such an object's :func:`~commands.payloads.portable_step` is ``toDict()``, which for
    fields holding scalars is a copy of its ``_store``: :func:`_value` makes that copy
    directly. Looked up without importing DSPy (the writer process never loads it).
    """
    example = getattr(sys.modules.get("dspy.primitives.example"), "Example", None)
    return (
        isinstance(example, type)
        and issubclass(kind, example)
        and getattr(kind, "toDict", None) is getattr(example, "toDict", None)
    )


def _node_tuple(node: CallNode) -> tuple[Any, ...]:
    detail = node.detail
    if "slot" in detail:  # the LM capture slot, left only if a call never ended
        detail = {k: v for k, v in detail.items() if k != "slot"}
    children = [_node_tuple(child) for child in list(node.children)]
    return (node.call_id, node.kind, node.name, node.started, children, node.latency_ms,
            node.error, detail)  # fmt: skip


def _node(data: tuple[Any, ...]) -> CallNode:
    call_id, kind, name, started, children, latency_ms, error, detail = data
    return CallNode(call_id, kind, name, started, [_node(c) for c in children], latency_ms,
                    error, detail)  # fmt: skip


def _call_tuple(call: ModelCallDraft) -> tuple[Any, ...]:
    entry = call.entry
    if entry is not None:
        if entry.keys() >= _ENTRY_KEY_SET:  # as DSPy makes it: every key there
            entry = dict(zip(ENTRY_KEYS, _entry_values(entry), strict=True))
        else:
            entry = {key: entry[key] for key in ENTRY_KEYS if key in entry}
    return (call.call_id, call.parent_call_id, call.model, call.provider, call.request,
            call.dropped_params, call.inputs, entry, call.cache_hit, call.latency_ms,
            _instant(call.occurred_at), _recorded(call.error), _value(call.outputs), call.secrets,
            call.trace_id, call.span_id)  # fmt: skip


def _call(data: tuple[Any, ...]) -> ModelCallDraft:
    call = ModelCallDraft(*data)
    call.occurred_at = _moment(call.occurred_at)
    return call


def encode_draft(draft: object, sent: dict[uuid.UUID, VersionDraft] | None = None) -> bytes:
    """The draft as bytes that unpickle with no more than this package.

    A program version's state is sent once per receiver: ``sent`` holds the versions
    already sent (by id; :func:`decode_draft` reads later drafts back with it), and later
    drafts name the version by id only.
    """
    if not isinstance(draft, PredictionDraft):
        return _pickle(draft)
    version = draft.version
    if version is not None and sent is not None:
        if version.version_id in sent:
            version = version.version_id  # type: ignore[assignment]
        else:
            sent[version.version_id] = version
    if isinstance(version, uuid.UUID):
        version = version.bytes
    p = draft.provenance
    return _pickle(
        (
            _PREDICTION,
            draft.prediction_id.bytes,
            draft.program_name,
            version,
            _value(draft.inputs),
            draft.context,
            (p.actor, _instant(p.started_at), p.trace_id, p.span_id, p.subject),
            _node_tuple(draft.root),
            [_call_tuple(call) for call in list(draft.model_calls)],
            _value(draft.outputs),
            _recorded(draft.error),
            draft.latency_ms,
            _instant(draft.finished_at),
        )
    )


def decode_draft(body: bytes, versions: dict[uuid.UUID, VersionDraft]) -> object:
    """The draft :func:`encode_draft` encoded; ``versions`` remembers the versions seen."""
    data = pickle.loads(body)
    if not (isinstance(data, tuple) and data and data[0] == _PREDICTION):
        return data
    (_, prediction_id, program_name, version, inputs, context, who, root, calls, outputs,
     error, latency_ms, finished_at) = data  # fmt: skip
    if isinstance(version, VersionDraft):
        versions[version.version_id] = version
    elif version is not None:
        version = versions[uuid.UUID(bytes=version)]
    actor, started_at, trace_id, span_id, subject = who
    return PredictionDraft(
        prediction_id=uuid.UUID(bytes=prediction_id),
        program_name=program_name,
        version=version,
        inputs=inputs,
        context=context,
        provenance=Provenance(actor, _moment(started_at), trace_id, span_id, subject),
        root=_node(root),
        model_calls=[_call(call) for call in calls],
        outputs=outputs,
        error=error,
        latency_ms=latency_ms,
        finished_at=_moment(finished_at),
    )
