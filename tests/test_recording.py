"""What the recorder writes for each kind of DSPy call, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import pairwise

import dspy
import pytest
from dspy.utils.dummies import DummyLM

import dspy_ledger
from dspy_ledger import Ledger
from tests.helpers import events_of, only, predictions, types_of


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = dspy_ledger.open(ledger_url, actor="tester")
    opened.instrument()
    yield opened
    opened.close()


def answers(n: int, **fields: str) -> DummyLM:
    return DummyLM([dict(fields) for _ in range(n)])


def test_a_single_predict_is_one_prediction_with_its_lm_call(ledger: Ledger) -> None:
    lm = answers(1, answer="Paris")
    with dspy.context(lm=lm):
        result = dspy.Predict("question -> answer")(question="Capital of France?")

    events = events_of(ledger)
    assert types_of(events) == [
        "ProgramVersionRegistered",
        "PredictionStarted",
        "ModelExecuted",
        "PredictionCompleted",
    ]
    version, started, executed, completed = events
    assert started.data["program_version_id"] == version.stream_id
    assert started.data["inputs"] == {"question": "Capital of France?"}
    assert started.data["context"] == "production"
    assert started.actor == "tester"
    assert completed.data["outputs"] == {"answer": result.answer} == {"answer": "Paris"}
    assert executed.data["model"] == "dummy"
    # The recorded LM exchange is exactly DSPy's own history entry.
    assert executed.data["outputs"] == lm.history[-1]["outputs"]
    assert executed.data["messages"] == lm.history[-1]["messages"]
    assert {e.stream_id for e in events[1:]} == {started.stream_id}


class Unhurried(dspy.Module):
    """Two LM calls, with time passing before, between and after them."""

    def __init__(self) -> None:
        super().__init__()
        self.first = dspy.Predict("question -> answer")
        self.second = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        time.sleep(0.02)
        self.first(question=question)
        time.sleep(0.02)
        answer = self.second(question=question)
        time.sleep(0.02)
        return answer


def test_each_event_is_dated_when_it_happened(ledger: Ledger) -> None:
    with dspy.context(lm=answers(2, answer="x")):
        Unhurried()(question="q")
    (events,) = predictions(events_of(ledger)).values()
    assert types_of(events) == [
        "PredictionStarted",
        "ModelExecuted",
        "ModelExecuted",
        "PredictionCompleted",
    ]
    moments = [datetime.fromisoformat(event.timestamp) for event in events]
    gaps = [later - earlier for earlier, later in pairwise(moments)]
    assert min(gaps) >= timedelta(milliseconds=15), gaps


def test_the_same_program_state_is_one_version(ledger: Ledger) -> None:
    with dspy.context(lm=answers(3, answer="x")):
        first = dspy.Predict("question -> answer")
        first(question="a")
        dspy.Predict("question -> answer")(question="b")  # equal state, another object
        first.demos = [dspy.Example(question="q", answer="a")]
        first(question="c")
    events = events_of(ledger)
    versions = [e.stream_id for e in events if e.type == "ProgramVersionRegistered"]
    used = [d["program_version_id"] for d in only(events, "PredictionStarted")]
    assert len(versions) == 2
    assert used[0] == used[1] != used[2]


class TwoStep(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.polish = dspy.ChainOfThought("draft -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.polish(draft=self.draft(question=question).draft)


def test_nested_modules_are_one_prediction_with_a_call_tree(ledger: Ledger) -> None:
    lm = DummyLM([{"draft": "d"}, {"reasoning": "because", "answer": "42"}])
    with dspy.context(lm=lm):
        TwoStep()(question="q")
    events = events_of(ledger)
    streams = predictions(events)
    assert len(streams) == 1
    (stream,) = streams.values()
    assert types_of(stream) == [
        "PredictionStarted",
        "ModelExecuted",
        "ModelExecuted",
        "PredictionCompleted",
    ]
    tree = stream[-1].data["call_tree"]
    assert tree["name"] == "TwoStep"
    assert [child["name"] for child in tree["children"]] == ["Predict", "ChainOfThought"]
    cot = tree["children"][1]
    assert cot["children"][0]["name"] == "Predict"
    assert cot["children"][0]["children"][0]["kind"] == "lm"
    assert stream[-1].data["outputs"] == {"reasoning": "because", "answer": "42"}
    # Each LM call names the module call it ran under.
    lm_parents = [e.data["parent_call_id"] for e in stream if e.type == "ModelExecuted"]
    assert lm_parents == [tree["children"][0]["call_id"], cot["children"][0]["call_id"]]


def test_a_failing_module_is_recorded_and_its_exception_propagates(ledger: Ledger) -> None:
    class Broken(dspy.Module):
        def forward(self, question: str) -> None:
            raise KeyError("no such record")

    raised = KeyError("no such record")
    with pytest.raises(KeyError) as caught:
        Broken()(question="q")
    assert type(caught.value) is type(raised)
    events = events_of(ledger)
    assert types_of(events)[-2:] == ["PredictionStarted", "PredictionFailed"]
    failed = events[-1].data
    assert failed["error_type"] == "KeyError"
    assert "no such record" in failed["message"]


def test_react_records_tool_calls_with_arguments_and_results(ledger: Ledger) -> None:
    def lookup(city: str) -> str:
        """Population of a city."""
        return f"{city} has 2 million people"

    lm = DummyLM(
        [
            {
                "next_thought": "look it up",
                "next_tool_name": "lookup",
                "next_tool_args": {"city": "Paris"},
            },
            {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "from the tool", "answer": "2 million"},
        ]
    )
    with dspy.context(lm=lm):
        dspy.ReAct("question -> answer", tools=[lookup], max_iters=3)(question="How big is Paris?")
    (stream,) = predictions(events_of(ledger)).values()
    tree = stream[-1].data["call_tree"]

    def walk(node: dict) -> list[dict]:
        return [node] + [n for child in node.get("children", []) for n in walk(child)]

    tools = [n for n in walk(tree) if n["kind"] == "tool"]
    assert tools[0]["name"] == "lookup"
    assert tools[0]["arguments"] == {"city": "Paris"}
    assert tools[0]["result"] == "Paris has 2 million people"
    assert sum(1 for e in stream if e.type == "ModelExecuted") == 3


def test_threads_of_an_evaluation_each_record_a_prediction(ledger: Ledger) -> None:
    devset = [dspy.Example(question=f"q{i}", answer="a").with_inputs("question") for i in range(12)]
    with dspy.context(lm=answers(12, answer="a")):
        result = dspy.Evaluate(devset=devset, num_threads=4, display_progress=False)(
            dspy.Predict("question -> answer"), metric=lambda e, p, t=None: e.answer == p.answer
        )
    events = events_of(ledger)
    (evaluation,) = only(events, "EvaluationCompleted")
    (evaluation_id,) = [e.stream_id for e in events if e.type == "EvaluationStarted"]
    started = only(events, "PredictionStarted")
    assert len(started) == 12
    assert {d["context"] for d in started} == {f"evaluation:{evaluation_id}"}
    assert evaluation["score"] == result.score == 100.0
    linked = {r["prediction_id"] for r in evaluation["results"]}
    assert linked == {e.stream_id for e in events if e.type == "PredictionStarted"}
    (dataset,) = only(events, "DatasetRegistered")
    assert dataset["size"] == 12
    assert dataset["digest"] == evaluation["devset_digest"]


def test_async_programs_are_recorded(ledger: Ledger) -> None:
    async def run() -> None:
        with dspy.context(lm=answers(2, reasoning="r", answer="yes")):
            program = dspy.ChainOfThought("question -> answer")
            with ledger.acting_as("async-user"):
                await asyncio.gather(program.acall(question="a"), program.acall(question="b"))

    asyncio.run(run())
    events = events_of(ledger)
    started = only(events, "PredictionStarted")
    assert sorted(d["inputs"]["question"] for d in started) == ["a", "b"]
    assert {e.actor for e in events if e.stream_type == "Prediction"} == {"async-user"}
    assert len(only(events, "ModelExecuted")) == 2


def test_compile_records_the_run_its_datasets_and_the_new_version(ledger: Ledger) -> None:
    trainset = [
        dspy.Example(question=f"q{i}", answer="a").with_inputs("question") for i in range(4)
    ]
    student = dspy.Predict("question -> answer")
    with dspy.context(lm=answers(20, answer="a")), ledger.acting_as("ml-engineer"):
        compiled = dspy.BootstrapFewShot(
            metric=lambda e, p, t=None: True, max_bootstrapped_demos=2, max_labeled_demos=2
        ).compile(student, trainset=trainset)
    events = events_of(ledger)
    runs = [e for e in events if e.type == "OptimizationStarted"]
    outer = next(e for e in runs if e.data["optimizer"] == "BootstrapFewShot")
    completed = next(
        e.data
        for e in events
        if e.type == "OptimizationCompleted" and e.stream_id == outer.stream_id
    )
    versions = {e.stream_id: e.data for e in events if e.type == "ProgramVersionRegistered"}
    result = versions[completed["result_version_id"]]
    assert result["parent_version_id"] == outer.data["student_version_id"]
    assert result["produced_by"] == outer.stream_id
    assert len(result["state"]["demos"]) == len(compiled.demos) == 2
    assert outer.data["metric"].endswith("<lambda>")
    assert outer.data["params"]["max_bootstrapped_demos"] == 2
    datasets = {d["digest"]: d for d in only(events, "DatasetRegistered")}
    assert datasets[outer.data["trainset_digest"]]["size"] == 4
    contexts = {d["context"] for d in only(events, "PredictionStarted")}
    assert contexts and all(c.startswith("optimization:") for c in contexts)
    assert all(e.actor == "ml-engineer" for e in events)


def test_unjsonable_inputs_are_converted_and_noted(ledger: Ledger) -> None:
    class Custom:
        def __repr__(self) -> str:
            return "Custom()"

    class EchoModule(dspy.Module):
        def forward(self, **kwargs: object) -> dspy.Prediction:
            return dspy.Prediction(big="x" * 3_000_000, raw=b"\x00\x01", tags={"b", "a"})

    EchoModule()(blob=b"abc", tags={"z", "y"}, obj=Custom(), nan=float("nan"))
    events = events_of(ledger)
    (started,) = only(events, "PredictionStarted")
    (completed,) = only(events, "PredictionCompleted")
    inputs = started["inputs"]
    assert inputs["blob"]["base64"] == "YWJj"
    assert inputs["tags"] == ["y", "z"]
    assert inputs["obj"] == {
        "$repr": "Custom()",
        "$type": f"{Custom.__module__}.{Custom.__qualname__}",
    }
    assert inputs["nan"] == "NaN"
    assert set(started["payload_notes"]) == {"$.inputs.tags", "$.inputs.obj", "$.inputs.nan"}
    big = completed["outputs"]["big"]
    assert big["$truncated"] is True and big["size"] == 3_000_000
    assert len(big["prefix"]) == 4096
    assert "$.outputs.big" in completed["payload_notes"]
