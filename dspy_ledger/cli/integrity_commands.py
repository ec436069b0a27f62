"""Integrity commands: keygen, checkpoint, verify, prove, bundle, verify-bundle.

Exit codes beyond :mod:`dspy_ledger.cli.errors` (documented in docs/integrity.md):
10 modified, 11 missing, 12 inserted, 13 reordered, 14 checkpoint mismatch,
15 log tables inconsistent, 16 signature invalid, 17 bundle does not verify,
20 file missing or unreadable, 21 checkpoint file malformed, 22 bundle corrupt,
23 key file malformed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dspy_ledger.cli.errors import fail
from dspy_ledger.cli.options import DbOption, JsonOption
from dspy_ledger.ledger import Ledger, parse_stream_id
from ledger.errors import InvalidInputError
from ledger.integrity.bundle import BundleReport, read_bundle
from ledger.integrity.bundle import verify_bundle as verify_bundle_file
from ledger.integrity.checkpoint import (
    Checkpoint,
    generate_key_pair,
    load_public_key,
    read_checkpoint,
)
from ledger.integrity.errors import TAMPER_EXIT_CODES, IntegrityError

T = TypeVar("T")

KeyOption = Annotated[
    Path | None, typer.Option("--sign", help="Sign with this Ed25519 private key (PEM).")
]
AgainstOption = Annotated[
    Path | None,
    typer.Option("--against", help="A checkpoint file that the log must extend."),
]
PublicKeyOption = Annotated[
    Path | None,
    typer.Option("--public-key", help="Require the checkpoint to be signed by this key (PEM)."),
]


@contextmanager
def _integrity_errors() -> Iterator[None]:
    """Turn integrity errors into one sentence and their own exit code."""
    try:
        yield
    except IntegrityError as error:
        raise fail(str(error), error.exit_code) from None


def _call(work: Callable[[], T]) -> T:
    with _integrity_errors():
        return work()


def keygen(
    keyfile: Annotated[Path, typer.Argument(help="Where to write the private key (PEM).")],
) -> None:
    """Make an Ed25519 key pair for signing checkpoints (KEYFILE and KEYFILE.pub)."""
    public_path, key_id = _call(lambda: generate_key_pair(keyfile))
    typer.echo(f"private key {keyfile} (keep secret), public key {public_path}, key id {key_id}")


def checkpoint(db: DbOption = None, sign: KeyOption = None, as_json: JsonOption = False) -> None:
    """Record a checkpoint of the Merkle log (tree size, root, time) and print it."""
    ledger = Ledger(db, create=False)
    try:
        info = _call(lambda: ledger.checkpoint(sign))
    finally:
        ledger.close()
    typer.echo(info.model_dump_json(indent=2) if as_json else info.text, nl=as_json)


def verify(
    db: DbOption = None,
    against: AgainstOption = None,
    public_key: PublicKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute every leaf of the Merkle log and name the first bad position, if any."""

    def load() -> tuple[Checkpoint | None, Ed25519PublicKey | None]:
        trusted = read_checkpoint(against) if against else None
        key = load_public_key(public_key) if public_key is not None else None
        if trusted is not None and key is not None:
            trusted.check_signature(key)
        return trusted, key

    trusted, key = _call(load)
    ledger = Ledger(db, create=False)
    try:
        total = ledger.app.last_position()
        with Progress(
            TextColumn("verifying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=as_json,
            transient=True,
        ) as bar:
            task = bar.add_task("verify", total=total)
            report = _call(
                lambda: ledger.verify(
                    against=trusted,
                    public_key=key,
                    progress=lambda n: bar.update(task, advance=n),
                )
            )
    finally:
        ledger.close()
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    elif report.problem is None and report.events_checked == 0 and report.events_added:
        typer.echo(
            f"OK: the Merkle log held no events yet, so there was nothing to check; "
            f"{report.events_added} events were hashed into it now: root "
            f"{report.log_root_hash} at tree size {report.log_tree_size}. A later verify "
            "checks them against this log; dspy-ledger checkpoint records this root."
        )
    elif report.problem is None:
        typer.echo(
            f"OK: {report.events_checked} events verified, {report.checkpoints_checked} "
            f"checkpoints checked ({report.signatures_checked} signatures), "
            f"root {report.root_hash} at tree size {report.tree_size}"
            + (
                f"; {report.events_added} new events added to the log (root "
                f"{report.log_root_hash} at tree size {report.log_tree_size})"
                if report.events_added
                else ""
            )
            + (
                f"; {report.events_rehashed} events hashed into the log again first "
                "(it was behind the recorded checkpoints: a lost or older leaf file)"
                if report.events_rehashed
                else ""
            )
            + (f"; extends the checkpoint of {report.against_tree_size}" if against else "")
            + "."
        )
    if report.problem is not None:
        if not as_json:
            typer.echo(f"dspy-ledger: TAMPERED: {report.problem.message}", err=True)
        raise typer.Exit(TAMPER_EXIT_CODES[report.problem.kind])


def prove(
    position: Annotated[int, typer.Argument(help="The event's position.", min=1)],
    db: DbOption = None,
) -> None:
    """Print the inclusion proof of the event at POSITION in today's log (JSON)."""
    ledger = Ledger(db, create=False)
    try:
        proof = _call(lambda: ledger.prove(position))
    finally:
        ledger.close()
    typer.echo(proof.model_dump_json(indent=2))


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        msg = f"{option} {value!r} is not a date; use ISO 8601, e.g. 2025-05-01T00:00:00+00:00."
        raise InvalidInputError(msg) from None
    if parsed.tzinfo is None:
        msg = f"{option} {value!r} has no time zone; add one, e.g. +00:00."
        raise InvalidInputError(msg)
    return parsed


def bundle(  # noqa: PLR0917 - typer reads options from parameters
    output: Annotated[Path, typer.Argument(help="The bundle file to write (.zip).")],
    db: DbOption = None,
    stream: Annotated[str | None, typer.Option("--stream", help="Only this stream.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this actor.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="From (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Until (ISO 8601).")] = None,
    sign: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write an audit bundle (same as ``export --bundle FILE.zip``)."""
    write_bundle_file(output, db, BundleSelection(stream, actor, since, until), sign, as_json)


@dataclass(frozen=True)
class BundleSelection:
    """Which events go into a bundle, as given on the command line."""

    stream: str | None = None
    actor: str | None = None
    since: str | None = None
    until: str | None = None


def write_bundle_file(
    output: Path,
    db: str | None,
    selection: BundleSelection,
    sign: Path | None,
    as_json: bool,
) -> None:
    """Write an audit bundle: selected events, inclusion proofs and a fresh checkpoint."""
    stream_id = parse_stream_id(selection.stream) if selection.stream else None
    start = _parse_time(selection.since, "--since")
    end = _parse_time(selection.until, "--until")
    ledger = Ledger(db, create=False)
    try:
        count, info = _call(
            lambda: ledger.bundle(
                output,
                stream=stream_id,
                actor=selection.actor,
                since=start,
                until=end,
                sign_key=sign,
            )
        )
    finally:
        ledger.close()
    if as_json:
        typer.echo(json.dumps({"bundle": str(output), "events": count, **info.model_dump()}))
    else:
        typer.echo(f"Wrote {count} events with proofs to {output} (tree size {info.tree_size}).")


def verify_bundle(
    bundle_file: Annotated[Path, typer.Argument(help="The bundle (.zip) to verify.")],
    against: AgainstOption = None,
    public_key: PublicKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Verify an audit bundle offline: every event's proof, its checkpoint and signature."""

    def check() -> BundleReport:
        trusted = read_checkpoint(against) if against else None
        report = verify_bundle_file(bundle_file, against=trusted)
        if public_key is not None:
            read_bundle(bundle_file)[1].check_signature(load_public_key(public_key))
        return report

    report = _call(check)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        typer.echo(
            f"OK: {report.events} events proven in the tree of {report.tree_size} "
            f"with root {report.root_hash}" + (" (signature verified)" if public_key else "") + "."
        )


def register(app: typer.Typer) -> None:
    """Add the integrity commands to the ``dspy-ledger`` app."""
    app.command()(keygen)
    app.command()(checkpoint)
    app.command()(verify)
    app.command()(prove)
    app.command()(bundle)
    app.command("verify-bundle")(verify_bundle)
