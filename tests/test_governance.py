"""Governance: policies, budgets and rate limits, recorded as events and enforced.

The rules' decisions are pure and tested directly; enforcement runs DSPy's real LM
path against the simulated model server, whose request count proves a refused call
sends nothing. Budgets across processes run real processes against PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dspy
import psycopg
import psycopg.sql
import pytest

import dspy_ledger
from commands.governance.rules import Rulebook, window_key
from dspy_ledger import views
from dspy_ledger.cli import app
from dspy_ledger.cli.errors import run_app
from dspy_ledger.simulated_model import SimulatedModelServer
from ledger.domain.governance import GovernanceRules, check_pattern
from ledger.errors import InvalidInputError
from tests.conftest import POSTGRES_URL
from tests.helpers import events_of, only
from tests.test_cli import cli

WORKER = Path(__file__).with_name("governance_worker.py")
SMALL = "openai/sim-qa-small"
LARGE = "openai/sim-qa-large"

#: One change to the rules: the GovernanceRules method and its arguments.
Change = tuple[str, dict[str, object]]


def make_lm(server: SimulatedModelServer, model: str = SMALL) -> dspy.LM:
    return dspy.LM(model, api_base=server.api_base, api_key="sk-test", cache=False, num_retries=0)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[dspy_ledger.Ledger]:
    opened = dspy_ledger.open(ledger_url, actor="alice", enforce=True)
    opened.instrument()
    yield opened
    opened.close()


def rules_from(*changes: Change) -> Rulebook:
    """A rulebook folded from real events of a rules stream."""
    rules = GovernanceRules.start(actor="admin")
    for method, fields in changes:
        getattr(rules, method)(actor="admin", **fields)
    return Rulebook.fold(rules.collect_events())


def policy(
    action: str, subject: str, models: str, kind: str = "actor"
) -> tuple[str, dict[str, object]]:
    rule_id = f"{action}-{subject}-{models}"
    fields = {"rule_id": rule_id, "action": action, "principal_kind": kind, "principal": subject}
    return ("change_policy", {**fields, "models": models})


# -- the decisions (pure) --------------------------------------------------------------


def test_a_matching_deny_wins_over_any_allow() -> None:
    book = rules_from(policy("allow", "*", "openai/*"), policy("deny", "bob", "*large"))
    assert book.decide("alice", LARGE).allowed
    decision = book.decide("bob", LARGE)
    assert not decision.allowed and decision.rule is not None
    assert decision.rule.effect == "deny" and "bob" in decision.reason
    assert book.decide("bob", SMALL).allowed


def test_models_are_open_until_the_first_allow_rule_then_closed_to_the_rest() -> None:
    assert rules_from(policy("deny", "bob", "*")).decide("alice", SMALL).allowed
    book = rules_from(policy("allow", "ci-*", "openai/*"))
    assert book.decide("ci-nightly", SMALL).allowed
    refused = book.decide("alice", SMALL)
    assert not refused.allowed and "No policy allows 'alice'" in refused.reason
    assert not book.decide("ci-nightly", "anthropic/claude").allowed


def test_role_rules_cover_the_members_of_the_role_while_they_hold_it() -> None:
    grant = ("assign_role", {"member_actor": "carol", "role": "analyst", "member": True})
    leave = ("assign_role", {"member_actor": "carol", "role": "analyst", "member": False})
    allow = policy("allow", "analyst", "*small", kind="role")
    assert rules_from(allow, grant).decide("carol", SMALL).allowed
    assert not rules_from(allow, grant).decide("dave", SMALL).allowed
    assert not rules_from(allow, grant, leave).decide("carol", SMALL).allowed


def test_removing_a_rule_or_a_budget_takes_it_out_of_force() -> None:
    allow = policy("allow", "*", "*small")
    remove = ("change_policy", {**allow[1], "action": "remove"})
    budget = {"scope_kind": "actor", "scope": "alice", "period": "day"}
    book = rules_from(
        allow,
        remove,
        ("set_budget", {**budget, "limit_usd": 1.0}),
        ("set_budget", {**budget, "limit_usd": None}),
    )
    assert book.policies == {} and book.budgets == {}
    assert book.decide("anyone", LARGE).allowed


def test_budgets_and_rate_limits_apply_to_the_actors_programs_and_models_they_name() -> None:
    book = rules_from(
        ("set_budget", {"scope_kind": "actor", "scope": "alice", "period": "day", "limit_usd": 1}),
        ("set_budget", {"scope_kind": "program", "scope": "QA", "period": "month", "limit_usd": 9}),
        ("set_rate_limit", {"actors": "a*", "models": "*large", "calls_per_minute": 2}),
    )
    assert {b.scope for b in book.budgets_for("alice", "QA")} == {"alice", "QA"}
    assert [b.scope for b in book.budgets_for("bob", None)] == []
    assert [r.calls_per_minute for r in book.rate_limits_for("alice", LARGE)] == [2]
    assert book.rate_limits_for("alice", SMALL) == book.rate_limits_for("bob", LARGE) == []


def test_the_rules_covering_a_model_or_an_actor_are_who_could_use_it() -> None:
    book = rules_from(
        policy("allow", "ci-*", "openai/*"),
        policy("deny", "analyst", "*large", kind="role"),
        ("assign_role", {"member_actor": "carol", "role": "analyst", "member": True}),
        ("set_budget", {"scope_kind": "actor", "scope": "carol", "period": "day", "limit_usd": 1}),
        ("set_rate_limit", {"actors": "ci-*", "models": "*small", "calls_per_minute": 9}),
    )
    policies, _, limits = book.covering(model=LARGE)
    assert sorted(p.rule_id for p in policies) == ["allow-ci-*-openai/*", "deny-analyst-*large"]
    assert limits == []
    policies, budgets, limits = book.covering(actor="carol")
    assert [p.effect for p in policies] == ["deny"] and [b.scope for b in budgets] == ["carol"]
    policies, budgets, limits = book.covering(actor="ci-1", model=SMALL)
    assert [p.effect for p in policies] == ["allow"] and budgets == []
    assert [r.calls_per_minute for r in limits] == [9]


def test_windows_start_at_the_utc_minute_day_and_month() -> None:
    at = datetime(2025, 3, 14, 15, 9, 26, 535, tzinfo=UTC)
    assert window_key("minute", at) == "2025-03-14T15:09:00Z"
    assert window_key("day", at) == "2025-03-14T00:00:00Z"
    assert window_key("month", at) == "2025-03-01T00:00:00Z"
    plus_two = at.astimezone(tz=UTC) + timedelta(hours=9)  # past midnight UTC
    assert window_key("day", plus_two) == "2025-03-15T00:00:00Z"


@pytest.mark.parametrize("bad", ["", "  ", "gpt-4[o", "gpt]4", "two words", "tab\there"])
def test_a_malformed_pattern_is_refused_with_a_sentence(bad: str) -> None:
    with pytest.raises(InvalidInputError, match="pattern"):
        check_pattern(bad, "model")
    assert check_pattern(" openai/gpt-4[o0-9]* ", "model") == "openai/gpt-4[o0-9]*"


@pytest.mark.parametrize("limit", [-0.01, float("nan"), float("inf")])
def test_a_negative_or_infinite_budget_is_refused(limit: float) -> None:
    with pytest.raises(InvalidInputError, match="finite number of USD >= 0"):
        rules_from(
            (
                "set_budget",
                {"scope_kind": "actor", "scope": "a", "period": "day", "limit_usd": limit},
            )
        )


# -- the rules as of each moment (both backends) -----------------------------------------


def test_who_could_use_a_model_is_answered_as_of_each_moment(ledger: dspy_ledger.Ledger) -> None:
    moments = [datetime.now(UTC)]

    def changed() -> None:
        time.sleep(0.01)
        moments.append(datetime.now(UTC))
        time.sleep(0.01)

    ledger.allow("openai/*", actor="alice")
    changed()
    rule = ledger.deny("*large", actor="alice")
    changed()
    ledger.set_budget(2.5, actor="alice", period="month")
    changed()
    ledger.remove_policy(rule)
    ledger.set_rate_limit(30, actor="a*", model="*large")
    changed()

    def answer(at: datetime) -> tuple[bool, bool, list[float], list[int]]:
        report = ledger.policies(at, actor="alice", model=LARGE)
        assert report.access is not None
        small = ledger.policies(at, actor="alice", model=SMALL).access
        assert small is not None
        budgets = [b.limit_usd for b in report.access.budgets]
        limits = [r.calls_per_minute for r in report.access.rate_limits]
        return small.allowed, report.access.allowed, budgets, limits

    assert [answer(at) for at in moments] == [
        (True, True, [], []),  # before any rule: open
        (True, True, [], []),  # alice allowed openai/*
        (True, False, [], []),  # ... but denied the large model
        (True, False, [2.5], []),  # with a monthly budget
        (True, True, [2.5], [30]),  # deny withdrawn, rate limited instead
    ]
    now = ledger.policies()
    assert now.rules_version == 6 and len(now.policies) == 1
    assert {p.set_by for p in now.policies} == {"alice"}


# -- enforcement at the LM call (both backends) -------------------------------------------


def test_a_denied_call_sends_nothing_raises_and_is_recorded(
    ledger: dspy_ledger.Ledger, server: SimulatedModelServer
) -> None:
    lm = make_lm(server)
    program = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        program(question="What is the capital of France?")
        ledger.deny("openai/sim-*", actor="bob")
        sent = server.request_count
        with ledger.acting_as("bob"), pytest.raises(dspy_ledger.PolicyViolation) as refused:
            program(question="What is the capital of France?")
        assert server.request_count == sent  # nothing reached the model
        program(question="What is the capital of France?")  # alice still may
    assert isinstance(refused.value, dspy_ledger.GovernanceError)
    assert (refused.value.actor, refused.value.model) == ("bob", SMALL)
    ledger.flush()
    events = events_of(ledger)
    [denied] = [e for e in events if e.type == "ExecutionDenied"]
    assert denied.actor == "bob" and denied.stream_type == "ExecutionDenial"
    assert denied.data["reason"] == "policy" and denied.data["model"] == SMALL
    assert denied.data["program_name"] == "Predict"
    assert denied.data["message"] == str(refused.value)
    failed = only(events, "PredictionFailed")
    assert [f["error_type"] for f in failed] == ["PolicyViolation"]
    # The refusal names a node of the failed prediction's call tree: the module that
    # made the call, or the refused LM call itself (when recording wraps governance).
    assert denied.data["details"]["dspy_call_id"] in call_ids(failed[0]["call_tree"])
    assert len(only(events, "ModelExecuted")) == 2  # the refused call is no model execution
    # The views skip and count what they do not know, and still add up.
    views.update_views(ledger)
    assert views.cost_report(ledger).total.calls == 2
    status = {s.view: s.skipped_events for s in views.views_status(ledger)}
    assert status["cost"]["ExecutionDenied"] == status["audit"]["ExecutionDenied"] == 1


def test_a_budget_lets_calls_through_until_it_is_spent(
    ledger: dspy_ledger.Ledger, server: SimulatedModelServer
) -> None:
    lm = make_lm(server)
    lm("What is the capital of France?")  # before any budget: not counted
    one_call = float(lm.history[-1]["cost"])
    ledger.set_budget(one_call * 2.5, actor="alice")
    sent = server.request_count
    made = 0
    with pytest.raises(dspy_ledger.BudgetExceeded, match="daily budget of actor 'alice'"):
        for _ in range(10):
            lm("What is the capital of France?")
            made += 1
    assert made == 3  # 0, 1 and 2 calls' worth spent were under 2.5: the third overshoots
    assert server.request_count == sent + 3
    ledger.flush()
    events = events_of(ledger)
    recorded = [e["cost_usd"] for e in only(events, "ModelExecuted")][1:]
    [budget] = ledger.policies().budgets
    assert budget.spent_usd == pytest.approx(sum(recorded))
    [denied] = only(events, "ExecutionDenied")
    assert denied["reason"] == "budget"
    assert denied["details"]["spent_usd"] == pytest.approx(sum(recorded))


def test_a_program_budget_counts_only_calls_inside_that_program(
    ledger: dspy_ledger.Ledger, server: SimulatedModelServer
) -> None:
    lm = make_lm(server)
    ledger.set_budget(0.0, program="ChainOfThought")
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="What is the capital of France?")
        sent = server.request_count
        with pytest.raises(dspy_ledger.BudgetExceeded, match="program 'ChainOfThought'"):
            dspy.ChainOfThought("question -> answer")(question="What is 2 + 2?")
    assert server.request_count == sent


def test_a_rate_limit_refuses_the_call_over_the_limit_in_the_minute(
    ledger: dspy_ledger.Ledger, server: SimulatedModelServer
) -> None:
    if datetime.now(UTC).second >= 55:  # keep the three calls inside one minute
        time.sleep(61 - datetime.now(UTC).second)
    lm, large = make_lm(server), make_lm(server, LARGE)
    ledger.set_rate_limit(2, actor="alice", model="*small")
    lm("What is the capital of France?")
    lm("What is the capital of France?")
    sent = server.request_count
    with pytest.raises(dspy_ledger.RateLimited, match="2 calls to 'openai/sim-qa-small'"):
        lm("What is the capital of France?")
    assert server.request_count == sent
    large("What is the capital of France?")  # another model is not limited
    with ledger.acting_as("bob"):
        lm("What is the capital of France?")  # nor another actor
    assert server.request_count == sent + 2
    assert [d["reason"] for d in only(events_of(ledger), "ExecutionDenied")] == ["rate_limit"]


def test_async_calls_are_refused_before_sending_too(
    ledger: dspy_ledger.Ledger, server: SimulatedModelServer
) -> None:
    import asyncio

    lm = make_lm(server, LARGE)
    ledger.allow("*small", actor="*")
    sent = server.request_count
    with pytest.raises(dspy_ledger.PolicyViolation, match="No policy allows 'alice'"):
        asyncio.run(lm.acall("What is the capital of France?"))
    assert server.request_count == sent


def test_rule_changes_from_another_process_reach_a_running_one(
    ledger_url: str, server: SimulatedModelServer
) -> None:
    with dspy_ledger.open(ledger_url, actor="alice") as running:
        with running.enforce(refresh_seconds=0.2):
            lm = make_lm(server)
            lm("What is the capital of France?")
            done = cli("policy", "deny", "*", "--actor", "alice", "--db", ledger_url)
            assert done.returncode == 0, done.stderr
            time.sleep(0.3)
            with pytest.raises(dspy_ledger.PolicyViolation):
                lm("What is the capital of France?")
        lm("What is the capital of France?")  # enforcement stopped with the block


# -- the command line -----------------------------------------------------------------------


def run_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    """Run ``dspy-ledger ARGS`` in this process, as its entry point does: (code, out, err)."""
    monkeypatch.setattr(sys, "argv", ["dspy-ledger", *args])
    capsys.readouterr()
    try:
        run_app(app)
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["policy", "allow", "gpt-[4", "--actor", "a"], "unbalanced '['"),
        (["policy", "deny", "*", "--actor", "a", "--role", "r"], "exactly one of"),
        (["budget", "set", "--usd", "-1", "--actor", "a"], "finite number of USD >= 0"),
        (["budget", "set", "--usd", "1", "--actor", "a", "--per", "week"], "day, month"),
        (["ratelimit", "set", "--per-minute", "0"], "calls per minute >= 1"),
        (["policy", "list", "--as-of", "last tuesday"], "not an ISO date"),
        (["policy", "remove", "p-missing"], "No policy rule 'p-missing'"),
    ],
)
def test_bad_governance_input_is_one_sentence_and_exit_2(
    sqlite_url: str,
    args: list[str],
    phrase: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with dspy_ledger.open(sqlite_url) as created:
        created.set_budget(1.0, actor="someone")
    code, _, err = run_cli(capsys, monkeypatch, *args, "--db", sqlite_url)
    assert code == 2
    assert phrase in err and "Traceback" not in err
    assert err.count("\n") == 1
    with dspy_ledger.open(sqlite_url) as reopened:  # nothing recorded was lost
        assert [b.scope for b in reopened.policies().budgets] == ["someone"]


def test_the_cli_sets_and_lists_rules_as_json(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = ("--db", sqlite_url)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        code, out, err = run_cli(capsys, monkeypatch, *args)
        return subprocess.CompletedProcess(args, code, out, err)

    assert run("policy", "allow", "openai/*", "--role", "analyst", *db).returncode == 0
    assert run("policy", "role", "carol", "analyst", *db).returncode == 0
    assert (
        run("budget", "set", "--usd", "3", "--program", "QA", "--per", "month", *db).returncode == 0
    )
    assert run("ratelimit", "set", "--per-minute", "5", "--model", "*large", *db).returncode == 0
    listed = run("policy", "list", "--actor", "carol", "--model", LARGE, "--json", *db)
    report = json.loads(listed.stdout)
    assert report["access"]["allowed"] is True and report["access"]["roles"] == ["analyst"]
    assert [r["calls_per_minute"] for r in report["access"]["rate_limits"]] == [5]
    budgets = json.loads(run("budget", "list", "--json", *db).stdout)
    assert [(b["scope"], b["period"], b["limit_usd"]) for b in budgets] == [("QA", "month", 3.0)]
    limits = json.loads(run("ratelimit", "list", "--json", *db).stdout)
    assert [(r["actors"], r["models"]) for r in limits] == [("*", "*large")]
    who = json.loads(run("policy", "list", "--model", "anthropic/claude", "--json", *db).stdout)
    assert who["policies"] == [] and who["access"] is None
    earlier = json.loads(run("policy", "list", "--as-of", "2000-01-01", "--json", *db).stdout)
    assert earlier["policies"] == [] and earlier["rules_version"] == 0


# -- several processes against one budget (PostgreSQL, and one SQLite file) -----------------


def test_processes_sharing_a_ledger_share_one_budget(
    ledger_url: str, server: SimulatedModelServer
) -> None:
    lm = make_lm(server)
    lm("What is the capital of France?")
    one_call = float(lm.history[-1]["cost"])
    limit = one_call * 20.5
    processes = 4
    with dspy_ledger.open(ledger_url, actor="admin") as admin:
        admin.set_budget(limit, actor="shared")
    start_at = time.time() + 3.0  # all start spending together, after their imports
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), ledger_url, server.api_base, str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        for _ in range(processes)
    ]
    results = [json.loads(w.communicate(timeout=240)[0]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    calls = sum(r["calls"] for r in results)
    spent = sum(r["cost_usd"] for r in results)
    with dspy_ledger.open(ledger_url, actor="admin") as reader:
        events = events_of(reader)
        [budget] = reader.policies().budgets
    recorded = [e["cost_usd"] for e in only(events, "ModelExecuted")]
    assert len(recorded) == calls and budget.spent_usd == pytest.approx(sum(recorded))
    assert spent == pytest.approx(sum(recorded))
    # Each process has at most one call in flight when the budget runs out, so the
    # over-spend is under one call per process; every process was then refused.
    assert limit <= spent < limit + processes * one_call * 1.5
    assert len(only(events, "ExecutionDenied")) == processes


def test_threads_of_one_process_share_one_budget(
    ledger: dspy_ledger.Ledger, server: SimulatedModelServer
) -> None:
    lm = make_lm(server)
    lm("What is the capital of France?")
    one_call = float(lm.history[-1]["cost"])
    limit = one_call * 12.5
    threads = 4
    ledger.set_budget(limit, actor="alice")

    def spend(_: int) -> int:
        calls = 0
        try:
            while True:
                lm("What is the capital of France?")
                calls += 1
        except dspy_ledger.BudgetExceeded:
            return calls

    with ThreadPoolExecutor(threads) as pool:
        calls = sum(pool.map(spend, range(threads)))
    ledger.flush()
    [budget] = ledger.policies().budgets
    events = events_of(ledger)
    assert budget.spent_usd == pytest.approx(calls * one_call)
    assert limit <= budget.spent_usd < limit + threads * one_call
    assert len(only(events, "ExecutionDenied")) == threads
    assert len(only(events, "ModelExecuted")) == calls + 1


def test_enforcement_fails_closed_when_the_store_cannot_be_read(
    postgres_url: str, server: SimulatedModelServer
) -> None:
    lm = make_lm(server)
    with dspy_ledger.open(postgres_url, actor="alice") as ledger:
        ledger.set_budget(1.0, actor="alice")
        with ledger.enforce(refresh_seconds=0.0):
            lm("What is the capital of France?")
            schema = postgres_url.rsplit("schema=", 1)[1]
            with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
                connection.execute(
                    psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(psycopg.sql.Identifier(schema))
                )
            sent = server.request_count
            with pytest.raises(dspy_ledger.StoreUnavailableError, match="Cannot use the ledger"):
                lm("What is the capital of France?")
            assert server.request_count == sent


def call_ids(tree: dict[str, object]) -> list[object]:
    """The call ids of every node of a recorded call tree."""
    children = tree.get("children") or []
    assert isinstance(children, list)
    return [tree.get("call_id"), *(i for child in children for i in call_ids(child))]
