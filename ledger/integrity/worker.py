"""A worker process checking ranges of a SQLite ledger's Merkle log.

Started by :mod:`ledger.integrity.parallel` as
``python -m ledger.integrity.worker <database> <event table> <batch>``: it reads one
JSON :class:`~ledger.integrity.ranges.LeafRange` per line on standard input and
answers each with one JSON :class:`~ledger.integrity.ranges.RangeOutcome` line on
standard output, until standard input closes. It opens its own connection to the
database and never writes to it.
"""

from __future__ import annotations

import json
import sys

from ledger.integrity.ranges import LeafRange, check_range, sqlite_file_reader


def main(argv: list[str]) -> int:
    """Serve ranges until standard input closes."""
    path, table, batch = argv[0], argv[1], int(argv[2])
    reader = sqlite_file_reader(path, table)
    for line in sys.stdin:
        outcome = check_range(reader, LeafRange.from_json(json.loads(line)), batch)
        sys.stdout.write(json.dumps(outcome.to_json()) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
