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
import pickle
import sys
import uuid
from collections.abc import Callable
from types import BuiltinFunctionType, FunctionType
from typing import Any

from commands.drafts import (
    MICROSECOND,
    UTC_EPOCH,
    DatasetDraft,
    EvaluationDraft,
    EvaluationOutcome,
    ModelCallDraft,
    OptimizationDraft,
    PredictionDraft,
    Provenance,
    RecordedError,
    VersionDraft,
    recorded_error,
    utc_moment,
)
from commands.payloads import Opaque, PortableSet, portable_step
from commands.program_state import example_inputs, inputs_digest


def same(value: Any) -> Any:
    """Unpickling helper: the reduced value stands in for the object."""
    return value


def uuid_from_bytes(data: bytes) -> uuid.UUID:
    """Unpickling helper: a UUID from its 16 bytes."""
    return uuid.UUID(bytes=data)


def _fields(cls: type, names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    def reduce(obj: Any) -> tuple[Any, ...]:
        values = tuple(
            recorded_error(obj.error) if name == "error" else getattr(obj, name) for name in names
        )
        return cls, values

    return reduce


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
        else recorded_error(draft.error)
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


# A prediction, the draft recorded most, is sent as nested tuples and lists of builtins
# rather than as its dataclasses (ids as bytes, UTC times as microseconds). Its call tree
# and model calls are kept in that form from the start (commands.drafts), so encoding
# copies them as they are: the C pickler does nearly all the work, and Python code runs
# only for objects that need reducing.
_PREDICTION = "prediction:2"
_BUILTIN_VALUES = frozenset({dict, list, str, int, float, bool, type(None)})


def _instant(moment: dt.datetime | None) -> Any:
    if moment is not None and moment.tzinfo is dt.UTC:
        return (moment - UTC_EPOCH) // MICROSECOND
    return moment


def _moment(value: Any) -> Any:
    return utc_moment(value) if type(value) is int else value


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


def encode_draft(draft: object, sent: dict[uuid.UUID, VersionDraft] | None = None) -> bytes:
    """The draft as bytes that unpickle with no more than this package.

    A program version's state is sent once per receiver: ``sent`` holds the versions
    already sent (by id; :func:`decode_draft` reads later drafts back with it), and later
    drafts name the version by id only.
    """
    return _pickle(_portable(draft, sent))


class DraftEncoder:
    """:func:`encode_draft` for one receiver, with one pickler and buffer reused.

    Not thread-safe: the process writer encodes under the lock it writes the pipe with.
    Making a pickler (a Python subclass) and its buffer for every draft cost as much as
    pickling a prediction's call tree.
    """

    def __init__(self) -> None:
        #: The program versions whose state this receiver has been sent.
        self.sent: dict[uuid.UUID, VersionDraft] = {}
        self._buffer = io.BytesIO()
        self._pickler = _DraftPickler(self._buffer, protocol=pickle.HIGHEST_PROTOCOL)

    def encode(self, draft: object) -> bytes:
        """The draft as :func:`encode_draft` encodes it for this receiver."""
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        self._pickler.clear_memo()  # each draft unpickles on its own
        self._pickler.dump(_portable(draft, self.sent))
        return buffer.getvalue()


def _portable(draft: object, sent: dict[uuid.UUID, VersionDraft] | None) -> object:
    """What is pickled for ``draft``: a prediction as nested tuples, anything else as is."""
    if not isinstance(draft, PredictionDraft):
        return draft
    version = draft.version
    if version is not None and sent is not None:
        if version.version_id in sent:
            version = version.version_id  # type: ignore[assignment]
        else:
            sent[version.version_id] = version
    if isinstance(version, uuid.UUID):
        version = version.bytes
    p = draft.provenance
    return (
        _PREDICTION,
        draft.prediction_id.bytes,
        draft.program_name,
        version,
        _value(draft.inputs),
        draft.context,
        (p.actor, _instant(p.started_at), p.trace_id, p.span_id, p.subject),
        draft.root,  # nested lists already
        list(map(tuple, draft.model_calls)),
        _value(draft.outputs),
        recorded_error(draft.error),
        draft.latency_ms,
        _instant(draft.finished_at),
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
        root=root,
        model_calls=list(map(ModelCallDraft._make, calls)),
        outputs=outputs,
        error=error,
        latency_ms=latency_ms,
        finished_at=_moment(finished_at),
    )
