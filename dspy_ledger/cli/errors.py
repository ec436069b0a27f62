"""How the command line reports failure: one sentence, a distinct exit code.

Exit codes: 0 success; 1 the ledger could not record or verify what was asked;
2 bad input (usage, ids, URLs, malformed patterns, negative budgets, an unknown or
already forgotten data subject); 3 the store is unavailable or does not exist, or failed
during the command; 4 the master key is missing or wrong; 5 an LM call was refused by
governance; 6 ``replay`` ran but not every prediction replayed identically; 130
interrupted.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import typer
from eventsourcing.persistence import PersistenceError

from ledger.errors import (
    GovernanceError,
    InvalidInputError,
    LedgerError,
    MasterKeyError,
    StorageURLError,
    StoreUnavailableError,
    StreamNotFoundError,
    SubjectAlreadyForgottenError,
    UnknownSubjectError,
)

# Recent Typer releases vendor their own copy of click: catch both its classes and click's.
_EXIT = (click.exceptions.Exit, typer.Exit)
_ABORT = (click.exceptions.Abort, typer.Abort)
_USAGE = (click.ClickException, typer.exceptions.TyperException)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STORE = 3
EXIT_MASTER_KEY = 4
EXIT_REFUSED = 5
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print one sentence on stderr and return the Exit to raise."""
    typer.echo(f"dspy-ledger: {message}", err=True)
    return typer.Exit(code)


def exit_code_for(error: LedgerError) -> int:
    """The exit code that stands for an error of this kind."""
    if isinstance(error, StoreUnavailableError):
        return EXIT_STORE
    if isinstance(error, MasterKeyError):
        return EXIT_MASTER_KEY
    if isinstance(
        error,
        (
            StorageURLError,
            InvalidInputError,
            StreamNotFoundError,
            UnknownSubjectError,
            SubjectAlreadyForgottenError,
        ),
    ):
        return EXIT_BAD_INPUT
    if isinstance(error, GovernanceError):
        return EXIT_REFUSED
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
    except PersistenceError as error:
        # The store failed after the command had opened it (a server restarted, a disk
        # filled): each write is its own transaction, so what was committed stays.
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        typer.echo(
            f"dspy-ledger: the ledger's database failed during the command ({reason}); "
            "what it had committed is kept.",
            err=True,
        )
        sys.exit(EXIT_STORE)
    except _EXIT as done:
        sys.exit(done.exit_code)
    except _ABORT:
        typer.echo("dspy-ledger: interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except _USAGE as error:
        show = getattr(error, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"dspy-ledger: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        typer.echo("dspy-ledger: interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(0)
