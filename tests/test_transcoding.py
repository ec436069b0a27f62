"""Event states written with orjson read back exactly as the library's encoder would
have written them, whatever they hold; a prediction's events take the fast path."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    UUIDAsHex,
)
from hypothesis import example, given
from hypothesis import strategies as st

import dspy_ledger
from commands.payloads import PayloadConverter
from dspy_ledger.ledger import Ledger
from ledger.privacy.mapper import PrivacyMapper
from ledger.transcoding import LedgerTranscoder

_Transcoder = TypeVar("_Transcoder", bound=JSONTranscoder)


class Colour(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    LARGE = 3


class Label(str):
    """A subclass of a builtin, which orjson would otherwise write as a plain string."""


def _registered(transcoder: _Transcoder) -> _Transcoder:
    """The transcoder with the transcodings the ledger's application registers."""
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return transcoder


LIBRARY = _registered(JSONTranscoder())
FAST = _registered(LedgerTranscoder())

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),  # NaN and the infinities too
    st.text(max_size=8),
    st.uuids(),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(seconds=37))])),
    st.decimals(allow_nan=False, places=3, max_value=10**6, min_value=-(10**6)),
    st.sampled_from([Colour.RED, Size.LARGE, Label("tag")]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.dictionaries(st.integers(0, 9), inner, min_size=1, max_size=2),
    ),
    max_leaves=12,
)
_STATES = st.dictionaries(st.sampled_from(["a", "b", "c", "inputs", "outputs"]), _VALUES)


def _written(encode: Any, state: dict[str, Any]) -> tuple[str, object]:
    """What ``encode(state)`` stores, as the library reads it back (re-encoded by the
    library, so NaN compares equal to NaN), or the type of the error it raised."""
    try:
        stored = encode(dict(state))
    except Exception as error:
        return ("raised", type(error))
    return ("stored", LIBRARY.encode(LIBRARY.decode(stored)))


# Each value orjson would write its own way, or not at all, is tried every run.
@given(_STATES)
@example({"a": float("nan"), "b": [float("-inf")]})
@example({"a": [uuid.UUID(int=1)], "b": {"c": (Colour.RED, Size.LARGE)}})
@example({"a": 2**70, "b": {1: "one"}, "c": Label("x")})
def test_any_state_is_stored_as_the_library_stores_it(state: dict[str, Any]) -> None:
    fast = _written(lambda s: FAST.encode_event_state(s, frozenset()), state)
    assert fast == _written(LIBRARY.encode, state)


@given(_STATES)
def test_converted_payloads_are_stored_as_the_library_stores_them(
    state: dict[str, Any],
) -> None:
    """The recorder's converted payloads are plain JSON, so trusting them is safe."""
    converted = frozenset({"inputs", "outputs"})
    for name in converted & state.keys():
        state[name] = PayloadConverter().convert(state[name], f"$.{name}")
    fast = _written(lambda s: FAST.encode_event_state(s, converted), state)
    assert fast == _written(LIBRARY.encode, state)


def test_values_the_library_tags_are_tagged_at_any_depth() -> None:
    when = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    key = uuid.UUID(int=7)
    state = {"at": when, "nested": {"ids": [key, (key, Decimal("1.50"))]}}
    decoded = LIBRARY.decode(FAST.encode_event_state(dict(state), frozenset()))
    assert decoded == {"at": when, "nested": {"ids": [key, [key, Decimal("1.50")]]}}
    assert type(decoded["nested"]["ids"][0]) is uuid.UUID


_OFFSETS = [UTC, None, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(seconds=37))]


@given(st.datetimes(timezones=st.sampled_from(_OFFSETS)))
@example(datetime(2026, 12, 7, 12, 0, tzinfo=UTC))  # no microseconds
@example(datetime(5, 1, 2, 3, 4, 5, 6, tzinfo=UTC))  # a year of one digit
@example(datetime(2026, 1, 1, tzinfo=timezone(timedelta(seconds=37))))
def test_a_datetime_is_written_byte_for_byte_as_the_library_writes_it(when: datetime) -> None:
    """orjson writes UTC datetimes itself, byte for byte as the library writes them."""
    state = {"at": when, "nested": [when]}
    assert FAST.encode_event_state(dict(state), frozenset()) == LIBRARY.encode(state)


def test_a_value_it_cannot_write_raises_as_the_library_does() -> None:
    state = {"a": object()}
    with pytest.raises(type(_library_error(state))):
        FAST.encode_event_state(dict(state), frozenset())


def _library_error(state: dict[str, Any]) -> Exception:
    try:
        LIBRARY.encode(state)
    except Exception as error:
        return error
    raise AssertionError("the library encoded it")


@pytest.fixture
def ledger(sqlite_url: str) -> Iterator[Ledger]:
    """A synchronous ledger: its events are encoded in this process, where a spy sees."""
    opened = dspy_ledger.open(sqlite_url, actor="tester", durability="sync")
    opened.instrument()
    yield opened
    opened.close()


def test_recorded_predictions_take_the_fast_path_and_store_what_the_library_would(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real predictions with awkward payloads: no state falls back to the library's
    encoder, and each event is stored as the library's own mapper would store it."""
    fallbacks: list[object] = []
    library_encode = LedgerTranscoder.encode

    def counted(self: LedgerTranscoder, obj: Any) -> bytes:
        fallbacks.append(obj)
        return library_encode(self, obj)

    written: list[tuple[Any, StoredEvent]] = []
    to_stored_event = PrivacyMapper.to_stored_event

    def kept(self: PrivacyMapper, event: Any) -> StoredEvent:
        stored = to_stored_event(self, event)
        written.append((event, stored))
        return stored

    monkeypatch.setattr(LedgerTranscoder, "encode", counted)
    monkeypatch.setattr(PrivacyMapper, "to_stored_event", kept)

    class Echo(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.answer = dspy.Predict("question -> answer")

        def forward(self, **kwargs: object) -> dspy.Prediction:
            answer = self.answer(question=f"What is {kwargs['id']}?").answer
            return dspy.Prediction(echo=kwargs, answer=answer, when=datetime(2026, 1, 1))

    with dspy.context(lm=DummyLM([{"answer": "an id"}] * 3)):
        for index in range(3):
            Echo()(id=uuid.UUID(int=index), colour=Colour.RED, ratio=float("nan"), pair=(1, 2))
    assert fallbacks == []
    assert {type(event).__name__ for event, _ in written} >= {
        "PredictionStarted",
        "ModelExecuted",
        "PredictionCompleted",
    }
    library: Mapper[uuid.UUID] = Mapper(transcoder=LIBRARY)
    for event, stored in written:
        assert LIBRARY.decode(stored.state) == LIBRARY.decode(library.to_stored_event(event).state)
