"""Reading the event table's rows as plain tuples, for hashing them into the log.

The hashing itself lives in :mod:`ledger.integrity.hashing` (re-exported here).
"""

from __future__ import annotations

from typing import Any

from eventsourcing.sqlite import SQLiteDatastore
from psycopg.sql import SQL, Identifier

from ledger.application import LedgerApplication
from ledger.integrity.hashing import EventRow, LeafHasher, extend_frontier, stream_id_part


def read_event_rows(app: LedgerApplication, start: int, limit: int) -> list[EventRow]:
    """Up to ``limit`` stored events from position ``start``, as tuples, in order."""
    recorder: Any = app.recorder
    datastore: Any = recorder.datastore
    table = recorder.events_table_name
    if isinstance(datastore, SQLiteDatastore):
        return read_sqlite_rows(datastore, table, start, limit)
    statement = SQL(
        "SELECT notification_id, topic, originator_id, originator_version, state "
        "FROM {0}.{1} WHERE notification_id >= %s ORDER BY notification_id LIMIT %s"
    ).format(Identifier(datastore.schema), Identifier(table))
    with datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(statement, (start, limit), prepare=True)
        return [
            (
                r["notification_id"],
                r["topic"],
                r["originator_id"],
                r["originator_version"],
                bytes(r["state"]),
            )
            for r in curs.fetchall()
        ]


__all__ = [
    "EventRow",
    "LeafHasher",
    "extend_frontier",
    "read_event_rows",
    "read_sqlite_rows",
    "sqlite_rows_statement",
    "stream_id_part",
]


def sqlite_rows_statement(table: str) -> str:
    """The query for up to ``limit`` events of a SQLite ``table`` from ``start`` (in that order)."""
    return (
        "SELECT rowid, topic, originator_id, originator_version, state "
        f"FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT ?"
    )


def read_sqlite_rows(
    datastore: SQLiteDatastore, table: str, start: int, limit: int
) -> list[EventRow]:
    """Up to ``limit`` events of a SQLite ``table`` from position ``start``, as tuples."""
    with datastore.transaction(commit=False) as c:
        c.row_factory = None  # type: ignore[attr-defined]  # tuples, not Row objects
        c.execute(sqlite_rows_statement(table), (start, limit))
        rows: list[EventRow] = c.fetchall()
        return rows
