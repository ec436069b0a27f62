"""Section 4 (part): bytes stored per prediction.

A ``ChainOfThought`` prediction with its LM call is recorded into a fresh store, and the
store's size is divided by the number of predictions: the events' stored bytes (what
the rows hold) and the whole database (tables, indexes, free space) for SQLite, the
tables with their indexes for PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.common import (
    Row,
    backends,
    compression,
    configure_dspy,
    fresh_store,
    make_program,
    predict_many,
    row,
)

SECTION = "4. Storage"
TARGET = "<= 3072 B"


def _sqlite_sizes(url: str) -> tuple[int, int]:
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = connection.execute(
            "SELECT COALESCE(SUM(LENGTH(state) + LENGTH(topic) + LENGTH(originator_id) + 8), 0)"
            " FROM stored_events"
        ).fetchone()[0]
    connection.close()
    return int(rows), Path(path).stat().st_size


def _postgres_sizes(url: str) -> tuple[int, int]:
    import psycopg

    base, _, query = url.partition("?schema=")
    with psycopg.connect(base) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (query,),
        ).fetchall()
        rows = 0
        total = 0
        for (table,) in tables:
            qualified = f'"{query}"."{table}"'
            total += connection.execute(
                "SELECT pg_total_relation_size(%s::regclass)", (qualified,)
            ).fetchone()[0]  # type: ignore[index]
            if table.endswith("events"):
                rows += connection.execute(
                    f"SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM {qualified} t"
                ).fetchone()[0]  # type: ignore[index]
    return int(rows), int(total)


def run(quick: bool) -> list[Row]:
    """Record predictions into fresh stores and report bytes per prediction."""
    import dspy_ledger

    configure_dspy()
    program = make_program()
    count = 50 if quick else 2000
    rows: list[Row] = []
    for backend in backends():
        for setting in ("none", "zlib"):
            with compression(setting), fresh_store(backend) as url:
                with (
                    dspy_ledger.open(url, durability="async") as ledger,
                    ledger.instrument(),
                ):
                    predict_many(program, count)
                sizes = _sqlite_sizes(url) if backend == "sqlite" else _postgres_sizes(url)
            label = f"{backend}{', zlib' if setting == 'zlib' else ''}"
            rows.append(
                row(
                    SECTION,
                    f"{label}: event rows per prediction",
                    sizes[0] / count,
                    "bytes",
                    target=TARGET,
                )
            )
            rows.append(
                row(SECTION, f"{label}: whole store per prediction", sizes[1] / count, "bytes")
            )
    return rows
