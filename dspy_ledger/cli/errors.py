"""How the command line reports failure: one sentence, a distinct exit code.

Exit codes: 0 success; 1 the ledger could not record or verify what was asked;
2 bad input (usage, ids, URLs, malformed patterns, negative budgets); 3 the store is
unavailable or does not exist; 4 an LM call was refused by governance; 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import typer

from ledger.errors import (
    GovernanceError,
    InvalidInputError,
    LedgerError,
    StorageURLError,
    StoreUnavailableError,
    StreamNotFoundError,
)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STORE = 3
EXIT_REFUSED = 4
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print one sentence on stderr and return the Exit to raise."""
    typer.echo(f"dspy-ledger: {message}", err=True)
    return typer.Exit(code)


def exit_code_for(error: LedgerError) -> int:
    """The exit code that stands for an error of this kind."""
    if isinstance(error, StoreUnavailableError):
        return EXIT_STORE
    if isinstance(error, GovernanceError):
        return EXIT_REFUSED
    if isinstance(error, (StorageURLError, InvalidInputError, StreamNotFoundError)):
        return EXIT_BAD_INPUT
    return EXIT_FAILED


def run_app(app: Any) -> None:
    """Run a Typer app, turning ledger errors into one sentence and an exit code."""
    try:
        # Outside standalone mode click returns an Exit's code instead of raising it.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except LedgerError as error:
        typer.echo(f"dspy-ledger: {error}", err=True)
        sys.exit(exit_code_for(error))
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        typer.echo("dspy-ledger: interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        typer.echo("dspy-ledger: interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(0)
