"""A worker process for a SQLite ledger's Merkle log, started by :mod:`.parallel`.

``python -m ledger.integrity.worker <task> <database> <event table> <batch>`` reads
one JSON request per line on standard input and answers each with one JSON line on
standard output, until standard input closes:

* ``ranges``: each request is a :class:`~ledger.integrity.ranges.LeafRange`, each
  answer its :class:`~ledger.integrity.ranges.RangeOutcome` (reads only);
* ``catch-up``: each request hashes the events stored since the log's last position
  into the log (writing its leaves and frontier) and answers ``{"added": n}``.

The catch-up worker runs beside the program that records into the same file, and
keeps out of its way (see docs/integrity.md, Performance):

* it lowers its CPU priority (:data:`CATCH_UP_NICENESS`): on a busy machine the
  program's own processes get the cores first;
* it writes at most :data:`CATCH_UP_WRITE_BATCH` leaves per transaction: each holds
  the file's write lock, and a recording transaction that finds it taken sleeps in
  SQLite's growing steps (1, 2, 5, 10 ms...) until it is free;
* its commits do not wait for the disk (``synchronous=NORMAL``). Leaves are derived
  from events already on disk and are written with their frontier and tracking
  record in one transaction, so a commit lost to a power cut is redone by the next
  catch-up; and the checkpoint made from them is recorded by a later commit that
  does wait for the disk, which in a WAL file makes the earlier commits durable too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Final

from ledger.integrity.ranges import LeafRange, check_range, sqlite_file_reader


def _ranges(path: str, table: str, batch: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    reader = sqlite_file_reader(path, table)
    return lambda request: check_range(reader, LeafRange.from_json(request), batch).to_json()


#: How much the catch-up worker lowers its CPU priority (``nice``; 19 is the lowest).
CATCH_UP_NICENESS: Final = 10
#: The most leaves the catch-up worker writes in one transaction.
CATCH_UP_WRITE_BATCH: Final = 500


def _catch_up(path: str, table: str, batch: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    # Imported here: the ranges task starts faster without the store's modules.
    from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool, SQLiteDatastore

    from ledger.integrity.hashing import LeafHasher
    from ledger.integrity.log import SQLiteMerkleRecorder, catch_up_log
    from ledger.integrity.scan import read_sqlite_rows

    class UnsyncedPool(SQLiteConnectionPool):
        """Connections whose commits do not wait for the disk (see the module's notes)."""

        def _create_connection(self) -> SQLiteConnection:
            connection = super()._create_connection()
            connection.cursor().execute("PRAGMA synchronous=NORMAL")
            return connection

    if hasattr(os, "nice"):
        with suppress(OSError):  # not allowed here: run at the usual priority
            os.nice(CATCH_UP_NICENESS)
    datastore = SQLiteDatastore(path, lock_timeout=30)
    datastore.pool.close()  # no connection made yet: replaced before first use
    datastore.pool = UnsyncedPool(db_name=path, lock_timeout=30)
    recorder = SQLiteMerkleRecorder(datastore)
    hasher = LeafHasher()
    batch = min(batch, CATCH_UP_WRITE_BATCH)

    def serve(request: dict[str, Any]) -> dict[str, Any]:
        added = catch_up_log(
            recorder,
            lambda start, limit: read_sqlite_rows(datastore, table, start, limit),
            hasher,
            batch_size=batch,
        )
        return {"added": added}

    return serve


def main(argv: list[str]) -> int:
    """Serve requests until standard input closes."""
    task, path, table, batch = argv[0], argv[1], argv[2], int(argv[3])
    serve = (_catch_up if task == "catch-up" else _ranges)(path, table, batch)
    for line in sys.stdin:
        sys.stdout.write(json.dumps(serve(json.loads(line))) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
