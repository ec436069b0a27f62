"""Tests for the SIMULATED OpenAI-compatible model server.

Real HTTP on loopback and DSPy's real ``dspy.LM`` path; no mocks.
"""

from __future__ import annotations

import json
import sys
import time

import dspy
import httpx
import pytest

from dspy_ledger.simulated_model import (
    FAIL_TOKEN,
    SIMULATED_MODELS,
    SLOW_TOKEN,
    SimulatedModelServer,
    demo_examples,
    expected_cost,
    register_simulated_prices,
    simulated_answer,
)


def make_lm(server: SimulatedModelServer, model: str = "sim-qa-small", **kwargs: object) -> dspy.LM:
    return dspy.LM(
        f"openai/{model}",
        api_base=server.api_base,
        api_key="sk-test",
        cache=False,
        num_retries=0,
        **kwargs,
    )


def assert_usage_and_cost(lm: dspy.LM, model: str) -> None:
    entry = lm.history[-1]
    usage = entry["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    price = SIMULATED_MODELS[model]
    expected = (
        usage["prompt_tokens"] * price.input_per_million / 1e6
        + usage["completion_tokens"] * price.output_per_million / 1e6
    )
    assert entry["cost"] is not None
    assert entry["cost"] > 0
    assert entry["cost"] == pytest.approx(expected, rel=1e-9)
    assert entry["cost"] == pytest.approx(
        expected_cost(model, usage["prompt_tokens"], usage["completion_tokens"]), rel=1e-9
    )


def accuracy(lm: dspy.LM, demos: int) -> float:
    examples = [dspy.Example(**row).with_inputs("question") for row in demo_examples()]
    predict = dspy.Predict("question -> answer")
    predict.demos = examples[:demos]
    with dspy.context(lm=lm):
        correct: int = sum(
            bool(predict(question=ex.question).answer == ex.answer) for ex in examples
        )
    return correct / len(examples)


def test_chain_of_thought_native_engine_reports_usage_and_cost(
    server: SimulatedModelServer,
) -> None:
    lm = make_lm(server)
    before = server.request_count
    with dspy.context(lm=lm):
        result = dspy.ChainOfThought("question -> answer")(
            question="What is the capital of Australia?"
        )
    assert isinstance(result.answer, str)
    assert result.answer == simulated_answer(
        "sim-qa-small", "What is the capital of Australia?", with_demos=False
    )
    assert isinstance(result.reasoning, str)
    assert result.reasoning
    assert server.request_count == before + 1
    assert server.last_auth_header_present is True
    assert_usage_and_cost(lm, "sim-qa-small")
    # DSPy 3.4's default engine priced it itself, from its own price table.
    assert lm.history[-1]["cost_details"]["kind"] == "estimate"


def test_litellm_engine_cost_comes_from_litellm_register_model(
    server: SimulatedModelServer,
) -> None:
    register_simulated_prices()  # now also litellm.register_model(...)
    litellm = sys.modules["litellm"]
    assert litellm.model_cost["openai/sim-qa-large"]["input_cost_per_token"] == pytest.approx(
        SIMULATED_MODELS["sim-qa-large"].input_cost_per_token
    )
    lm = make_lm(server, "sim-qa-large", engine="litellm")
    with dspy.context(lm=lm):
        result = dspy.ChainOfThought("question -> answer")(question="What is 17 + 25?")
    assert result.answer == "42"
    assert type(lm.history[-1]["response"]).__module__.startswith("litellm")
    assert_usage_and_cost(lm, "sim-qa-large")


def test_register_simulated_prices_is_idempotent(server: SimulatedModelServer) -> None:
    register_simulated_prices(include_litellm=False)
    register_simulated_prices(include_litellm=False)
    lm = make_lm(server, "sim-qa-large")
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="What is the capital of Norway?")
    assert_usage_and_cost(lm, "sim-qa-large")


def test_demos_improve_accuracy(server: SimulatedModelServer) -> None:
    small = make_lm(server, "sim-qa-small")
    without_demos, with_demos = accuracy(small, 0), accuracy(small, 4)
    assert 0.50 <= without_demos <= 0.60
    assert 0.85 <= with_demos <= 0.95
    assert with_demos - without_demos >= 0.20

    large = make_lm(server, "sim-qa-large")
    assert accuracy(large, 0) == pytest.approx(0.80)
    assert accuracy(large, 4) >= 0.95


def test_same_question_same_answer(server: SimulatedModelServer) -> None:
    lm = make_lm(server)
    before = server.request_count
    with dspy.context(lm=lm):
        answers = {
            dspy.Predict("question -> answer")(question="What is 12 times 12?").answer
            for _ in range(2)
        }
    assert server.request_count == before + 2  # really asked twice, not cached
    assert len(answers) == 1


def test_json_adapter_is_answered_with_json(server: SimulatedModelServer) -> None:
    lm = make_lm(server, "sim-qa-large")
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        result = dspy.ChainOfThought("question -> answer, confidence: float")(
            question="What is the capital of Canada?"
        )
    assert result.answer == "Ottawa"
    assert isinstance(result.confidence, float)
    assert json.loads(lm.history[-1]["outputs"][0])["answer"] == "Ottawa"


def test_fail_token_makes_the_dspy_call_raise(server: SimulatedModelServer) -> None:
    lm = make_lm(server)
    errors_before = server.error_count
    with dspy.context(lm=lm), pytest.raises(dspy.LMServerError, match="Simulated server error"):
        dspy.Predict("question -> answer")(question=f"What is the capital of Italy? {FAIL_TOKEN}")
    assert server.error_count == errors_before + 1
    assert lm.history == []  # DSPy records no history entry for a failed call


def test_slow_token_delays_the_answer(server: SimulatedModelServer) -> None:
    lm = make_lm(server)
    started = time.perf_counter()
    with dspy.context(lm=lm):
        result = dspy.Predict("question -> answer")(
            question=f"{SLOW_TOKEN} What is the capital of Japan?"
        )
    assert time.perf_counter() - started >= 0.2
    assert result.answer in {"Tokyo", "Kyoto"}


def test_wire_format(server: SimulatedModelServer) -> None:
    with httpx.Client(base_url=server.api_base, timeout=5) as client:
        models = client.get("/models").json()
        assert {m["id"] for m in models["data"]} == set(SIMULATED_MODELS)

        body = {
            "model": "sim-qa-small",
            "messages": [{"role": "user", "content": "What is the capital of Egypt?"}],
        }
        reply = client.post("/chat/completions", json=body)
        assert server.last_auth_header_present is False
        data = reply.json()
        assert data["object"] == "chat.completion"
        assert data["model"] == "sim-qa-small"
        assert data["choices"][0]["finish_reason"] == "stop"
        assert data["choices"][0]["message"]["content"] in {"Cairo", "Alexandria"}
        assert data["usage"]["total_tokens"] > 0

        failed = client.post(
            "/chat/completions",
            json={**body, "messages": [{"role": "user", "content": f"x {FAIL_TOKEN}"}]},
            headers={"Authorization": "Bearer sk-secret"},
        )
        assert failed.status_code == 500
        assert failed.json()["error"]["type"] == "server_error"
        assert server.last_auth_header_present is True

        unknown = client.post("/chat/completions", json={**body, "model": "gpt-4o"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"

        streamed = client.post(
            "/chat/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        )
        lines = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == data["choices"][0]["message"]["content"]
        assert chunks[-1]["usage"] == data["usage"]
