"""A worker process for a SQLite ledger's Merkle log, started by :mod:`.parallel`.

``python -m ledger.integrity.worker <task> <ledger file> <leaf file> <event table> <batch>``
reads one JSON request per line on standard input and answers each with one JSON line
on standard output, until standard input closes:

* ``ranges``: each request is a :class:`~ledger.integrity.ranges.LeafRange`, each
  answer its :class:`~ledger.integrity.ranges.RangeOutcome` (reads only);
* ``catch-up``: each request hashes the events stored since the log's last position
  into the log (writing its leaves and frontier) and answers ``{"added": n}``.

Both read the ledger file over a read-only connection. The catch-up worker writes
only to the leaf file (:mod:`.leaf_file`, made ready by the process that starts it),
so it never takes the ledger file's write lock, which the program's recording
commits need; and it keeps out of the program's way otherwise too (see
docs/integrity.md, Performance):

* it lowers its CPU priority (:data:`CATCH_UP_NICENESS`): on a busy machine the
  program's own processes get the cores first;
* it writes at most :data:`CATCH_UP_WRITE_BATCH` leaves per transaction, so that a
  reader of the log (``verify`` of another process) never waits long for it;
* its commits do not wait for the disk
  (:class:`~ledger.integrity.leaf_file.LeafFilePool`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Final

from ledger.integrity.ranges import (
    LeafRange,
    check_range,
    read_only_file,
    sqlite_file_reader,
)

#: A task's server: answers one request.
Serve = Callable[[dict[str, Any]], dict[str, Any]]


def _ranges(path: str, leaf_path: str, table: str, batch: int) -> Serve:
    reader = sqlite_file_reader(path, leaf_path, table)
    return lambda request: check_range(reader, LeafRange.from_json(request), batch).to_json()


#: How much the catch-up worker lowers its CPU priority (``nice``; 19 is the lowest).
CATCH_UP_NICENESS: Final = 10
#: The most leaves the catch-up worker writes in one transaction.
CATCH_UP_WRITE_BATCH: Final = 500


def _catch_up(path: str, leaf_path: str, table: str, batch: int) -> Serve:
    # Imported here: the ranges task starts faster without the store's modules.
    from ledger.integrity.hashing import LeafHasher
    from ledger.integrity.leaf_file import open_leaf_datastore
    from ledger.integrity.log import catch_up_log
    from ledger.integrity.log_store import SQLiteMerkleRecorder
    from ledger.integrity.scan import sqlite_rows_statement

    if hasattr(os, "nice"):
        with suppress(OSError):  # not allowed here: run at the usual priority
            os.nice(CATCH_UP_NICENESS)
    events = read_only_file(path)
    recorder = SQLiteMerkleRecorder(open_leaf_datastore(leaf_path))
    hasher = LeafHasher()
    batch = min(batch, CATCH_UP_WRITE_BATCH)
    select = sqlite_rows_statement(table)

    def serve(request: dict[str, Any]) -> dict[str, Any]:
        added = catch_up_log(
            recorder,
            lambda start, limit: events(select, (start, limit)),
            hasher,
            batch_size=batch,
        )
        return {"added": added}

    return serve


def main(argv: list[str]) -> int:
    """Serve requests until standard input closes."""
    task, path, leaf_path, table, batch = argv[0], argv[1], argv[2], argv[3], int(argv[4])
    serve = (_catch_up if task == "catch-up" else _ranges)(path, leaf_path, table, batch)
    for line in sys.stdin:
        sys.stdout.write(json.dumps(serve(json.loads(line))) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
