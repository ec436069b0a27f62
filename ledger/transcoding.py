"""The transcoder that writes an event's state with orjson, in the library's JSON format.

The library's :class:`~eventsourcing.persistence.JSONTranscoder` encodes with the
standard ``json`` module and tags what JSON cannot say (a UUID, a datetime, a Decimal)
as ``{"_type_": name, "_data_": ...}`` through a ``default`` hook. That encoding was the
largest single step of the writer's work per prediction (docs/performance.md, items 25
and 26). :class:`LedgerTranscoder` writes the same JSON text with orjson, in about half
of the time as the writer uses it (``python -m bench --only encoding``: 0.44-0.62x from
run to run), and it reads exactly as before (the library's decoder is unchanged).

Why it cannot simply hand a state to orjson: orjson writes some values itself that the
library tags or writes differently, silently: a UUID as its text (it would read back
as a ``str``), an enum as its value, and a non-finite float as ``null``. So
:meth:`LedgerTranscoder.encode_event_state` tags an event's values the way the library
would before orjson sees them, and any value it is not sure of (a type it has no
transcoding for, a non-finite float, a subclass of a builtin, and what orjson refuses:
an integer beyond 64 bits, a dict key that is not a string) sends the whole state to the
library's encoder, which encodes it or raises exactly as it always did.

The one thing it takes on trust: the fields an event class lists in ``converted_fields``
(see :mod:`ledger.domain.base`) hold payloads the recorder has already converted to
plain JSON (:mod:`commands.payloads`: string keys, finite floats, no objects), so they
are not walked in Python, which would cost most of what orjson saves. Even there, what
orjson cannot write goes to a ``default`` hook that refuses it, and the state falls back
to the library's encoder. The silent differences (a UUID, an enum, a non-finite float)
are values the converter never leaves in a payload; tests/test_transcoding.py checks
that over generated payloads.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder

# orjson hands these to ``default`` instead of writing them its own way.
_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


class _NotPlainError(Exception):
    """A value the fast path does not write exactly as the library would."""


def _refuse(value: object) -> object:
    raise _NotPlainError


class LedgerTranscoder(JSONTranscoder):
    """A :class:`~eventsourcing.persistence.JSONTranscoder` that encodes event states
    with orjson, writing JSON the library's own decoder reads back as the same values."""

    def encode_event_state(self, state: dict[str, Any], converted: Collection[str]) -> bytes:
        """Encode an event's state; ``converted`` names fields of plain JSON payloads.

        ``state`` belongs to the caller (the mapper's copy of the event's attributes) and
        its values are replaced by their tagged forms in place.
        """
        try:
            for name, value in state.items():
                kind = type(value)
                if kind is str or value is None or kind is bool or name in converted:
                    continue
                state[name] = self._tagged(value)
            return orjson.dumps(state, default=_refuse, option=_OPTIONS)
        except (_NotPlainError, orjson.JSONEncodeError, RecursionError):
            # The values tagged so far are what the library's own hook writes for
            # them, so the library encodes this state exactly as it would have whole
            # (or raises as it would have: a cycle, a string that is not UTF-8).
            return self.encode(state)

    def _tagged(self, value: Any) -> Any:
        """``value`` with every object the library tags replaced by its tagged form.

        What orjson refuses by itself (an integer beyond 64 bits, a key that is not a
        string) needs no check here: its error sends the state to the library.
        """
        kind = type(value)
        if kind is str or value is None or kind is bool or kind is int:
            return value
        if kind is float:
            if math.isfinite(value):
                return value
            raise _NotPlainError
        if kind is dict:
            tagged = value
            for key, item in value.items():
                new = self._tagged(item)
                if new is not item:
                    if tagged is value:
                        tagged = dict(value)
                    tagged[key] = new
            return tagged
        if kind is list or kind is tuple:
            return [self._tagged(item) for item in value]
        transcoding = self.types.get(kind)
        if transcoding is None:
            raise _NotPlainError
        if kind is datetime and value.tzinfo is UTC and type(transcoding) is DatetimeAsISO:
            # Every event's timestamp. A datetime in UTC is written by orjson exactly as
            # by isoformat() (which it is not for offsets of seconds), in a third of the
            # time: isoformat() of an aware datetime was the slowest step of the tagging.
            return {"_type_": transcoding.name, "_data_": orjson.dumps(value)[1:-1].decode()}
        return {"_type_": transcoding.name, "_data_": self._tagged(transcoding.encode(value))}
