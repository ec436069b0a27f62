"""Options shared by the commands."""

from __future__ import annotations

from typing import Annotated

import typer

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Ledger URL: sqlite:///path.db or postgresql://user:pass@host:5432/db "
        "(default: $DSPY_LEDGER_URL, else sqlite:///.dspy-ledger/ledger.db).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for programs.")]
