"""Replay: recorded predictions re-run from the record (exactly) or live (counterfactual)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.utils.dummies import DummyLM

import dspy_ledger
from commands.replay import ReplayReport
from dspy_ledger.demo import FAILING_QUESTION, run_demo
from dspy_ledger.simulated_model import (
    SimulatedModelServer,
    expected_cost,
    register_simulated_prices,
    simulated_answer,
)
from ledger.errors import InvalidInputError
from tests import replay_programs
from tests.helpers import only

DEMO = "dspy_ledger.demo:build_program"
PRODUCTION = 12  # production predictions the demo records (index 5 fails)


def _record_demo(url: str) -> None:
    with dspy_ledger.open(url) as ledger:
        run_demo(ledger, production_predictions=PRODUCTION)


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite ledger holding the demo's record, made once for the module."""
    path = tmp_path_factory.mktemp("demo") / "ledger.db"
    _record_demo(f"sqlite:///{path}")
    return path


@pytest.fixture
def demo_ledger(demo_file: Path, tmp_path: Path) -> Iterator[dspy_ledger.Ledger]:
    """A private copy of the demo's ledger, open."""
    copy = tmp_path / "ledger.db"
    shutil.copy(demo_file, copy)
    with dspy_ledger.open(f"sqlite:///{copy}") as ledger:
        yield ledger


def _replay_events(ledger: dspy_ledger.Ledger, report: ReplayReport) -> list[Any]:
    return ledger.stream(report.replay_id)


def _production(ledger: dspy_ledger.Ledger) -> dict[str, dict[str, Any]]:
    return {
        e.stream_id: e.data
        for e in ledger.events()
        if e.type == "PredictionStarted" and e.data["context"] == "production"
    }


def test_recorded_replay_of_the_demo_is_identical_and_recorded(ledger_url: str) -> None:
    _record_demo(ledger_url)
    with dspy_ledger.open(ledger_url) as ledger:
        production = _production(ledger)
        report = ledger.replay(DEMO)
        events = _replay_events(ledger, report)
        failed = [r for r in report.results if r.recorded_status == "failed"]
        assert len(failed) == 1 and "Simulated server error" in str(failed[0].error)
        # The failure was replayed from the record, and recorded as a failure again.
        assert ledger.stream(str(failed[0].replay_prediction_id))[-1].type == "PredictionFailed"
        replayed = {
            e.stream_id: e.data
            for e in ledger.events()
            if e.type == "PredictionStarted" and e.data["context"] == f"replay:{report.replay_id}"
        }
        served = [
            e.data for e in ledger.events() if e.type == "ModelExecuted" and e.stream_id in replayed
        ]
    # The record answered every LM call: no model was reached, no token spent.
    assert len(served) == PRODUCTION
    assert {call["model"] for call in served} == {"ledger-replay/recorded"}
    assert not any(call["usage"].get("prompt_tokens") for call in served)
    assert report.totals.predictions == len(production) == PRODUCTION
    assert report.totals.exact_match_rate == 1.0
    assert {r.verdict for r in report.results} == {"identical"}
    assert [e.type for e in events] == [
        "ReplayStarted",
        *["PredictionReplayed"] * PRODUCTION,
        "ReplayCompleted",
    ]
    verdicts = {e.data["original_prediction_id"]: e.data for e in events[1:-1]}
    assert set(verdicts) == set(production)
    # Each replay prediction is recorded under replay:<id>, with the same inputs.
    assert {v["replay_prediction_id"] for v in verdicts.values()} == set(replayed)
    for original, verdict in verdicts.items():
        assert replayed[verdict["replay_prediction_id"]]["inputs"] == production[original]["inputs"]
    assert events[-1].data["totals"]["identical"] == PRODUCTION
    # Nothing was billed: every answer came from the record.
    assert report.totals.cost_after_usd == 0.0 < report.totals.cost_before_usd


def test_changed_instructions_make_every_prediction_different_with_the_prompt_diff(
    demo_ledger: dspy_ledger.Ledger,
) -> None:
    baseline = next(e for e in demo_ledger.events() if e.type == "EvaluationStarted")
    version = baseline.data["program_version_id"]
    unchanged = demo_ledger.replay(DEMO, version=version, context=None, program_version="current")
    reworded = demo_ledger.replay(
        "tests.replay_programs:build_reworded",
        version=version,
        context=None,
        program_version="current",
    )
    assert unchanged.totals.predictions == reworded.totals.predictions >= 20
    assert unchanged.totals.identical == unchanged.totals.predictions
    assert reworded.totals.different == reworded.totals.predictions
    for result in reworded.results:
        assert result.divergence is not None and result.divergence["kind"] == "lm"
        prompt_diff = result.divergence["request_diff"]
        assert "+        Answer with a single word." in prompt_diff
        assert "-        Given the fields `question`, produce the fields `answer`." in prompt_diff


def test_live_replay_against_a_second_model_reports_differences_and_costs(
    demo_ledger: dspy_ledger.Ledger,
) -> None:
    production = _production(demo_ledger)
    register_simulated_prices(include_litellm=False)
    with SimulatedModelServer() as server:
        lm = dspy.LM(
            "openai/sim-qa-large",
            api_base=server.api_base,
            api_key="sk-sim",
            cache=False,
            num_retries=0,
        )
        report = demo_ledger.replay(DEMO, lm=lm, metric="dspy_ledger.demo:exact_match")
        assert server.request_count == PRODUCTION
    calls = {
        e.stream_id: e.data
        for e in demo_ledger.events()
        if e.type == "ModelExecuted" and e.data["model"] == "openai/sim-qa-large"
    }
    by_id = {r.original_prediction_id: r for r in report.results}
    for prediction_id, started in production.items():
        result = by_id[prediction_id]
        question = started["inputs"]["question"]
        if question == FAILING_QUESTION:
            assert result.verdict == "failed"
            continue
        large = simulated_answer("sim-qa-large", question, with_demos=True)
        small = simulated_answer("sim-qa-small", question, with_demos=True)
        answer_diff = [d for d in result.diff if d.field == "answer"]
        assert result.verdict == "different"  # the reasoning names the model
        assert bool(answer_diff) == (large != small)
        assert result.replayed_outputs is not None
        assert result.replayed_outputs["answer"] == large
        call = calls[str(result.replay_prediction_id)]
        usage = call["usage"]
        cost = expected_cost("sim-qa-large", usage["prompt_tokens"], usage["completion_tokens"])
        assert result.cost_after_usd == pytest.approx(cost)
    large_totals = next(m for m in report.totals.by_model if m.model == "openai/sim-qa-large")
    assert large_totals.calls_after == PRODUCTION and large_totals.calls_before == 0
    assert report.totals.cost_delta_usd == pytest.approx(
        report.totals.cost_after_usd - report.totals.cost_before_usd
    )
    assert report.totals.cost_after_usd > 10 * report.totals.cost_before_usd
    assert report.totals.metric_after is not None and report.totals.metric_before is not None
    assert report.totals.metric_after >= report.totals.metric_before


def test_live_replay_of_the_baseline_on_the_compiled_version_scores_like_its_evaluation(
    demo_ledger: dspy_ledger.Ledger,
) -> None:
    evaluations = only(list(demo_ledger.events()), "EvaluationCompleted")
    baseline, compiled = evaluations[0], evaluations[-1]
    register_simulated_prices(include_litellm=False)
    with SimulatedModelServer() as server:
        lm = dspy.LM("openai/sim-qa-small", api_base=server.api_base, api_key="sk-sim", cache=False)
        report = demo_ledger.replay(
            DEMO,
            version=baseline["program_version_id"],
            context=None,
            lm=lm,
            program_version=compiled["program_version_id"],
            metric="dspy_ledger.demo:exact_match",
            threads=2,
        )
    # The devset's labels come from the recorded dataset; the counterfactual (the
    # compiled version on the baseline's traffic) scores what the compiled program did.
    assert report.totals.predictions == len(baseline["results"]) == 20
    assert report.totals.metric_before == pytest.approx(baseline["score"] / 100)
    assert report.totals.metric_after == pytest.approx(compiled["score"] / 100)
    assert report.totals.metric_after > report.totals.metric_before


def test_threaded_recorded_replay_matches_each_prediction_to_its_own_record(
    ledger_url: str,
) -> None:
    _record_demo(ledger_url)
    with dspy_ledger.open(ledger_url, durability="async") as ledger:
        report = ledger.replay(DEMO, threads=4, context=None)
        completed = only(ledger.stream(report.replay_id), "ReplayCompleted")
    # Evaluations, the compile's bootstrapping and production: several versions.
    assert report.totals.predictions == 20 + 20 + PRODUCTION + 5
    assert len({r.program_version_id for r in report.results}) >= 2
    assert report.totals.identical == report.totals.predictions
    replay_ids = [r.replay_prediction_id for r in report.results]
    assert None not in replay_ids and len(set(replay_ids)) == len(replay_ids)
    assert completed[0]["totals"] == report.totals.model_dump(mode="json")


def test_react_tools_are_served_from_the_record(tmp_path: Path) -> None:
    answers = [
        {"next_thought": "look", "next_tool_name": "lookup_capital",
         "next_tool_args": {"country": "France"}},
        {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "the tool said so", "answer": "Paris"},
    ]  # fmt: skip
    with dspy_ledger.open(f"sqlite:///{tmp_path}/l.db") as ledger:
        ledger.instrument()
        with dspy.context(lm=DummyLM(answers)):
            replay_programs.SHARED_AGENT(question="Capital of France?")
        ledger.flush()
        calls_before = len(replay_programs.TOOL_CALLS)
        report = ledger.replay("tests.replay_programs:shared_agent")
        replayed = ledger.stream(str(report.results[0].replay_prediction_id))
    assert report.totals.identical == 1
    assert len(replay_programs.TOOL_CALLS) == calls_before  # the real tool never ran
    # The application's own agent was left as it was: the replay ran on a copy.
    tool = replay_programs.SHARED_AGENT.tools["lookup_capital"]
    assert tool.func is replay_programs.lookup_capital
    tree = replayed[-1].data["call_tree"]
    tools = [n for n in _nodes(tree) if n["kind"] == "tool"]
    assert [(t["name"], t.get("result")) for t in tools] == [
        ("lookup_capital", "Paris"),
        ("finish", "Completed."),
    ]


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("children", []):
        yield from _nodes(child)


def test_an_async_program_is_replayed_through_acall(tmp_path: Path) -> None:
    with dspy_ledger.open(f"sqlite:///{tmp_path}/l.db") as ledger:
        ledger.instrument()
        program = replay_programs.AsyncQA()
        with dspy.context(lm=DummyLM([{"answer": "Tokyo"}, {"answer": "Paris"}])):
            asyncio.run(program.acall(question="Capital of Japan?"))
            asyncio.run(program.acall(question="Capital of France?"))
        ledger.flush()
        # No --program: the recorded module path (the class) still imports.
        report = ledger.replay(threads=2)

        async def from_a_running_loop() -> ReplayReport:
            return ledger.replay("tests.replay_programs:AsyncQA")

        inside_a_loop = asyncio.run(from_a_running_loop())
    assert report.totals.identical == 2 == inside_a_loop.totals.identical
    assert sorted(str((r.replayed_outputs or {}).get("answer")) for r in report.results) == [
        "Paris",
        "Tokyo",
    ]


def test_calls_made_in_dspy_parallel_threads_are_matched_by_content(tmp_path: Path) -> None:
    answers = {f"Capital of {c}?": {"answer": capital} for c, capital in [
        ("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Chad", "N'Djamena"),
    ]}  # fmt: skip
    with dspy_ledger.open(f"sqlite:///{tmp_path}/l.db") as ledger:
        ledger.instrument()
        with dspy.context(lm=DummyLM(answers)):
            replay_programs.ParallelQA()(questions=list(answers))
        ledger.flush()
        report = ledger.replay(threads=2)  # the recorded module path, a class
    assert report.totals.identical == 1
    assert report.results[0].replayed_outputs == {
        "answers": ["Paris", "Tokyo", "Lima", "N'Djamena"]
    }


def test_bad_input_is_reported_per_prediction_and_the_rest_continues(
    demo_ledger: dspy_ledger.Ledger,
) -> None:
    production = list(_production(demo_ledger))
    unknown = "00000000-0000-0000-0000-000000000000"
    report = demo_ledger.replay(
        DEMO,
        prediction_ids=[production[0], unknown, "not-an-id", production[1]],
        metric="tests.replay_programs:raising_metric",
    )
    by_id = {r.original_prediction_id: r for r in report.results}
    assert by_id[production[0]].verdict == by_id[production[1]].verdict == "identical"
    assert by_id[unknown].verdict == "failed" and "No prediction" in str(by_id[unknown].error)
    assert "is not a prediction id" in str(by_id["not-an-id"].error)
    assert "the metric is broken" in str(by_id[production[0]].metric_error)
    assert report.totals.metric_errors == 2 and not report.all_identical
    renamed = demo_ledger.replay("tests.replay_programs:build_renamed")
    assert renamed.totals.failed == renamed.totals.predictions == PRODUCTION
    assert "no field 'question' any more" in str(renamed.results[0].error)


@pytest.mark.parametrize(
    ("program", "phrase"),
    [
        ("tests.no_such_module:build", "does not import"),
        ("tests.replay_programs:build_not_a_module", "not a DSPy module"),
        ("no-colon", "must look like package.module:name"),
    ],
)
def test_a_program_that_cannot_be_built_stops_the_replay_with_one_sentence(
    demo_ledger: dspy_ledger.Ledger, program: str, phrase: str
) -> None:
    with pytest.raises(InvalidInputError, match=phrase):
        demo_ledger.replay(program)
    assert not [e for e in demo_ledger.events() if e.type == "ReplayStarted"]


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        ({"version": "v1"}, "is not a program version id"),
        ({"program_version": "nope"}, "must be recorded, current or a version id"),
        ({"threads": 0}, "threads must be between 1 and 256"),
    ],
)
def test_malformed_options_stop_the_replay_before_it_starts(
    demo_ledger: dspy_ledger.Ledger, options: dict[str, Any], phrase: str
) -> None:
    with pytest.raises(InvalidInputError, match=phrase):
        demo_ledger.replay(DEMO, **options)
    assert only(list(demo_ledger.events()), "ReplayStarted") == []


def test_cli_exit_code_says_whether_everything_matched(demo_file: Path, tmp_path: Path) -> None:
    from tests.test_cli import cli

    copy = tmp_path / "ledger.db"
    shutil.copy(demo_file, copy)
    db = ["--db", f"sqlite:///{copy}"]
    same = cli("replay", *db, "--program", DEMO, "--json")
    assert same.returncode == 0, same.stderr
    report = json.loads(same.stdout)
    assert report["totals"]["exact_match_rate"] == 1.0
    with dspy_ledger.open(f"sqlite:///{copy}") as ledger:
        baseline = next(e for e in ledger.events() if e.type == "EvaluationStarted")
        # The command records asynchronously; once it has reported, every prediction it
        # made is committed, and the verdicts name them.
        made = [r["replay_prediction_id"] for r in report["results"]]
        assert len(made) == PRODUCTION and all(made)
        assert all(ledger.stream(made_id)[-1].type.startswith("Prediction") for made_id in made)
        assert ledger.stream(report["replay_id"])[-1].type == "ReplayCompleted"
    changed = cli(
        "replay", *db, "--program", "tests.replay_programs:build_reworded",
        "--program-version", "current", "--context", "any",
        "--version", baseline.data["program_version_id"],
    )  # fmt: skip
    assert changed.returncode == 6, changed.stderr
    assert "Answer with a single word." in changed.stdout
    assert "20 predictions: 0 identical, 20 different" in changed.stdout
    broken = cli("replay", *db, "--program", "tests.no_such_module:build")
    assert broken.returncode == 2
    assert broken.stderr.strip().splitlines()[-1].startswith("dspy-ledger: The program")
    assert "Traceback" not in broken.stderr
