"""The command line: the demo's figures come from the ledger; bad input is one sentence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from eventsourcing.persistence import OperationalError

import dspy_ledger
from dspy_ledger.cli.errors import run_app
from ledger.errors import StorageURLError
from ledger.storage import DEFAULT_URL, parse_url, resolve_url


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dspy_ledger.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **(env or {})},
    )


def test_demo_prints_figures_that_match_the_ledger(tmp_path: Path) -> None:
    done = cli("demo", "--json", "--predictions", "20", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (tmp_path / ".dspy-ledger" / "ledger.db").exists()  # the documented default
    exported = cli("export", cwd=tmp_path)
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert summary["events"] == len(events)
    assert summary["predictions"] == kinds.count("PredictionStarted")
    assert summary["failed_predictions"] == kinds.count("PredictionFailed") >= 1
    assert summary["lm_calls"] == kinds.count("ModelExecuted")
    cost = sum(e["data"]["cost_usd"] or 0 for e in events if e["type"] == "ModelExecuted")
    assert summary["total_cost_usd"] == pytest.approx(cost) and cost > 0
    scores = [e["data"]["score"] for e in events if e["type"] == "EvaluationCompleted"]
    assert [summary["accuracy_before"], summary["accuracy_after"]] == scores
    assert summary["accuracy_after"] > summary["accuracy_before"]
    actors = {e["actor"] for e in events if e["type"] == "PredictionStarted"}
    assert {"alice", "bob", "ml-engineer"} <= actors
    stats = json.loads(cli("stats", "--json", cwd=tmp_path).stdout)
    assert stats["events"] == len(events)
    prediction = next(e["stream_id"] for e in events if e["type"] == "PredictionFailed")
    shown = json.loads(cli("show", prediction, "--json", cwd=tmp_path).stdout)
    assert [e["type"] for e in shown][-1] == "PredictionFailed"


@pytest.mark.parametrize(
    ("args", "code", "phrase"),
    [
        (["stats", "--db", "nonsense"], 2, "has no scheme"),
        (["stats", "--db", "mysql://x@y/z"], 2, "not supported"),
        (["stats", "--db", "sqlite:///does/not/exist.db"], 3, "No ledger exists"),
        (
            ["stats", "--db", "postgresql://bob:hunter2@127.0.0.1:1/ledger"],
            3,
            "Cannot use the ledger",
        ),
        (["show", "not-an-id", "--db", "sqlite:///:memory:"], 2, "is not a stream id"),
        (["export", "--format", "xml", "--db", "sqlite:///:memory:"], 2, "Unknown export format"),
    ],
)
def test_bad_input_is_one_sentence_and_a_nonzero_exit(
    tmp_path: Path, args: list[str], code: int, phrase: str
) -> None:
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == code
    assert phrase in done.stderr
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr  # passwords are masked
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_stream_is_reported(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/l.db"
    dspy_ledger.open(url).close()
    done = cli("show", "00000000-0000-0000-0000-000000000000", "--db", url)
    assert done.returncode == 2
    assert "No stream with id" in done.stderr


def test_the_url_comes_from_the_option_then_the_environment_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DSPY_LEDGER_URL", raising=False)
    assert resolve_url(None) == DEFAULT_URL
    monkeypatch.setenv("DSPY_LEDGER_URL", "sqlite:///env.db")
    assert resolve_url(None) == "sqlite:///env.db"
    assert resolve_url("sqlite:///option.db") == "sqlite:///option.db"


def test_store_urls_parse_and_mask_passwords() -> None:
    store = parse_url("postgresql://alice:s3cret@db.example:6543/ledger?schema=audit")
    assert (store.host, store.port, store.user, store.dbname, store.schema) == (
        "db.example",
        6543,
        "alice",
        "ledger",
        "audit",
    )
    assert store.masked == "postgresql://alice:***@db.example:6543/ledger?schema=audit"
    assert parse_url("sqlite:////tmp/x.db").sqlite_path == "/tmp/x.db"
    assert parse_url("sqlite:///rel/x.db").sqlite_path == "rel/x.db"
    for bad in [
        "sqlite://x.db",
        "postgresql://h:5432/",
        "postgresql://h:notaport/db",
        "postgresql://h/db?sslmode=x",
    ]:
        with pytest.raises(StorageURLError):
            parse_url(bad)


def test_the_public_surface_is_deliberate() -> None:
    assert sorted(dspy_ledger.__all__) == sorted(
        [
            "BudgetExceeded",
            "Durability",
            "GovernanceError",
            "Instrumentation",
            "InvalidInputError",
            "Ledger",
            "LedgerError",
            "LedgerNotFoundError",
            "LedgerStats",
            "PolicyViolation",
            "RateLimited",
            "RecordedEvent",
            "RecordingError",
            "StorageURLError",
            "StoreUnavailableError",
            "StreamNotFoundError",
            "__version__",
            "acting_as",
            "open",
        ]
    )
    for name in dspy_ledger.__all__:
        if name not in {"__version__", "Durability"}:  # a version string, a Literal alias
            assert getattr(dspy_ledger, name).__doc__, name


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["feedback"], "Missing argument"),
        (["no-such-command"], "No such command"),
        (["report", "cost", "--no-such-option"], "No such option"),
    ],
)
def test_usage_errors_name_the_problem_without_a_traceback(
    tmp_path: Path, args: list[str], phrase: str
) -> None:
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert phrase in done.stderr
    assert "Traceback" not in done.stderr


def test_a_store_that_fails_during_a_command_is_one_sentence_and_exit_code_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What psycopg reports when the server goes away under a running command.
    app = typer.Typer()

    @app.command()
    def read() -> None:
        msg = (
            "consuming input failed: server closed the connection unexpectedly\n"
            "\tThis probably means the server terminated abnormally"
        )
        raise OperationalError(msg)

    monkeypatch.setattr(sys, "argv", ["dspy-ledger"])
    with pytest.raises(SystemExit) as done:
        run_app(app)
    assert done.value.code == 3
    said = capsys.readouterr().err
    assert said == (
        "dspy-ledger: the ledger's database failed during the command (consuming input "
        "failed: server closed the connection unexpectedly This probably means the server "
        "terminated abnormally); what it had committed is kept.\n"
    )
