"""The commands' tables never cut a name or a figure short: piped or saved to a file a
table takes its natural width, and on a narrow terminal its cells fold onto more lines."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console
from typer.testing import CliRunner

import dspy_ledger
from dspy_ledger.cli import app
from dspy_ledger.cli.output import folding_table
from tests.test_views import record_prediction

runner = CliRunner()
LONG_MODEL = "openrouter/anthropic/claude-3-7-sonnet-20250219-with-extended-thinking"


def test_a_report_read_off_a_terminal_shows_every_name_and_figure_whole(
    sqlite_url: str,
) -> None:
    at = datetime(2026, 1, 5, 12, tzinfo=UTC)
    with dspy_ledger.open(sqlite_url, actor="tester") as ledger:
        for actor in ("alice-from-the-compliance-office", "bob"):
            record_prediction(ledger, actor=actor, calls=[(LONG_MODEL, 1234.5678912, False)], at=at)
    # CliRunner's output is not a terminal, as with `dspy-ledger report cost > file`.
    result = runner.invoke(
        app, ["report", "cost", "--by", "model", "--by", "actor", "--db", sqlite_url]
    )
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert LONG_MODEL in result.output
    assert "alice-from-the-compliance-office" in result.output
    assert "1234.567891" in result.output  # each row's billed dollars, to the micro-dollar
    assert "2469.135782" in result.output  # and the total


def test_on_a_narrow_terminal_a_cell_folds_rather_than_being_cut() -> None:
    table = folding_table("model")
    table.add_row(LONG_MODEL)
    screen = io.StringIO()
    Console(file=screen, width=30, force_terminal=True, color_system=None).print(table)
    lines = screen.getvalue().splitlines()
    assert all(len(line) <= 30 for line in lines)
    assert "…" not in screen.getvalue()
    cells = [line.strip("│ ") for line in lines if line.startswith("│")]
    assert "".join(cells) == LONG_MODEL  # body rows only: the header row is drawn with ┃
