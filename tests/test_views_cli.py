"""The view commands as people use them: readable lineage, JSON with --json, --as-of TIME."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from typer.testing import CliRunner

import dspy_ledger
from dspy_ledger import views
from dspy_ledger.cli import app
from ledger.domain import OptimizationRun, Prediction, ProgramVersion
from tests.test_views import T0, record_prediction

runner = CliRunner()


def _compiled_prediction(ledger: dspy_ledger.Ledger) -> uuid.UUID:
    student = ProgramVersion.register(
        program_name="qa", module_path="app.QA", state={}, state_hash="a" * 64, actor="ml"
    )
    run = OptimizationRun.start(
        run_id=uuid.uuid4(),
        optimizer="BootstrapFewShot",
        params={"max_bootstrapped_demos": 4},
        student_version_id=student.id,
        teacher_version_id=None,
        trainset_digest="t" * 64,
        valset_digest=None,
        metric="exact_match",
        context="production",
        actor="ml",
    )
    result = ProgramVersion.register(
        program_name="qa",
        module_path="app.QA",
        state={"demos": 4},
        state_hash="b" * 64,
        parent_version_id=student.id,
        produced_by=run.id,
        actor="ml",
    )
    run.complete(result_version_id=result.id, score=0.9, latency_ms=5.0, actor="ml")
    prediction = Prediction.start(
        prediction_id=uuid.uuid4(),
        program_version_id=result.id,
        program_name="qa",
        inputs={},
        context="production",
        actor="alice",
    )
    ledger.app.save_aggregates(student, run, result, prediction)
    return prediction.id


def test_lineage_prints_a_readable_tree_and_json_with_json(sqlite_url: str) -> None:
    with dspy_ledger.open(sqlite_url, actor="tester") as ledger:
        prediction_id = _compiled_prediction(ledger)
    readable = runner.invoke(app, ["lineage", str(prediction_id), "--db", sqlite_url])
    assert readable.exit_code == 0, readable.output
    assert not readable.stdout.lstrip().startswith("{")
    lines = readable.stdout.splitlines()
    assert f"prediction {prediction_id}" in lines[0]
    assert any("produced by run" in line and "BootstrapFewShot" in line for line in lines)
    assert any("student version" in line for line in lines)
    as_json = runner.invoke(app, ["lineage", str(prediction_id), "--db", sqlite_url, "--json"])
    tree = json.loads(as_json.stdout)
    assert tree["version"]["produced_by"]["optimizer"] == "BootstrapFewShot"
    assert tree["version"]["produced_by"]["student"]["state_hash"] == "a" * 64


def test_as_of_a_time_equals_as_of_the_last_position_at_or_before_it(ledger_url: str) -> None:
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        for day in (0, 1, 1, 2, 3):
            record_prediction(
                ledger, actor="a", calls=[("m1", 0.5, False)], at=T0 + timedelta(days=day)
            )
        moment = T0 + timedelta(days=1, hours=1)
        expected = max(
            e.position or 0 for e in ledger.events() if e.timestamp <= moment.isoformat()
        )
        by_time = views.cost_report(ledger, as_of=moment.isoformat())
        by_position = views.cost_report(ledger, as_of=expected)
        assert by_time.position == expected
        assert by_time.total == by_position.total
        assert by_time.total.calls == 3
