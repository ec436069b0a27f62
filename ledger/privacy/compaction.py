"""Making erased bytes leave the database files, not only the tables.

Destroying a key or purging a view row leaves the old bytes in free pages (SQLite)
or in dead row versions (PostgreSQL) until the store rewrites them:

* SQLite: ``VACUUM`` (with ``secure_delete``) rebuilds the file, then
  ``wal_checkpoint(TRUNCATE)`` copies it back from the write-ahead log and empties it.
* PostgreSQL: ``VACUUM FULL`` rewrites the named tables into new files.

Backups, replicas and PostgreSQL's own write-ahead log archive are outside the ledger's
reach: see docs/privacy.md.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ledger.errors import StoreUnavailableError
from ledger.storage import StoreURL


def compact_store(store: StoreURL, postgres_tables: Sequence[str]) -> bool:
    """Rewrite the store so that deleted bytes are gone; False if there is nothing to do."""
    if store.backend == "sqlite":
        if store.is_memory or store.sqlite_path is None:
            return False
        _compact_sqlite(store.sqlite_path, store.masked)
        return True
    _compact_postgres(store, postgres_tables)
    return True


def _compact_sqlite(path: str, masked: str) -> None:
    try:
        connection = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            connection.execute("PRAGMA secure_delete=ON")
            connection.execute("VACUUM")
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.close()
    except sqlite3.Error as error:
        msg = (
            f"The keys are destroyed, but {masked} could not be compacted ({error}); "
            "run dspy-ledger forget again when no other process holds the file."
        )
        raise StoreUnavailableError(msg) from error


def _compact_postgres(store: StoreURL, tables: Sequence[str]) -> None:
    import psycopg

    from ledger.application import postgres_connection

    try:
        with postgres_connection(store) as connection:
            for table in tables:
                # Table names come from the ledger's own code, never from user input.
                connection.execute(f"VACUUM FULL {table}")
    except psycopg.Error as error:
        msg = (
            f"The keys are destroyed, but the tables of {store.masked} could not be "
            f"rewritten ({' '.join(str(error).split())}); run VACUUM FULL on them."
        )
        raise StoreUnavailableError(msg) from error
