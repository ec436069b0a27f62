"""Spend and call counters shared by every process writing to one ledger database.

One small table, ``governance_counters``, keyed by (kind, scope, window start), lives
next to the events (same SQLite file, same PostgreSQL schema) and is reached through
the library's own datastore (its pool on PostgreSQL). Every change is one atomic
statement, so processes never lose each other's updates:

* a rate-limit slot is taken with an upsert that only increments while the count is
  under the limit (``ON CONFLICT ... DO UPDATE ... WHERE calls < limit RETURNING``):
  exact under any concurrency;
* spend is added after a call with an upsert (``amount = amount + excluded.amount``)
  and read before the next one: the check and the add are not one step, which is the
  documented over-spend window (docs/governance.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("dspy_ledger")

TABLE = "governance_counters"

_DDL = (
    "CREATE TABLE IF NOT EXISTS {t} ("
    "kind TEXT NOT NULL, scope TEXT NOT NULL, window_start TEXT NOT NULL, "
    "amount DOUBLE PRECISION NOT NULL DEFAULT 0, calls BIGINT NOT NULL DEFAULT 0, "
    "PRIMARY KEY (kind, scope, window_start))"
)

#: A key of one counter: (kind, scope, window start).
CounterKey = tuple[str, str, str]


class CounterStore:
    """The counters table on the ledger's datastore (SQLite or PostgreSQL)."""

    def __init__(self, datastore: Any) -> None:
        self._datastore = datastore
        schema = getattr(datastore, "schema", None)
        self._postgres = type(datastore).__name__.startswith("Postgres")
        self._table = f'"{schema}"."{TABLE}"' if self._postgres and schema else TABLE
        self._ready = False

    def _sql(self, text: str) -> str:
        text = text.replace("{t}", self._table)
        return text.replace("?", "%s") if self._postgres else text

    @contextmanager
    def _cursor(self, *, commit: bool) -> Iterator[Any]:
        self.ensure_table()
        with self._datastore.transaction(commit=commit) as cursor:
            yield cursor

    def ensure_table(self) -> None:
        """Create the counters table if needed (idempotent, safe from many processes)."""
        if self._ready:
            return
        for attempt in range(3):
            try:
                with self._datastore.transaction(commit=True) as cursor:
                    cursor.execute(self._sql(_DDL))
                break
            except Exception:
                # Two processes creating the table at once: one loses a catalog race.
                if attempt == 2:
                    raise
        self._ready = True

    def amounts(self, keys: Sequence[CounterKey]) -> dict[CounterKey, float]:
        """The USD counted so far under each key (0 for keys never counted)."""
        found: dict[CounterKey, float] = dict.fromkeys(keys, 0.0)
        if not keys:
            return found
        where = " OR ".join("(kind = ? AND scope = ? AND window_start = ?)" for _ in keys)
        params = [part for key in keys for part in key]
        with self._cursor(commit=False) as cursor:
            cursor.execute(
                self._sql(f"SELECT kind, scope, window_start, amount FROM {{t}} WHERE {where}"),
                params,
            )
            for row in cursor.fetchall():
                key = (str(row["kind"]), str(row["scope"]), str(row["window_start"]))
                found[key] = float(row["amount"])
        return found

    def add(self, keys: Sequence[CounterKey], amount: float) -> None:
        """Add ``amount`` USD and one call to each key, atomically per key."""
        if not keys:
            return
        with self._cursor(commit=True) as cursor:
            for key in keys:
                cursor.execute(
                    self._sql(
                        "INSERT INTO {t} (kind, scope, window_start, amount, calls) "
                        "VALUES (?, ?, ?, ?, 1) ON CONFLICT (kind, scope, window_start) "
                        "DO UPDATE SET amount = {t}.amount + excluded.amount, "
                        "calls = {t}.calls + 1"
                    ),
                    (*key, amount),
                )

    def take_call(self, key: CounterKey, limit: int) -> int | None:
        """Count one call under ``key`` if fewer than ``limit`` are counted.

        Returns the new count, or None if the limit was already reached (nothing
        counted). Older windows of the same kind and scope are pruned as a new one opens.
        """
        with self._cursor(commit=True) as cursor:
            cursor.execute(
                self._sql(
                    "INSERT INTO {t} (kind, scope, window_start, amount, calls) "
                    "VALUES (?, ?, ?, 0, 1) ON CONFLICT (kind, scope, window_start) "
                    "DO UPDATE SET calls = {t}.calls + 1 WHERE {t}.calls < ? RETURNING calls"
                ),
                (*key, limit),
            )
            row = cursor.fetchone()
            if row is None:
                return None
            count = int(row["calls"])
            if count == 1:
                cursor.execute(
                    self._sql("DELETE FROM {t} WHERE kind = ? AND scope = ? AND window_start < ?"),
                    key,
                )
            return count

    def rows(self, kind_prefix: str = "") -> list[dict[str, Any]]:
        """Every counter whose kind starts with ``kind_prefix``, newest window first."""
        with self._cursor(commit=False) as cursor:
            cursor.execute(
                self._sql(
                    "SELECT kind, scope, window_start, amount, calls FROM {t} "
                    "WHERE kind LIKE ? ORDER BY window_start DESC, kind, scope"
                ),
                (kind_prefix + "%",),
            )
            return [dict(row) for row in cursor.fetchall()]
