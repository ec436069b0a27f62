"""Recording through direct hooks: coexistence with DSPy callbacks, new classes, and
program versions that follow every change of state although they are cached."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.teleprompt import Teleprompter
from dspy.utils.callback import BaseCallback
from dspy.utils.dummies import DummyLM

import dspy_ledger
from dspy_ledger import Ledger
from ledger.compression import COMPRESSION_ENV_VAR
from tests.helpers import events_of, only, predictions, types_of


@pytest.fixture
def ledger(sqlite_url: str) -> Iterator[Ledger]:
    opened = dspy_ledger.open(sqlite_url, actor="tester")
    opened.instrument()
    yield opened
    opened.close()


def answers(n: int, **fields: str) -> DummyLM:
    return DummyLM([dict(fields) for _ in range(n)])


class Counting(BaseCallback):  # type: ignore[misc]
    def __init__(self) -> None:
        self.modules: list[str] = []

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.modules.append(type(instance).__name__)


def test_another_dspy_callback_still_runs_and_the_call_tree_stays_whole(ledger: Ledger) -> None:
    theirs = Counting()
    with dspy.context(lm=answers(1, reasoning="r", answer="a"), callbacks=[theirs]):
        dspy.ChainOfThought("question -> answer")(question="q")
    assert theirs.modules == ["ChainOfThought", "Predict"]
    streams = predictions(events_of(ledger))
    assert len(streams) == 1
    (stream,) = streams.values()
    assert types_of(stream) == ["PredictionStarted", "ModelExecuted", "PredictionCompleted"]
    tree = stream[-1].data["call_tree"]
    assert tree["name"] == "ChainOfThought"
    assert tree["children"][0]["name"] == "Predict"
    assert tree["children"][0]["children"][0]["kind"] == "lm"


def test_an_optimizer_defined_after_instrumenting_is_recorded(ledger: Ledger) -> None:
    class KeepAsIs(Teleprompter):  # type: ignore[misc]
        def compile(self, student: Any, *, trainset: list[Any], **kwargs: Any) -> Any:
            return student

    student = dspy.Predict("question -> answer")
    trainset = [dspy.Example(question="q", answer="a").with_inputs("question")]
    KeepAsIs().compile(student, trainset=trainset)
    runs = only(events_of(ledger), "OptimizationStarted")
    assert [run["optimizer"].rsplit(".", 1)[-1] for run in runs] == ["KeepAsIs"]


def test_uninstrument_stops_recording_and_instrument_resumes(ledger: Ledger) -> None:
    with dspy.context(lm=answers(2, answer="a")):
        program = dspy.Predict("question -> answer")
        ledger.uninstrument()
        program(question="not recorded")
        ledger.instrument()
        program(question="recorded")
    started = only(events_of(ledger), "PredictionStarted")
    assert [s["inputs"] for s in started] == [{"question": "recorded"}]


def _versions_used(ledger: Ledger) -> list[str]:
    return [s["program_version_id"] for s in only(events_of(ledger), "PredictionStarted")]


def test_a_cached_version_follows_in_place_changes_of_the_program(ledger: Ledger) -> None:
    lm = answers(6, answer="a")
    program = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        program(question="1")
        program(question="2")  # unchanged: the same version
        program.demos.append(dspy.Example(question="q", answer="a"))  # in place
        program(question="3")
        program.signature = program.signature.with_instructions("Answer tersely.")
        program(question="4")
        program.load_state(dspy.Predict("question -> answer").dump_state())  # back to start
        program(question="5")
    used = _versions_used(ledger)
    assert used[0] == used[1] == used[4]
    assert len({used[1], used[2], used[3]}) == 3
    states = {
        e.stream_id: e.data["state"]
        for e in events_of(ledger)
        if e.type == "ProgramVersionRegistered"
    }
    assert len(states[used[2]]["demos"]) == 1
    assert states[used[3]]["signature"]["instructions"] == "Answer tersely."


def test_a_changed_lm_setting_is_a_new_version(ledger: Ledger) -> None:
    program = dspy.Predict("question -> answer")
    program.lm = answers(2, answer="a")
    program(question="1")
    program.lm.kwargs["temperature"] = 0.9  # in place, inside the LM's settings
    program(question="2")
    used = _versions_used(ledger)
    assert used[0] != used[1]


def test_compressed_and_plain_events_are_read_and_verified_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    for setting in ("zlib", "none"):
        monkeypatch.setenv(COMPRESSION_ENV_VAR, setting)
        with (
            dspy_ledger.open(url, actor="tester") as opened,
            opened.instrument(),
            dspy.context(lm=answers(1, answer=setting)),
        ):
            dspy.Predict("question -> answer")(question=setting)
    with sqlite3.connect(tmp_path / "ledger.db") as connection:
        states = [bytes(r[0]) for r in connection.execute("SELECT state FROM stored_events")]
    connection.close()
    plain = [s for s in states if s.startswith(b"{")]
    assert 0 < len(plain) < len(states)  # some events compressed, some not
    with dspy_ledger.open(url, create=False) as reopened:
        outputs = [d["outputs"] for d in only(list(reopened.events()), "PredictionCompleted")]
        assert outputs == [{"answer": "zlib"}, {"answer": "none"}]
        assert reopened.verify().ok


def test_an_unknown_compression_setting_is_refused_in_one_sentence(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(COMPRESSION_ENV_VAR, "lz4")
    with pytest.raises(dspy_ledger.LedgerError, match="must be 'none' or 'zlib'"):
        dspy_ledger.open(sqlite_url)


def test_threads_of_an_evaluation_link_to_it_beside_another_callback(ledger: Ledger) -> None:
    devset = [dspy.Example(question=f"q{i}", answer="a").with_inputs("question") for i in range(6)]
    theirs = Counting()
    with dspy.context(lm=answers(6, answer="a"), callbacks=[theirs]):
        dspy.Evaluate(devset=devset, metric=lambda e, p, t=None: 1.0, num_threads=3)(
            dspy.Predict("question -> answer")
        )
    events = events_of(ledger)
    (evaluation,) = [e for e in events if e.type == "EvaluationStarted"]
    contexts = [d["context"] for d in only(events, "PredictionStarted")]
    assert contexts == [f"evaluation:{evaluation.stream_id}"] * 6
    assert theirs.modules.count("Predict") == 6


def test_recording_survives_another_instrumentor_undoing_its_patches(ledger: Ledger) -> None:
    from openinference.instrumentation.dspy import DSPyInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    instrumentor = DSPyInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider())
    instrumentor.uninstrument()  # follows __wrapped__ chains to their end
    with dspy.context(lm=answers(1, answer="a")):
        dspy.Predict("question -> answer")(question="after")
    started = only(events_of(ledger), "PredictionStarted")
    assert [s["inputs"] for s in started] == [{"question": "after"}]


def test_a_failure_inside_the_recorder_is_counted_and_the_program_carries_on(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    import commands.recorder as recorder_module

    def broken(*_: Any) -> Any:
        raise RuntimeError("a recorder bug")

    program = dspy.Predict("question -> answer")
    with dspy.context(lm=answers(3, answer="a")):
        # A failure when a prediction starts: that prediction goes unrecorded.
        monkeypatch.setattr(recorder_module, "version_of", broken)
        assert program(question="1").answer == "a"
        monkeypatch.undo()
        # A failure when an LM call ends: the prediction is recorded without it.
        monkeypatch.setattr(recorder_module, "split_request", broken)
        assert program(question="2").answer == "a"
        monkeypatch.undo()
        assert program(question="3").answer == "a"
    ledger.flush()
    assert ledger.recording_errors == 2
    started = only(events_of(ledger), "PredictionStarted")
    # The first prediction's LM call, with no recorded module around it, is recorded
    # as a prediction of its own, as any LM called outside a module is.
    assert [s["program_name"] for s in started][1:] == ["Predict", "Predict"]
    assert [s["inputs"].get("question") for s in started] == [None, "2", "3"]
    executed = only(events_of(ledger), "ModelExecuted")
    assert len(executed) == 2  # the first and the third prediction's LM calls
