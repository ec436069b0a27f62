"""The process writer: async recordings' events built in a writer process of their own.

What it must show: the events are exactly those the in-process writer builds (payload
conversion, notes and redaction included), nothing is lost or doubled if the writer
process dies, a draft the writer cannot read is counted rather than hanging ``flush``,
and the writer is chosen (or not) as documented.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import fcntl
import math
import os
import signal
import time
from pathlib import Path, PurePosixPath
from typing import Any

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import dspy_ledger
from commands.payloads import PayloadConverter
from commands.portable_drafts import decode_draft, encode_draft
from commands.process_writer import ProcessWriter
from commands.writer import AsyncWriter
from ledger.errors import InvalidInputError
from tests.helpers import events_of, only, predictions


class Colour(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    LARGE = 3


class Point(BaseModel):
    x: int
    label: str


@dataclasses.dataclass
class Box:
    width: float
    items: list[str]


class Unknown:
    def __repr__(self) -> str:
        return "<Unknown thing>"


@dataclasses.dataclass(frozen=True)
class FrozenTag:
    name: str


class ShoutedPrediction(dspy.Prediction):
    """A Prediction whose plain form is not its fields' (toDict overridden)."""

    def toDict(self) -> dict[str, Any]:  # noqa: N802 - DSPy's name
        return {key.upper(): value for key, value in self._store.items()}


def _exotic_values() -> list[Any]:
    prediction = dspy.Prediction(answer="4", reasoning="sk-" + "a" * 30)
    return [
        prediction,
        dspy.Example(question="q", count=3, ratio=0.5, flag=True, missing=None),
        dspy.Prediction(answer="4", steps=["a", prediction], when=dt.datetime(2026, 1, 2)),
        ShoutedPrediction(answer="4"),
        {"nested": [prediction, (1, 2), {3: "three"}], "when": dt.datetime(2026, 1, 2, 3, 4)},
        {"set": {3, 1, 2}, "bytes": b"\x00\x01", "nan": math.nan, "inf": -math.inf},
        {"enum": Colour.RED, "int enum": Size.LARGE, "path": PurePosixPath("/a/b")},
        {"model": Point(x=1, label="p"), "dataclass": Box(2.5, ["a"]), "other": Unknown()},
        {"error": ValueError("bad"), "class": Unknown, "function": _exotic_values},
        bytearray(b"xyz"),
        "Bearer abcdefghijklmnop and a card 4111 1111 1111 1111",
    ]


def _round_trip(value: Any) -> Any:
    """``value`` as the writer process receives it (inside a prediction draft)."""
    from commands.drafts import PredictionDraft, Provenance, new_node

    draft = PredictionDraft(
        prediction_id=__import__("uuid").uuid4(),
        program_name="P",
        version=None,
        inputs={"value": value},
        context="production",
        provenance=Provenance(actor="a", started_at=dt.datetime.now(dt.UTC)),
        root=new_node("c", "module", "P", 0.0),
        outputs=value,
    )
    received = decode_draft(encode_draft(draft, {}), {})
    assert isinstance(received, PredictionDraft)
    assert received.provenance.started_at == draft.provenance.started_at
    assert received.prediction_id == draft.prediction_id
    return received.outputs


def _converted(value: Any) -> tuple[Any, dict[str, str]]:
    converter = PayloadConverter()
    return converter.convert(value, "$.outputs"), converter.notes


@pytest.mark.parametrize("value", _exotic_values(), ids=lambda v: type(v).__name__)
def test_what_crosses_to_the_writer_converts_exactly_as_the_live_object(value: Any) -> None:
    assert _converted(_round_trip(value)) == _converted(value)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5), children, max_size=4)
        | st.tuples(children, children)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(json_like)
def test_any_plain_payload_converts_the_same_after_crossing(value: Any) -> None:
    def same_nan(data: Any) -> str:
        return repr(data)  # NaN != NaN; their reprs compare

    assert same_nan(_converted(_round_trip(value))) == same_nan(_converted(value))


def _record(ledger: dspy_ledger.Ledger, count: int) -> None:
    program = dspy.ChainOfThought("question -> answer")
    with ledger.instrument(), dspy.context(lm=DummyLM([{"reasoning": "r", "answer": "a"}] * count)):
        for i in range(count):
            program(question=f"q{i}")


def test_async_ledgers_write_through_a_writer_process_and_close_it(ledger_url: str) -> None:
    ledger = dspy_ledger.open(ledger_url, durability="async")
    writer = ledger._writer
    assert isinstance(writer, ProcessWriter)
    _record(ledger, 50)
    ledger.flush()
    assert len(only(events_of(ledger), "PredictionCompleted")) == 50
    assert writer.stats.committed == 50
    ledger.close()
    assert writer._process.poll() == 0  # the writer process exited cleanly


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_the_pipe_to_the_writer_holds_hundreds_of_drafts(sqlite_url: str) -> None:
    # A default 64 KB pipe holds about 40 drafts, so the writer committed batches that
    # small; where 2 MB is refused (no CAP_SYS_RESOURCE), the system's limit is taken.
    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    with dspy_ledger.open(sqlite_url, durability="async") as ledger:
        writer = ledger._writer
        assert isinstance(writer, ProcessWriter)
        size = fcntl.fcntl(writer._input.fileno(), fcntl.F_GETPIPE_SZ)
    assert size >= min(limit, 1 << 21) > 1 << 16


def _payloads(ledger: dspy_ledger.Ledger) -> list[tuple[str, Any]]:
    """Every event's type and data without ids and times (they differ between runs)."""
    volatile = {"occurred_at", "timestamp", "prediction_id", "call_id", "parent_call_id"}

    def scrub(data: Any) -> Any:
        if isinstance(data, dict):
            return {k: scrub(v) for k, v in data.items() if k not in volatile}
        if isinstance(data, list):
            return [scrub(v) for v in data]
        if isinstance(data, float):
            return "float"  # latencies
        return data

    return [(event.type, scrub(event.data)) for event in events_of(ledger)]


class ExoticOutputs(dspy.Module):
    """A program whose inputs and outputs hold every kind of value the converter knows."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        if question == "fail":
            raise ValueError("refused: Bearer abcdefghijklmnop")
        answer = self.answer(question=question).answer
        return dspy.Prediction(answer=answer, extras=_exotic_values())


def test_the_writer_process_records_the_same_events_as_the_in_process_writer(
    sqlite_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = []
    for writer in ("process", "thread"):
        monkeypatch.setenv("DSPY_LEDGER_WRITER", writer)
        url = f"sqlite:///{tmp_path}/{writer}.db"
        ledger = dspy_ledger.open(url, durability="async", redactors=["email", "card"])
        program = ExoticOutputs()
        with ledger.instrument(), dspy.context(lm=DummyLM([{"answer": "x@y.org"}] * 3)):
            program(question="first, mail me at a@b.com")
            with pytest.raises(ValueError, match="refused"):
                program(question="fail")
            program(question="again")
        ledger.flush()
        recorded.append(_payloads(ledger))
        ledger.close()
    through_process, in_process = recorded
    assert through_process == in_process
    text = repr(through_process)
    assert "a@b.com" not in text and "abcdefghijklmnop" not in text  # redacted in both


def test_a_writer_process_that_dies_is_taken_over_and_nothing_is_lost_or_doubled(
    ledger_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = dspy_ledger.open(ledger_url, durability="async")
    writer = ledger._writer
    assert isinstance(writer, ProcessWriter)
    _record(ledger, 40)
    ledger.flush()
    program = dspy.ChainOfThought("question -> answer")
    with ledger.instrument(), dspy.context(lm=DummyLM([{"reasoning": "r", "answer": "a"}] * 200)):
        for i in range(200):
            program(question=f"more {i}")
            if i == 60:
                os.kill(writer._process.pid, signal.SIGKILL)
                time.sleep(0.05)
    ledger.flush(timeout=60)
    streams = predictions(events_of(ledger))
    assert len(streams) == 240
    assert all(
        [e.type for e in events] == ["PredictionStarted", "ModelExecuted", "PredictionCompleted"]
        for events in streams.values()
    )
    assert writer.stats.committed == 240
    assert "writer process stopped" in caplog.text
    ledger.close()


class HoldsFrozenSet(dspy.Module):
    def forward(self, question: str) -> dspy.Prediction:
        return dspy.Prediction(tags={FrozenTag("a")})


def test_a_draft_the_writer_cannot_read_is_counted_and_flush_still_returns(
    sqlite_url: str,
) -> None:
    ledger = dspy_ledger.open(sqlite_url, durability="async")
    with ledger.instrument():
        HoldsFrozenSet()(question="q")  # the set's member arrives as an unhashable dict
        dspy.Predict("question -> answer")(question="q", lm=DummyLM([{"answer": "a"}]))
    ledger.flush(timeout=30)
    assert ledger.recording_errors == 1
    assert len(only(events_of(ledger), "PredictionCompleted")) == 1
    ledger.close()


def test_which_writer_records_async_ledgers(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def writer_of(url: str, **options: Any) -> type:
        ledger = dspy_ledger.open(url, durability="async", **options)
        kind = type(ledger._writer)
        ledger.close()
        return kind

    assert writer_of(sqlite_url) is ProcessWriter
    assert writer_of("sqlite:///:memory:") is AsyncWriter  # lives in this process only
    assert writer_of(sqlite_url, redactors=[lambda text: text]) is AsyncWriter
    monkeypatch.setenv("DSPY_LEDGER_WRITER", "thread")
    assert writer_of(sqlite_url) is AsyncWriter
    monkeypatch.setenv("DSPY_LEDGER_WRITER", "fork")
    with pytest.raises(InvalidInputError, match="DSPY_LEDGER_WRITER"):
        dspy_ledger.open(sqlite_url, durability="async")


def test_a_forked_process_records_through_a_writer_of_its_own(sqlite_url: str) -> None:
    ledger = dspy_ledger.open(sqlite_url, durability="async")
    ledger.instrument()
    program = dspy.Predict("question -> answer")
    with dspy.context(lm=DummyLM([{"answer": "a"}] * 40)):
        program(question="before the fork")
        pid = os.fork()
        if pid == 0:  # a worker forked after the ledger was opened (multiprocessing's way)
            code = 1
            try:
                for i in range(10):
                    program(question=f"child {i}")
                ledger.flush(timeout=60)
                code = 0 if ledger._writer.stats.committed == 10 else 3
            finally:
                os._exit(code)
        for i in range(10):
            program(question=f"parent {i}")
        _, status = os.waitpid(pid, 0)
    ledger.flush(timeout=60)
    assert os.waitstatus_to_exitcode(status) == 0
    questions = [
        data["inputs"]["question"] for data in only(events_of(ledger), "PredictionStarted")
    ]
    assert sorted(questions) == sorted(
        ["before the fork"] + [f"child {i}" for i in range(10)] + [f"parent {i}" for i in range(10)]
    )
    assert ledger.recording_errors == 0
    ledger.close()


def test_a_flush_wakes_the_writer_process_from_its_lingering(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer would wait a minute for more drafts to share a transaction; a flush
    # must end that wait (through the wake-up pipe), not wait it out.
    monkeypatch.setenv("DSPY_LEDGER_WRITER_LINGER_MS", "60000")
    program = dspy.ChainOfThought("question -> answer")
    with (
        dspy_ledger.open(sqlite_url, durability="async") as ledger,
        dspy.context(lm=DummyLM([{"reasoning": "r", "answer": "a"}] * 6)),
    ):
        ledger.instrument()  # not as a context: leaving that would flush without a limit
        for round_ in range(3):
            program(question=f"first of round {round_}")
            program(question=f"second of round {round_}")
            ledger.flush(timeout=10)
            assert len(only(events_of(ledger), "PredictionCompleted")) == 2 * (round_ + 1)
        ledger.uninstrument()


def test_the_writer_process_reports_when_asked_not_after_every_batch(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each report wakes a thread of the program, which must take the interpreter lock
    # from it: reports come when someone waits in flush(), else at most once a second.
    from commands import process_writer, writer_process

    reports = []
    real_loads = process_writer.loads

    def counting_loads(body: bytes) -> Any:
        reports.append(time.monotonic())
        return real_loads(body)

    monkeypatch.setattr(process_writer, "loads", counting_loads)
    monkeypatch.setenv("DSPY_LEDGER_WRITER_LINGER_MS", "1")
    ledger = dspy_ledger.open(sqlite_url, durability="async")
    writer = ledger._writer
    assert isinstance(writer, ProcessWriter)
    assert writer.wait_ready(timeout=30)
    program = dspy.ChainOfThought("question -> answer")
    ledger.instrument()  # not as a context: leaving that would flush
    started = time.monotonic()
    with dspy.context(lm=DummyLM([{"reasoning": "r", "answer": "a"}] * 6)):
        for i in range(6):
            program(question=f"q{i}")
            time.sleep(0.05)  # each prediction is committed in a batch of its own
    elapsed = time.monotonic() - started
    # the ready report, then one per second that passed at most: not one per batch
    before_flush = len(reports)
    assert before_flush <= 1 + int(elapsed / writer_process.REPORT_SECONDS)
    # All six are committed, maybe not yet reported: the flush gets its answer at once,
    # not with the next periodic report (up to a second away).
    ledger.flush(timeout=writer_process.REPORT_SECONDS / 4)
    assert writer.stats.committed == 6
    assert writer.stats.batches > before_flush  # more batches than reports
    # idle after more predictions, the writer still reports them within a second
    with dspy.context(lm=DummyLM([{"reasoning": "r", "answer": "a"}] * 3)):
        for i in range(3):
            program(question=f"more {i}")
    deadline = time.monotonic() + writer_process.REPORT_SECONDS + 10
    while writer.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.pending == 0
    assert writer.stats.committed == 9
    ledger.close()
