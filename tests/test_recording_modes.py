"""Recording programs run through DSPy's other ways of calling: streaming and Parallel.

Both run against the simulated OpenAI-compatible server on loopback, so litellm's real
streaming and usage path produces what the ledger records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import dspy
import pytest

import dspy_ledger
from dspy_ledger import Ledger
from dspy_ledger.simulated_model import (
    SimulatedModelServer,
    demo_examples,
    expected_cost,
)
from tests.helpers import events_of, only, predictions, types_of


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = dspy_ledger.open(ledger_url, actor="tester")
    opened.instrument()
    yield opened
    opened.close()


def simulated_lm(server: SimulatedModelServer) -> dspy.LM:
    return dspy.LM(
        "openai/sim-qa-small",
        api_base=server.api_base,
        api_key="sk-test",
        cache=False,
        num_retries=0,
    )


def test_a_streamed_prediction_records_the_whole_answer_and_its_usage(
    ledger: Ledger, server: SimulatedModelServer
) -> None:
    question = demo_examples()[0]["question"]
    program = dspy.streamify(
        dspy.Predict("question -> answer"),
        stream_listeners=[dspy.streaming.StreamListener(signature_field_name="answer")],
    )

    async def consume() -> tuple[list[object], dspy.Prediction]:
        chunks: list[object] = []
        final: dspy.Prediction | None = None
        with dspy.context(lm=simulated_lm(server)):
            async for item in program(question=question):
                if isinstance(item, dspy.Prediction):
                    final = item
                else:
                    chunks.append(item)
        assert final is not None
        return chunks, final

    chunks, final = asyncio.run(consume())

    assert chunks, "the simulated server streams the answer in pieces"
    events = events_of(ledger)
    assert types_of(events) == [
        "ProgramVersionRegistered",
        "PredictionStarted",
        "ModelExecuted",
        "PredictionCompleted",
    ]
    [executed] = only(events, "ModelExecuted")
    [completed] = only(events, "PredictionCompleted")
    # The record holds the assembled answer, not the last chunk.
    assert completed["outputs"] == {"answer": final.answer}
    assert final.answer in executed["outputs"][0]
    usage = executed["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert executed["cost_usd"] == pytest.approx(
        expected_cost("sim-qa-small", usage["prompt_tokens"], usage["completion_tokens"])
    )


def test_dspy_parallel_records_each_call_as_its_own_prediction(
    ledger: Ledger, server: SimulatedModelServer
) -> None:
    questions = [example["question"] for example in demo_examples()[:6]]
    program = dspy.Predict("question -> answer")
    tasks = [
        (program, dspy.Example(question=question).with_inputs("question")) for question in questions
    ]
    with dspy.context(lm=simulated_lm(server)):
        results = dspy.Parallel(num_threads=3, disable_progress_bar=True)(tasks)

    events = events_of(ledger)
    streams = predictions(events)
    assert len(streams) == len(questions)
    assert types_of(events).count("ProgramVersionRegistered") == 1
    recorded: dict[str, str] = {}
    for stream in streams.values():
        assert types_of(stream) == ["PredictionStarted", "ModelExecuted", "PredictionCompleted"]
        started, _, completed = stream
        recorded[started.data["inputs"]["question"]] = completed.data["outputs"]["answer"]
    # Every thread's prediction is linked to its own inputs and its own answer.
    assert recorded == {q: r.answer for q, r in zip(questions, results, strict=True)}
