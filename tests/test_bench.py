"""The benchmark suite runs (quick mode) and writes its results: it cannot rot unseen."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from bench.common import memory_folder

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
    # Where there is a memory file system, sync recording is also measured with no disk
    # under SQLite's sync: the code's share of sync/sqlite apart from the disk's.
    if memory_folder() is not None:
        assert "sync/sqlite, file in memory (no disk) (hot path)" in names
    for item in rows:
        if " minus " in item["name"]:
            # A difference of two medians of a few noisy rounds: it may come out below 0.
            assert math.isfinite(item["value"]), item
        else:
            assert item["value"] > 0, item
        if item["baseline"] is not None:
            assert abs(item["ratio"] - item["value"] / item["baseline"]) < 1e-9
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
