"""Read commands: export, show, stats."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dspy_ledger.cli.errors import fail
from dspy_ledger.cli.integrity_commands import BundleSelection, write_bundle_file
from dspy_ledger.cli.options import DbOption, JsonOption
from dspy_ledger.cli.output import folding_table, stdout_console
from dspy_ledger.ledger import Ledger


def _open_for_reading(db: str | None) -> Ledger:
    return Ledger(db, create=False)


def export(  # noqa: PLR0917 - typer reads options from parameters
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", help="Output format (jsonl).")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
    start: Annotated[int, typer.Option("--from", min=1, help="First position.")] = 1,
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle", help="Write an audit bundle (.zip: events, proofs, checkpoint) instead."
        ),
    ] = None,
    stream: Annotated[str | None, typer.Option("--stream", help="Bundle only this stream.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Bundle only this actor.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Bundle from (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Bundle until (ISO 8601).")] = None,
    sign: Annotated[
        Path | None, typer.Option("--sign", help="Sign the bundle's checkpoint with this key.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print every event in order, one JSON object per line; or write an audit bundle."""
    selection = BundleSelection(stream, actor, since, until)
    if bundle is not None:
        write_bundle_file(bundle, db, selection, sign, as_json)
        return
    if selection != BundleSelection() or sign is not None:
        raise fail("--stream, --actor, --since, --until and --sign go with --bundle FILE.zip.")
    if fmt != "jsonl":
        raise fail(f"Unknown export format {fmt!r}; the supported format is jsonl.")
    ledger = _open_for_reading(db)
    try:
        sink = output.open("w", encoding="utf-8") if output else sys.stdout
        try:
            for event in ledger.events(start=start):
                sink.write(event.model_dump_json())
                sink.write("\n")
        finally:
            if output:
                sink.close()
    finally:
        ledger.close()


def show(
    stream_id: Annotated[str, typer.Argument(help="The stream (aggregate) id.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print one stream's whole history."""
    ledger = _open_for_reading(db)
    try:
        events = ledger.stream(stream_id)
    finally:
        ledger.close()
    if as_json:
        typer.echo(json.dumps([e.model_dump() for e in events], indent=2))
        return
    console = stdout_console()
    first = events[0]
    console.print(f"[bold]{first.stream_type}[/bold] {first.stream_id}")
    for event in events:
        console.print(
            f"  v{event.version:<3} {event.timestamp}  [cyan]{event.type}[/cyan]  by {event.actor}"
        )
        for key, value in event.data.items():
            text = json.dumps(value, ensure_ascii=False)
            if len(text) > 160:
                text = text[:157] + "..."
            console.print(f"        {key}: {text}", markup=False, highlight=False)


def stats(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Count events by type and by stream type."""
    ledger = _open_for_reading(db)
    try:
        result = ledger.stats()
    finally:
        ledger.close()
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    console = stdout_console()
    console.print(
        f"Ledger {result.url}: {result.events} events, last position {result.last_position}"
    )
    if result.dropped_spans or result.exported_spans:
        console.print(
            f"OpenTelemetry: {result.exported_spans} spans exported, "
            f"{result.dropped_spans} spans dropped (endpoint unreachable or queue full)"
        )
    table = folding_table("stream type", "streams", "events")
    for stream_type, count in result.by_stream_type.items():
        table.add_row(stream_type, str(result.streams_by_type.get(stream_type, 0)), str(count))
    console.print(table)
    table = folding_table("event type", "events")
    for event_type, count in result.by_event_type.items():
        table.add_row(event_type, str(count))
    console.print(table)
