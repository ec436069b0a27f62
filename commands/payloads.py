"""Turning whatever a DSPy program passes around into JSON the ledger can keep.

The conversion is documented in docs/events.md ("Payload conversion"):

- JSON scalars, lists and dicts with string keys are kept as they are; tuples become
  lists; dict keys that are not strings become their ``str()``.
- ``dspy.Prediction`` / ``dspy.Example`` become their field dicts; pydantic models
  ``model_dump(mode="json")``; dataclasses ``asdict``; numpy arrays and scalars
  ``tolist()``; datetimes ISO 8601; UUIDs, paths and enums their text or value.
- ``bytes`` become ``{"$bytes": size, "sha256": ..., "base64": ...}``;
  sets become sorted lists; non-finite floats become the strings "NaN", "Infinity".
- Anything else becomes ``{"$repr": repr(value)[:1000], "$type": "module.Class"}``.

Every conversion that loses information (repr, set order, bytes over the inline limit,
non-finite floats) is *noted*: the event's ``payload_notes`` lists the JSON path and
what was done, so a reader knows the record is not the original object.

Large payloads are never cut silently: a string longer than ``max_string_bytes`` is
stored as ``{"$truncated": true, "sha256": ..., "size": ..., "prefix": ...}`` and noted.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import hashlib
import math
import uuid
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from commands.redaction import ALWAYS_ON, NamedRedactor, Redaction

#: Strings longer than this many UTF-8 bytes are stored as a digest and a prefix.
DEFAULT_MAX_STRING_BYTES = 1_000_000
#: How much of a truncated string is kept.
TRUNCATED_PREFIX_CHARS = 4096
#: Bytes up to this size are stored inline (base64); larger ones as a digest.
MAX_INLINE_BYTES = 64_000
_MAX_DEPTH = 40

# A JSON path is built only when a note needs it: until then it is a chain of
# (parent, key or index, kind) tuples, which costs far less than formatting every path.
_KEY, _INDEX = 0, 1
_Path = str | tuple[Any, Any, int]


_ALWAYS_ON = Redaction(ALWAYS_ON)


def _redaction(redactors: tuple[NamedRedactor, ...]) -> Redaction:
    return _ALWAYS_ON if redactors == ALWAYS_ON else Redaction(redactors)


def _render(path: _Path) -> str:
    parts: list[str] = []
    while isinstance(path, tuple):
        path, key, kind = path
        parts.append(f".{key}" if kind == _KEY else f"[{key}]")
    parts.append(path)
    return "".join(reversed(parts))


class PayloadConverter:
    """Converts values to JSON-able data, collecting notes on lossy conversions."""

    def __init__(
        self,
        *,
        max_string_bytes: int = DEFAULT_MAX_STRING_BYTES,
        secrets: frozenset[str] = frozenset(),
        redactors: tuple[NamedRedactor, ...] | Redaction = ALWAYS_ON,
    ) -> None:
        self.max_string_bytes = max_string_bytes
        self.secrets = secrets
        self._redact = redactors if isinstance(redactors, Redaction) else _redaction(redactors)
        self.notes: dict[str, str] = {}

    def convert(self, value: Any, path: str = "$") -> Any:
        """Return the JSON-able form of ``value``; lossy steps are added to ``notes``."""
        return self._convert(value, path, 0)

    def _note(self, path: _Path, what: str) -> None:
        self.notes[_render(path)] = what

    def _convert(self, value: Any, path: _Path, depth: int) -> Any:
        # Exact types first: most payloads are plain JSON already (messages, outputs).
        kind = type(value)
        if kind is str:
            return self._string(value, path)
        if value is None or kind is int or kind is bool:
            return value
        if kind is dict and depth <= _MAX_DEPTH:
            return {
                k if type(k) is str else str(k): self._convert(v, (path, k, _KEY), depth + 1)
                for k, v in value.items()
            }
        if kind is list and depth <= _MAX_DEPTH:
            return [self._convert(v, (path, i, _INDEX), depth + 1) for i, v in enumerate(value)]
        return self._convert_other(value, path, depth)

    def _convert_other(self, value: Any, path: _Path, depth: int) -> Any:
        if isinstance(value, Opaque):
            self._note(path, value.note or f"{value.type_name} stored as repr")
            return {"$repr": value.text, "$type": value.type_name}
        if isinstance(value, (bool, int)):
            return value
        if isinstance(value, str):
            return self._string(value, path)
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            self._note(path, "non-finite float stored as text")
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        if depth > _MAX_DEPTH:
            self._note(path, "nested too deeply: stored as repr")
            return self._repr(value)
        if isinstance(value, Mapping):
            return {str(k): self._convert(v, (path, k, _KEY), depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._convert(v, (path, i, _INDEX), depth + 1) for i, v in enumerate(value)]
        if isinstance(value, (set, frozenset, PortableSet)):
            self._note(path, "set stored as a sorted list")
            members = value.items if isinstance(value, PortableSet) else value
            items = [self._convert(v, (path, "", _INDEX), depth + 1) for v in members]
            return sorted(items, key=repr)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self._bytes(bytes(value), path)
        return self._object(value, path, depth)

    def _string(self, value: str, path: _Path) -> Any:
        # Redaction runs on every string (the secrets redactor cannot be turned off).
        for secret in self.secrets:
            if secret and secret in value:
                value = value.replace(secret, "[secret removed]")
                self._note(path, "secret removed")
        value, redacted_by = self._redact(value)
        if redacted_by:
            self._note(path, "redacted: " + ", ".join(redacted_by))
        if len(value) * 4 <= self.max_string_bytes:
            return value
        encoded = value.encode("utf-8", "surrogatepass")
        if len(encoded) <= self.max_string_bytes:
            return value
        self._note(path, f"string of {len(encoded)} bytes stored as digest and prefix")
        return {
            "$truncated": True,
            "size": len(encoded),
            "sha256": hashlib.sha256(encoded).hexdigest(),
            "prefix": value[:TRUNCATED_PREFIX_CHARS],
        }

    def _bytes(self, data: bytes, path: _Path) -> dict[str, Any]:
        out: dict[str, Any] = {"$bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if len(data) <= MAX_INLINE_BYTES:
            out["base64"] = base64.b64encode(data).decode("ascii")
        else:
            self._note(path, f"{len(data)} bytes stored as digest only")
        return out

    def _object(self, value: Any, path: _Path, depth: int) -> Any:
        if isinstance(value, (dt.datetime, dt.date, dt.time)):
            return value.isoformat()
        if isinstance(value, (uuid.UUID, PurePath)):
            return str(value)
        if isinstance(value, enum.Enum):
            return self._convert(value.value, path, depth + 1)
        found, plain = _plain_form(value)
        if found:
            return self._convert(plain, path, depth + 1)
        self._note(path, f"{_type_name(value)} stored as repr")
        return self._repr(value)

    @staticmethod
    def _repr(value: Any) -> dict[str, str]:
        return {"$repr": _repr_text(value), "$type": _type_name(value)}


@dataclasses.dataclass(frozen=True)
class Opaque:
    """An object with no JSON form, kept as its ``repr``; converted to the documented
    ``{"$repr": ..., "$type": ...}`` (and noted) like the object itself would be."""

    text: str
    type_name: str
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class PortableSet:
    """A set whose members were made portable (they need not be hashable any more)."""

    items: tuple[Any, ...]


def _plain_form(value: Any) -> tuple[bool, Any]:
    """The plain data an object stands for (DSPy fields, pydantic dump, dataclass,
    numpy), as ``(True, data)``, or ``(False, None)`` when it has none."""
    # DSPy's Example and Prediction keep their fields in a dict behind toDict().
    to_dict = getattr(value, "toDict", None)
    if callable(to_dict):
        return True, _safe_call(to_dict)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):  # pydantic v2 models, including dspy.Image and History
        try:
            dumped = model_dump(mode="json")
        except Exception:
            dumped = None
        if dumped is not None:
            return True, dumped
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return True, dataclasses.asdict(value)
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and type(value).__module__.startswith("numpy"):
        return True, _safe_call(tolist)
    return False, None


def portable_step(value: Any) -> Any:
    """One step of reducing an object to builtins that pickle without the program's code.

    Returns what :class:`PayloadConverter` would convert in the object's place (its
    fields, its pydantic dump, its value, ...) or an :class:`Opaque` repr, so that the
    converter later makes of the result exactly the JSON and notes it makes of the
    object. Containers' items are left for the caller (the pickler) to reduce in turn.
    """
    # Subclasses of the scalars (IntEnum, str enums) become the scalar they encode as.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, Mapping):
        return dict(value.items())
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (set, frozenset)):
        return PortableSet(tuple(value))
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    found, plain = _plain_form(value)
    if found:
        return plain
    return Opaque(_repr_text(value), _type_name(value))


def _repr_text(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as error:
        text = f"<unrepresentable: {type(error).__name__}>"
    return text[:1000]


def _safe_call(fn: Any) -> Any:
    try:
        return fn()
    except Exception as error:
        return {"$error": f"{type(error).__name__}: {error}"}


def _type_name(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def to_json(
    value: Any,
    *,
    max_string_bytes: int = DEFAULT_MAX_STRING_BYTES,
    secrets: frozenset[str] = frozenset(),
) -> tuple[Any, dict[str, str]]:
    """Convert one value; return (JSON-able value, notes on lossy conversions)."""
    converter = PayloadConverter(max_string_bytes=max_string_bytes, secrets=secrets)
    return converter.convert(value), converter.notes


def as_mapping(converted: Any) -> dict[str, Any]:
    """A converted payload that the events keep as an object (inputs, outputs): itself,
    or ``{"value": ...}`` when it converted to something else."""
    return converted if isinstance(converted, dict) else {"value": converted}


def as_text(converted: Any) -> str:
    """A converted string that the events keep as text (an error message): itself, or
    the prefix a string over the size limit was cut to."""
    return converted if isinstance(converted, str) else str(converted.get("prefix", ""))
