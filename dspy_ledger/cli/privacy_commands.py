"""Privacy commands: forget a data subject, show one, generate and rotate master keys.

Exit codes (see :mod:`dspy_ledger.cli.errors`): 2 for an unknown subject or one already
forgotten, 4 for a missing or wrong master key.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from dspy_ledger.cli.options import DbOption, JsonOption
from dspy_ledger.ledger import Ledger
from ledger.errors import MasterKeyError
from ledger.privacy import generate_master_key, load_master_key

MasterKeyFileOption = Annotated[
    Path | None,
    typer.Option(
        "--master-key-file",
        help="File holding the master key (default: $DSPY_LEDGER_MASTER_KEY, "
        "else the file named by $DSPY_LEDGER_MASTER_KEY_FILE).",
        show_default=False,
    ),
]
SubjectArgument = Annotated[str, typer.Argument(help="The data subject's id, e.g. customer-123.")]


def forget(
    subject: SubjectArgument,
    *,
    # Optional to typer so that a missing reason gets the ledger's own one-sentence error.
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Why (recorded in SubjectForgotten).", show_default=False),
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who asked (default: you).")] = None,
    compact: Annotated[
        bool,
        typer.Option(
            "--compact/--no-compact",
            help="Rewrite the database files so erased bytes are gone (SQLite VACUUM, "
            "PostgreSQL VACUUM FULL of the key and copy tables).",
        ),
    ] = True,
    db: DbOption = None,
    master_key_file: MasterKeyFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Erase a data subject: destroy its keys, record SubjectForgotten, purge copies."""
    ledger = Ledger(db, create=False, actor=by, master_key=master_key_file)
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("purging view copies: {task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=as_json,
            transient=True,
        ) as bar:
            task = bar.add_task("views")
            report = ledger.forget(
                subject,
                reason=reason or "",
                compact=compact,
                progress=lambda name, n: bar.update(task, description=name, advance=n),
            )
    finally:
        ledger.close()
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    typer.echo(
        f"Forgot {report.subject!r}: {report.keys_destroyed} key(s) destroyed, "
        f"{len(report.streams)} stream(s) now read as [erased], recorded at position "
        f"{report.position} by {report.by}"
        + ("; database compacted." if report.store_compacted else ".")
    )


def subject(
    subject_id: SubjectArgument,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what the ledger holds about a data subject (keys and streams)."""
    ledger = Ledger(db, create=False)
    try:
        status = ledger.subject_status(subject_id)
    finally:
        ledger.close()
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(status), indent=2))
        return
    state = "forgotten" if status.live_keys == 0 and status.destroyed_keys else "readable"
    if not status.live_keys and not status.destroyed_keys:
        state = "unknown"
    typer.echo(
        f"{status.subject}: {state}; {status.live_keys} live key(s), "
        f"{status.destroyed_keys} destroyed, {len(status.streams)} stream(s)."
    )


def keys_generate() -> None:
    """Print a new random master key (keep it in your secret store, not in the ledger)."""
    typer.echo(generate_master_key())


def keys_rotate(
    new_key_file: Annotated[
        Path, typer.Option("--new-key-file", help="File holding the new master key.")
    ],
    db: DbOption = None,
    master_key_file: MasterKeyFileOption = None,
) -> None:
    """Wrap every subject key under a new master key, in one transaction."""
    new_key = load_master_key(new_key_file)
    if new_key is None:  # pragma: no cover - a Path always loads or raises
        msg = f"No master key in {new_key_file}."
        raise MasterKeyError(msg)
    ledger = Ledger(db, create=False, master_key=master_key_file)
    try:
        count = ledger.rotate_master_key(new_key)
    finally:
        ledger.close()
    typer.echo(
        f"Rewrapped {count} subject key(s) under master key {new_key.key_id}; "
        "use the new key from now on."
    )


def register(app: typer.Typer) -> None:
    """Add the privacy commands to the CLI."""
    app.command()(forget)
    app.command()(subject)
    keys = typer.Typer(help="Master keys that wrap the data subjects' keys.", no_args_is_help=True)
    keys.command("generate")(keys_generate)
    keys.command("rotate")(keys_rotate)
    app.add_typer(keys, name="keys")
