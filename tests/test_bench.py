"""The benchmark suite runs (quick mode) and writes its results: it cannot rot unseen."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import main as bench_main
from bench.common import POSTGRES_ENV, memory_folder, postgres_base_url

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"section", "name", "value", "unit", "baseline", "ratio", "target"}


def test_quick_run_writes_markdown_and_json(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench-results.json").read_text())
    rows = report["rows"]
    assert report["meta"]["quick"] is True
    assert all(set(item) == ROW_KEYS for item in rows)
    sections = {item["section"] for item in rows}
    assert {
        "1. Recording overhead per prediction",
        "1c. Where async recording's clock time goes (program's hot path)",
        "2. Durable throughput",
        "4. Storage",
    } <= sections
    names = {item["name"] for item in rows}
    assert "async/sqlite (hot path)" in names
    # The clock split measures each step of async recording, with its writer process
    # discarding drafts as well as committing them.
    assert {
        "recorder, drafts encoded for the writer process",
        "async/sqlite, writer process discarding drafts",
    } <= names
    assert "ledger capacity: async/sqlite, 1 thread(s)" in names
    # The events' JSON: the ledger's encoder against the library's, and every state of a
    # recorded prediction written by the ledger's own (none handed to the library's).
    assert any(i["name"].startswith("mapping a prediction's events") for i in rows)
    own = next(i for i in rows if i["name"].startswith("event states the ledger's encoder"))
    assert own["value"] == 1.0
    # Where there is a memory file system, sync recording is also measured with no disk
    # under SQLite's sync: the code's share of sync/sqlite apart from the disk's.
    if memory_folder() is not None:
        assert "sync/sqlite, file in memory (no disk) (hot path)" in names
    # On PostgreSQL, the pool's connection check is timed per commit against the
    # library's pre-ping, and after a restart a caller that does not retry is served.
    if postgres_base_url() is not None:
        commit = next(i for i in rows if i["name"].startswith("commit of 3 events, ledger"))
        assert commit["baseline"] > 0
        assert "after a restart: direct use, ledger's pool (1 of 1 given a connection)" in names
    for item in rows:
        if " minus " in item["name"]:
            # A difference of two medians of a few noisy rounds: it may come out below 0.
            assert math.isfinite(item["value"]), item
        else:
            assert item["value"] > 0, item
        if item["baseline"] is not None:
            assert abs(item["ratio"] - item["value"] / item["baseline"]) < 1e-9
    # Each view's catch-up is timed in a report's batches and in a follower's, against
    # its rebuild (the section fails if a catch-up stops short of the ledger's end).
    for view in ("cost", "accuracy", "lineage", "audit"):
        for size in ("20,000", "500"):
            caught = next(
                i
                for i in rows
                if i["name"] == f"catch up {view} (SQLite), batches of {size} events"
            )
            assert caught["baseline"] > 0
    # Every recorded prediction stores something, and less than a megabyte.
    stored = next(i for i in rows if i["name"] == "sqlite: event rows per prediction")
    assert 200 < stored["value"] < 1_000_000
    # A replay's target is its steady rate (N and 3N predictions), against the bare
    # program's, and every replayed prediction matched its record.
    steady = next(i for i in rows if i["name"].startswith("recorded replay, steady rate"))
    assert steady["target"] and steady["baseline"] > 0
    whole = [i for i in rows if i["name"].startswith("recorded replay, whole run of")]
    assert len(whole) == 2
    exact = next(i for i in rows if i["name"] == "recorded replay exact-match rate")
    assert exact["value"] == 1.0
    # The instruction counts need valgrind and minutes; the quick run still runs each
    # of their variants natively (a failing variant fails the run).
    assert "instructions are counted in the full run only" in result.stdout
    # So are a replay's: its quick run records two predictions and replays them natively.
    assert "replay instructions are counted in the full run only" in result.stdout
    markdown = (tmp_path / "bench-results.md").read_text()
    assert "| async/sqlite (hot path) |" in markdown
    for optional in ("bench.views", "bench.integrity", "bench.replay"):
        if not (ROOT / (optional.replace(".", "/") + ".py")).exists():
            assert f"{optional} is not present; skipped." in result.stdout


def _run_bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def test_an_output_folder_that_cannot_be_written_is_refused_before_measuring(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _run_bench("--quick", "--only", "storage", "--out", str(blocker / "results"))
    assert result.returncode == 2
    assert result.stderr.startswith("bench: cannot write the results to ")
    assert "nothing was measured" in result.stderr
    assert "Traceback" not in result.stderr
    assert "running" not in result.stdout


def test_a_postgres_server_that_does_not_answer_is_named_and_sqlite_measured(
    tmp_path: Path,
) -> None:
    env = {**os.environ, POSTGRES_ENV: "postgresql://bench:secret@127.0.0.1:1/none"}
    result = _run_bench("--quick", "--only", "storage", "--out", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bench: PostgreSQL at postgresql://bench:***@127.0.0.1:1/none did not answer" in (
        result.stdout
    )
    assert "secret" not in result.stdout
    rows = json.loads((tmp_path / "bench-results.json").read_text())["rows"]
    assert rows
    assert all(item["name"].startswith("sqlite") for item in rows)


def _section(folder: Path, name: str, body: str) -> str:
    """A section module named ``name`` in ``folder`` whose ``run`` does ``body``."""
    (folder / f"{name}.py").write_text(f"def run(quick):\n    {body}\n")
    return name


def test_a_failing_section_is_reported_and_the_others_rows_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = _section(tmp_path, "bench_section_that_breaks", "raise RuntimeError('it broke')")
    out = tmp_path / "results"
    status = bench_main(["--quick", "--out", str(out)], sections=(broken, "bench.storage"))
    assert status == 1
    report = json.loads((out / "bench-results.json").read_text())
    assert report["meta"]["failed"] == [broken]
    assert any(item["section"] == "4. Storage" for item in report["rows"])
    assert f"failed and have no rows: {broken}" in (out / "bench-results.md").read_text()
    printed = capsys.readouterr()
    assert "RuntimeError: it broke" in printed.err
    assert f"bench: {broken} failed (traceback above); the other sections go on." in printed.out


def test_ctrl_c_writes_what_was_measured_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    interrupting = _section(tmp_path, "bench_section_interrupted", "raise KeyboardInterrupt")
    out = tmp_path / "results"
    status = bench_main(
        ["--quick", "--out", str(out)], sections=("bench.storage", interrupting, "bench.otel")
    )
    assert status == 130
    report = json.loads((out / "bench-results.json").read_text())
    assert report["meta"]["interrupted"] is True
    sections = {item["section"] for item in report["rows"]}
    assert "4. Storage" in sections
    assert "opentelemetry" not in sections
