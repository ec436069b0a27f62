"""Where a SQLite ledger's Merkle log lives: a SQLite file of its own, next to the ledger.

A ledger file ``ledger.db`` keeps its log (``merkle_leaves``, ``merkle_frontier`` and
the log's ``tracking`` row) in ``ledger.db-merkle`` (:data:`LEAF_FILE_SUFFIX`, named the
way SQLite names its own companion files, ``-wal`` and ``-shm``). A SQLite file has one
write lock: with the leaves in the ledger file, each transaction of the catch-up worker
made the program's recording commits wait, and its pages passed through the ledger's
write-ahead log. In a file of their own they take neither.

The leaf file is derived data: every leaf is the hash of a stored event, so a lost leaf
file is rebuilt from the events by the next catch-up, and the checkpoints (events in the
ledger) still check the rebuilt log. It is not trusted blindly:

* both files carry the ledger's identity (table :data:`IDENTITY_TABLE`, one random id,
  written into the ledger file the first time its log is opened). A leaf file that was
  built for another ledger is refused with :class:`LeafFileMismatchError`, never used
  nor overwritten (it may be the other ledger's);
* ``verify`` still recomputes every leaf from the stored events and compares.

A ledger written before the log moved (its tables inside the ledger file) has them
*copied* into a new leaf file the first time its log is opened, and then dropped from
the ledger file: copied, not rebuilt, because leaves hashed when the events were
recorded are evidence that a rebuild from today's events would not be (tampering
after the last checkpoint would be hashed into the new leaves).

An in-memory ledger keeps its log in its own database, as PostgreSQL does.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from contextlib import closing, suppress
from typing import Any, ClassVar, Final

from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool, SQLiteDatastore

from ledger.integrity.errors import IntegrityError
from ledger.integrity.log_store import TRACKING_NAME, SQLiteMerkleRecorder

#: Appended to the ledger file's path to name its leaf file.
LEAF_FILE_SUFFIX: Final = "-merkle"
#: The table, in both files, holding the ledger's identity (one row).
IDENTITY_TABLE: Final = "merkle_log_identity"
#: The log's tables as a ledger file held them before they moved (tracked as TRACKING_NAME).
_LEGACY_TABLES: Final = ("merkle_leaves", "merkle_frontier")
#: Seconds a connection to the leaf file waits for its write lock.
LOCK_TIMEOUT: Final = 30
#: Leaves copied per statement when a legacy log moves to its file.
_COPY_BATCH: Final = 50_000

_CREATE_IDENTITY: Final = f"CREATE TABLE IF NOT EXISTS {IDENTITY_TABLE} (ledger_id TEXT NOT NULL)"


class LeafFileMismatchError(IntegrityError):
    """The Merkle log's leaf file was built for another ledger."""

    exit_code: ClassVar[int] = 15


def ledger_file(datastore: Any) -> str | None:
    """The SQLite ledger's file, if it has one other processes can open."""
    if not isinstance(datastore, SQLiteDatastore):
        return None
    pool: Any = datastore.pool
    name = str(pool.db_name)
    if pool.is_sqlite_memory_mode or name.startswith("file:"):
        return None
    return os.path.abspath(name)


def leaf_file_of(ledger_path: str) -> str:
    """The leaf file of the ledger file at ``ledger_path``."""
    return ledger_path + LEAF_FILE_SUFFIX


class LeafFilePool(SQLiteConnectionPool):
    """Connections to a leaf file, whose commits do not wait for the disk.

    Leaves are derived from events already on disk: a commit lost to a power cut
    leaves the file consistent (write-ahead log), only behind, and the next catch-up
    hashes those events again (``verify`` first, if the ledger's recorded checkpoints
    are ahead of it).
    """

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        connection.cursor().execute("PRAGMA synchronous=NORMAL")
        return connection


def open_leaf_datastore(path: str) -> SQLiteDatastore:
    """A datastore over the leaf file at ``path`` (:class:`LeafFilePool` connections)."""
    datastore = SQLiteDatastore(path, lock_timeout=LOCK_TIMEOUT)
    datastore.pool.close()  # no connection made yet: replaced before first use
    datastore.pool = LeafFilePool(db_name=path, lock_timeout=LOCK_TIMEOUT)
    return datastore


def prepare_leaf_file(ledger: SQLiteDatastore, leaf_path: str) -> str:
    """Make the ledger's identity and leaf file ready; return the identity.

    Creates the identity on the ledger's first use of the log, and moves a log kept in
    the ledger file (by an earlier version) into the leaf file. The leaf file itself
    is created by its recorder, and checked with :func:`claim_leaf_file`.
    """
    identity, legacy = _ledger_side(ledger)
    if identity is not None and not legacy:
        return identity
    copy = _copy_legacy_log(ledger, leaf_path) if legacy else None
    try:
        # The ledger's write lock makes processes opening the log take turns here.
        with ledger.transaction(commit=True) as cursor:
            cursor.execute(_CREATE_IDENTITY)
            cursor.execute(f"SELECT ledger_id FROM {IDENTITY_TABLE}")
            row = cursor.fetchone()
            identity = row[0] if row else uuid.uuid4().hex
            if row is None:
                cursor.execute(f"INSERT INTO {IDENTITY_TABLE} VALUES (?)", (identity,))
            if _has_legacy_log(cursor):
                if copy is not None and not os.path.exists(leaf_path):
                    _stamp(copy, identity)
                    os.replace(copy, leaf_path)
                    _sync_directory(leaf_path)
                if os.path.exists(leaf_path):  # moved, by this process or another
                    _drop_legacy_log(cursor)
    finally:
        if copy is not None:
            with suppress(FileNotFoundError):
                os.remove(copy)
    return identity


def claim_leaf_file(cursor: Any, identity: str, leaf_path: str) -> None:
    """Check (in the leaf file's transaction) that it was built for ``identity``; stamp a new one.

    Raises :class:`LeafFileMismatchError` for a leaf file of another ledger, or one
    holding leaves but no identity: neither is used, nor changed.
    """
    cursor.execute(_CREATE_IDENTITY)
    cursor.execute(f"SELECT ledger_id FROM {IDENTITY_TABLE}")
    row = cursor.fetchone()
    if row is not None and row[0] == identity:
        return
    cursor.execute("SELECT EXISTS (SELECT 1 FROM merkle_leaves)")
    if row is None and not cursor.fetchone()[0]:
        cursor.execute(f"INSERT INTO {IDENTITY_TABLE} VALUES (?)", (identity,))
        return
    owner = f"ledger {row[0][:12]}..." if row is not None else "an unknown ledger"
    msg = (
        f"The Merkle log file {leaf_path} was built for {owner}, not for this ledger "
        f"({identity[:12]}...): it is not used. Move it away (it may belong to another "
        "ledger); the log is then rebuilt from this ledger's events, and verify checks "
        "it against the checkpoints recorded in the ledger."
    )
    raise LeafFileMismatchError(msg)


def _ledger_side(ledger: SQLiteDatastore) -> tuple[str | None, bool]:
    """The ledger's identity (if it has one yet), and whether it still holds a log."""
    with ledger.transaction(commit=False) as cursor:
        legacy = _has_legacy_log(cursor)
        cursor.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (IDENTITY_TABLE,)
        )
        if cursor.fetchone() is None:
            return None, legacy
        cursor.execute(f"SELECT ledger_id FROM {IDENTITY_TABLE}")
        row = cursor.fetchone()
        return (row[0] if row else None), legacy


def _has_legacy_log(cursor: Any) -> bool:
    cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'merkle_leaves'")
    return cursor.fetchone() is not None


def _drop_legacy_log(cursor: Any) -> None:
    for table in _LEGACY_TABLES:
        cursor.execute(f"DROP TABLE {table}")
    cursor.execute("DELETE FROM tracking WHERE application_name = ?", (TRACKING_NAME,))


def _copy_legacy_log(ledger: SQLiteDatastore, leaf_path: str) -> str | None:
    """Copy the log the ledger file holds into a new file beside ``leaf_path``; its path.

    ``None`` if a leaf file exists already (a process that moved the log before us).
    """
    if os.path.exists(leaf_path):
        return None
    copy = f"{leaf_path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    target = SQLiteDatastore(copy)
    try:
        SQLiteMerkleRecorder(target).create_table()
        with ledger.transaction(commit=False) as source, target.transaction(commit=True) as out:
            source.row_factory = None  # type: ignore[attr-defined]  # tuples
            start = 0
            while True:
                source.execute(
                    "SELECT leaf_index, position, hash FROM merkle_leaves "
                    "WHERE leaf_index >= ? ORDER BY leaf_index LIMIT ?",
                    (start, _COPY_BATCH),
                )
                rows = source.fetchall()
                out.executemany("INSERT INTO merkle_leaves VALUES (?, ?, ?)", rows)
                if len(rows) < _COPY_BATCH:
                    break
                start = rows[-1][0] + 1
            source.execute("SELECT log, size, last_position, hashes FROM merkle_frontier")
            out.executemany("INSERT INTO merkle_frontier VALUES (?, ?, ?, ?)", source.fetchall())
            source.execute(
                "SELECT notification_id FROM tracking WHERE application_name = ?",
                (TRACKING_NAME,),
            )
            tracked = source.fetchone()
            if tracked is not None:
                out.execute(
                    "INSERT OR REPLACE INTO tracking VALUES (?, ?)", (TRACKING_NAME, tracked[0])
                )
    finally:
        target.close()
    return copy


def _stamp(path: str, identity: str) -> None:
    """Write the ledger's identity into the copied log, and leave it whole on disk."""
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("PRAGMA journal_mode=DELETE")  # one file, to move in one step
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(_CREATE_IDENTITY)
        connection.execute(f"INSERT INTO {IDENTITY_TABLE} VALUES (?)", (identity,))
        connection.execute("COMMIT")


def _sync_directory(path: str) -> None:
    """Make a rename in the folder of ``path`` durable (where the platform allows)."""
    with suppress(OSError):
        descriptor = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


__all__ = [
    "IDENTITY_TABLE",
    "LEAF_FILE_SUFFIX",
    "LeafFileMismatchError",
    "LeafFilePool",
    "claim_leaf_file",
    "leaf_file_of",
    "ledger_file",
    "open_leaf_datastore",
    "prepare_leaf_file",
]
