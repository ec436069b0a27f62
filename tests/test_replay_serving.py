"""How a recorded replay serves the record: on DummyLM's route, matched by content.

The replay LM's engine takes an adapter's messages as they are (the route DSPy gives its
own ``DummyLM``), which is also how DSPy records them; a call made with a canonical
``Request`` is matched in the display form DSPy records for it. A replay also pauses and
freezes the garbage collector while it works; the collector must be left as found.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.clients.lm15_boundary import history_messages
from dspy.lm15 import request_from_openai_chat
from dspy.utils.dummies import DummyLM

import dspy_ledger
from commands.replay.recorded_lm import (
    RECORD_SETTING,
    RECORDED_MODEL,
    RecordedAnswersLM,
    ReplayDivergenceError,
    recorded_calls,
)
from dspy_ledger.simulated_model import SimulatedModelServer
from tests import replay_programs

PROGRAM = "dspy_ledger.demo:build_program"
IMAGE_URL = "https://example.com/cat.png"
#: A prompt with an image, as a DSPy adapter writes it (OpenAI's content parts).
WITH_IMAGE = [
    {"role": "system", "content": "Describe the picture."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in it?"},
            {"type": "image_url", "image_url": {"url": IMAGE_URL}},
        ],
    },
]


def test_a_prompt_with_an_image_recorded_from_a_native_lm_replays_identically(
    tmp_path: Path,
) -> None:
    # DSPy records the content parts as the adapter wrote them; a replay that matched
    # the canonical request's form of them (image parts rewritten) would diverge.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with dspy_ledger.open(url) as ledger, SimulatedModelServer() as server:
        lm = dspy.LM("openai/sim-qa-small", api_base=server.api_base, api_key="sk-sim")
        program = replay_programs.build_image_describer()
        with ledger.instrument(), dspy.context(lm=lm):
            program(image=dspy.Image(IMAGE_URL))
        [call] = [e.data for e in ledger.events() if e.type == "ModelExecuted"]
        assert call["messages"][-1]["content"] != "" and not isinstance(
            call["messages"][-1]["content"], str
        )
        report = ledger.replay("tests.replay_programs:build_image_describer")
    assert report.totals.identical == 1, report.results[0].error


def _record(messages: list[dict[str, Any]], answer: str) -> Any:
    call = {"model": "openai/vision", "messages": messages, "outputs": [answer], "error": None}
    return recorded_calls([call], {})


def test_a_canonical_request_is_matched_in_the_form_dspy_records_it() -> None:
    request = request_from_openai_chat({"model": RECORDED_MODEL, "messages": WITH_IMAGE})
    lm = RecordedAnswersLM()
    with dspy.context(**{RECORD_SETTING: _record(history_messages(request), "A cat.")}):
        assert lm(request).text == "A cat."


def test_a_request_the_record_holds_no_answer_to_is_a_divergence() -> None:
    lm = RecordedAnswersLM()
    record = _record(WITH_IMAGE, "A cat.")
    other = [WITH_IMAGE[0], {"role": "user", "content": "Something else entirely."}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # messages= is DSPy 3.4's legacy
        with dspy.context(**{RECORD_SETTING: record}), pytest.raises(Exception) as raised:
            lm(messages=other)
    error: BaseException | None = raised.value
    while error is not None and not isinstance(error, ReplayDivergenceError):
        error = error.__cause__ or error.__context__
    assert error is not None
    assert [d["kind"] for d in record.divergences] == ["lm"]


@pytest.fixture
def recorded_ledger(tmp_path: Path) -> Iterator[dspy_ledger.Ledger]:
    """A ledger holding three predictions of the demo's program against DummyLM."""
    from dspy_ledger.demo import build_program

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    answers = [{"reasoning": f"Because {i}.", "answer": f"answer {i}"} for i in range(3)]
    with dspy_ledger.open(url) as ledger:
        program = build_program()
        with ledger.instrument(), dspy.context(lm=DummyLM(answers)):
            for i in range(3):
                program(question=f"Question {i}?")
        yield ledger


def test_the_replay_lm_takes_dspys_own_route_without_a_deprecation_warning(
    recorded_ledger: dspy_ledger.Ledger,
) -> None:
    # A custom engine's own complete_legacy would be DSPy's deprecated shortcut, and a
    # canonical request would cost a conversion there and back: the engine inherits
    # DummyEngine's route and changes only where the answers come from.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        report = recorded_ledger.replay(PROGRAM)
    assert report.totals.exact_match_rate == 1.0


def test_a_replay_leaves_the_garbage_collector_as_it_found_it(
    recorded_ledger: dspy_ledger.Ledger,
) -> None:
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    report = recorded_ledger.replay(PROGRAM)
    assert report.totals.identical == 3
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_replay_leaves_objects_someone_else_froze_frozen(
    recorded_ledger: dspy_ledger.Ledger,
) -> None:
    gc.freeze()  # as a server does before it forks
    try:
        frozen = gc.get_freeze_count()
        report = recorded_ledger.replay(PROGRAM)
        assert report.totals.identical == 3
        # Still frozen (objects that died meanwhile have left the count).
        assert frozen * 0.9 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    "output",
    [
        "[[ ## answer ## ]]\nParis",
        None,
        {"text": "Paris"},
        {"text": "Paris", "reasoning_content": "The capital of France."},
        {"text": None, "reasoning_content": ""},
    ],
)
def test_an_answer_served_directly_is_what_dspys_route_makes_of_it(output: Any) -> None:
    from dspy.clients.call_result import CallResult

    from commands.replay.recorded_lm import _response, served_output

    [served] = _record(WITH_IMAGE, output).answers.popitem()[1]
    assert served_output(served) == CallResult.native(_response(served)).outputs[0]


def _replayed_lm_calls(ledger: dspy_ledger.Ledger, replay_id: str) -> list[dict[str, Any]]:
    made = {
        e.stream_id
        for e in ledger.events()
        if e.type == "PredictionStarted" and e.data["context"] == f"replay:{replay_id}"
    }
    keep = ("model", "messages", "outputs", "usage", "cost_usd", "response_model", "error")
    calls = [e.data for e in ledger.events() if e.type == "ModelExecuted" and e.stream_id in made]
    return [{key: call[key] for key in keep} for call in calls]


def test_answers_served_directly_are_recorded_as_dspys_route_records_them(
    recorded_ledger: dspy_ledger.Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_route(*_: Any) -> Any:
        raise AssertionError("answered through DSPy's route")

    with monkeypatch.context() as patch:
        patch.setattr("commands.replay.recorded_lm._DSPY_CALL", no_route)
        direct = recorded_ledger.replay(PROGRAM)
    monkeypatch.setattr("commands.replay.recorded_lm._direct_answer", lambda *_: None)
    routed = recorded_ledger.replay(PROGRAM)
    assert direct.totals.identical == routed.totals.identical == 3
    served = _replayed_lm_calls(recorded_ledger, direct.replay_id)
    assert served == _replayed_lm_calls(recorded_ledger, routed.replay_id)
    assert [call["model"] for call in served] == [RECORDED_MODEL] * 3
    assert {call["response_model"] for call in served} == {"dummy"}
    assert all(call["cost_usd"] is None and call["error"] is None for call in served)
    assert all(
        not any(call["usage"].get(k) for k in ("prompt_tokens", "total_tokens")) for call in served
    )
