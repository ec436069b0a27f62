"""The domain of dspy-ledger and its store.

Aggregates and their events (``ledger.domain``), the eventsourcing application that
stores them (``ledger.application``), storage URLs (``ledger.storage``) and reading the
record back as plain data (``ledger.reading``). Nothing here imports DSPy: events hold
plain JSON-able data so that the record outlives any DSPy version.
"""

# Every process that opens a SQLite ledger (the program, its writer process, the
# checkpoint and verify workers) imports this package first.
from ledger import sqlite_locking as _sqlite_locking  # noqa: F401
