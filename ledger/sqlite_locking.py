"""SQLite write transactions take the database's write lock when they begin.

The event store begins every transaction with a plain ``BEGIN``, which SQLite defers:
the transaction reads as of its first statement and asks for the write lock only at
its first write. When another *process* has committed in between (the writer process,
the checkpoint worker, another program recording into the same file), SQLite cannot
let it write on top of what it read, and fails at once with "database is locked":
the lock timeout does not apply. Within one process the library's reader-writer lock
keeps that from happening; across processes only ``BEGIN IMMEDIATE`` does. So write
transactions (the library's ``commit=True``) begin with ``BEGIN IMMEDIATE``: they wait
their turn (up to the lock timeout) instead of failing, and read what they write over.
Read-only transactions are unchanged.
"""

from __future__ import annotations

import sqlite3

from eventsourcing import sqlite as library
from eventsourcing.persistence import OperationalError


def _begin(self: library.SQLiteTransaction) -> library.SQLiteCursor:
    cursor = self.connection.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE" if self.commit else "BEGIN")
    except sqlite3.OperationalError as error:  # waited the whole lock timeout
        raise OperationalError(error) from error
    return cursor


library.SQLiteTransaction.__enter__ = _begin  # type: ignore[method-assign]
