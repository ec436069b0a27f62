"""A worker process for a SQLite ledger's Merkle log, started by :mod:`.parallel`.

``python -m ledger.integrity.worker <task> <database> <event table> <batch>`` reads
one JSON request per line on standard input and answers each with one JSON line on
standard output, until standard input closes:

* ``ranges``: each request is a :class:`~ledger.integrity.ranges.LeafRange`, each
  answer its :class:`~ledger.integrity.ranges.RangeOutcome` (reads only);
* ``catch-up``: each request hashes the events stored since the log's last position
  into the log (writing its leaves and frontier) and answers ``{"added": n}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from ledger.integrity.ranges import LeafRange, check_range, sqlite_file_reader


def _ranges(path: str, table: str, batch: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    reader = sqlite_file_reader(path, table)
    return lambda request: check_range(reader, LeafRange.from_json(request), batch).to_json()


def _catch_up(path: str, table: str, batch: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    # Imported here: the ranges task starts faster without the store's modules.
    from eventsourcing.sqlite import SQLiteDatastore

    from ledger.integrity.hashing import LeafHasher
    from ledger.integrity.log import SQLiteMerkleRecorder, catch_up_log
    from ledger.integrity.scan import read_sqlite_rows

    datastore = SQLiteDatastore(path, lock_timeout=30)
    recorder = SQLiteMerkleRecorder(datastore)
    hasher = LeafHasher()

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
