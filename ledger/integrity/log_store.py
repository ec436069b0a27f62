"""The Merkle log's tables, one recorder per backend.

* ``merkle_leaves`` (PostgreSQL: ``dspyledger_merkle_leaves``): ``leaf_index``,
  ``position``, ``hash`` (32 bytes), one row per event;
* ``merkle_frontier`` (``dspyledger_merkle_frontier``): one row with the tree size,
  the last position hashed and the compact frontier (:class:`Frontier`);
* the eventsourcing tracking table (SQLite ``tracking``, PostgreSQL
  ``dspyledger_merkle_tracking``) under the name ``DspyLedgerMerkleLog``.

On PostgreSQL they live in the ledger's schema. A SQLite ledger file keeps them in a
file of its own (:mod:`ledger.integrity.leaf_file`); an in-memory one, in its database.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from psycopg.sql import SQL, Identifier

from ledger.integrity.merkle import Frontier

#: Name of the log in the tracking table.
TRACKING_NAME: Final = "DspyLedgerMerkleLog"


@dataclass(frozen=True)
class LeafRow:
    """One stored leaf: its index in the log, the position it came from, its hash."""

    index: int
    position: int
    hash: bytes


#: A leaf as read in bulk: (leaf index, position, hash).
LeafTuple = tuple[int, int, bytes]


@dataclass(frozen=True)
class LogState:
    """The stored frontier and the last position it covers."""

    frontier: Frontier
    last_position: int


class MerkleRecorder(Protocol):
    """What the log needs from its store (one implementation per backend)."""

    def create_table(self) -> None:
        """Create the log's tables if they do not exist."""

    def load_state(self) -> LogState:
        """Return the stored frontier (the empty one if nothing was hashed yet)."""

    def append(self, leaves: Sequence[LeafTuple], state: LogState, tracking: Tracking) -> None:
        """Write leaves (index, position, hash), the new frontier and tracking at once."""

    def select_leaves(self, start_index: int, limit: int) -> list[LeafRow]:
        """Return up to ``limit`` leaves from ``start_index``, in index order."""

    def select_leaf_tuples(self, start_index: int, limit: int) -> list[LeafTuple]:
        """Like :meth:`select_leaves`, as plain (index, position, hash) tuples."""

    def leaf_at(self, position: int) -> LeafRow | None:
        """Return the leaf recorded for a position, if any."""

    def leaf_count(self) -> int:
        """One more than the highest leaf index stored (0 for none)."""

    def positions_of(self, indexes: list[int]) -> dict[int, int]:
        """The positions recorded for the given leaf indexes (absent ones left out)."""

    def leaf_with_hash(self, hash_: bytes) -> LeafRow | None:
        """Return a leaf with this hash, if any (used to recognise moved rows)."""


def _state_json(state: LogState) -> str:
    return json.dumps(state.frontier.to_list())


def _state_from(size: int, position: int, hashes: str) -> LogState:
    return LogState(Frontier.from_list(json.loads(hashes), size), position)


class _LeafQueries:
    """The leaf lookups both stores make alike: each store supplies its parameter mark
    and :meth:`_leaf_tuples`, which runs ``SELECT leaf_index, position, hash`` with the
    given ``WHERE`` clause."""

    _mark: str  # the database driver's parameter placeholder

    def _leaf_tuples(self, where: str, params: Sequence[Any]) -> list[LeafTuple]:
        raise NotImplementedError

    def _leaves(self, where: str, params: Sequence[Any]) -> list[LeafRow]:
        return [LeafRow(*row) for row in self._leaf_tuples(where, params)]

    def select_leaf_tuples(self, start_index: int, limit: int) -> list[LeafTuple]:
        """Like :meth:`select_leaves`, as plain (index, position, hash) tuples."""
        mark = self._mark
        where = f"WHERE leaf_index >= {mark} ORDER BY leaf_index LIMIT {mark}"
        return self._leaf_tuples(where, (start_index, limit))

    def select_leaves(self, start_index: int, limit: int) -> list[LeafRow]:
        """Return leaves from ``start_index`` in index order."""
        return [LeafRow(*row) for row in self.select_leaf_tuples(start_index, limit)]

    def leaf_at(self, position: int) -> LeafRow | None:
        """Return the leaf recorded for ``position``."""
        found = self._leaves(f"WHERE position = {self._mark}", (position,))
        return found[0] if found else None

    def leaf_with_hash(self, hash_: bytes) -> LeafRow | None:
        """Return a leaf with this hash."""
        found = self._leaves(f"WHERE hash = {self._mark} LIMIT 1", (hash_,))
        return found[0] if found else None


class SQLiteMerkleRecorder(_LeafQueries, SQLiteTrackingRecorder):
    """The Merkle log's tables in a SQLite ledger."""

    _mark = "?"

    def construct_create_table_statements(self) -> list[str]:
        """Add the leaves and frontier tables to eventsourcing's tracking table."""
        statements = super().construct_create_table_statements()
        statements.append(
            "CREATE TABLE IF NOT EXISTS merkle_leaves (leaf_index INTEGER PRIMARY KEY, "
            "position INTEGER NOT NULL UNIQUE, hash BLOB NOT NULL)"
        )
        statements.append(
            "CREATE TABLE IF NOT EXISTS merkle_frontier (log TEXT PRIMARY KEY, "
            "size INTEGER NOT NULL, last_position INTEGER NOT NULL, hashes TEXT NOT NULL)"
        )
        return statements

    def load_state(self) -> LogState:
        """Return the stored frontier."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT size, last_position, hashes FROM merkle_frontier WHERE log=?",
                (TRACKING_NAME,),
            )
            row = c.fetchone()
        if row is None:
            return LogState(Frontier(), 0)
        return _state_from(row[0], row[1], row[2])

    def append(self, leaves: Sequence[LeafTuple], state: LogState, tracking: Tracking) -> None:
        """Write leaves (index, position, hash), frontier and tracking in one transaction."""
        with self.datastore.transaction(commit=True) as c:
            c.executemany(
                "INSERT INTO merkle_leaves (leaf_index, position, hash) VALUES (?, ?, ?)",
                leaves,
            )
            c.execute(
                "INSERT INTO merkle_frontier (log, size, last_position, hashes) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (log) DO UPDATE SET size=excluded.size, "
                "last_position=excluded.last_position, hashes=excluded.hashes",
                (TRACKING_NAME, state.frontier.size, state.last_position, _state_json(state)),
            )
            self._insert_tracking(c, tracking)

    def _leaf_tuples(self, where: str, params: Sequence[Any]) -> list[LeafTuple]:
        with self.datastore.transaction(commit=False) as c:
            c.row_factory = None  # type: ignore[attr-defined]  # tuples, not Row objects
            c.execute(f"SELECT leaf_index, position, hash FROM merkle_leaves {where}", params)
            rows: list[LeafTuple] = c.fetchall()
            return rows

    def leaf_count(self) -> int:
        """One more than the highest leaf index stored (0 for none)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT coalesce(max(leaf_index) + 1, 0) FROM merkle_leaves")
            return int(c.fetchone()[0])

    def positions_of(self, indexes: list[int]) -> dict[int, int]:
        """The positions recorded for the given leaf indexes (absent ones left out)."""
        found: dict[int, int] = {}
        for chunk in _chunks(indexes):
            marks = ", ".join("?" * len(chunk))
            for index, position, _ in self._leaf_tuples(f"WHERE leaf_index IN ({marks})", chunk):
                found[index] = position
        return found


class PostgresMerkleRecorder(_LeafQueries, PostgresTrackingRecorder):
    """The Merkle log's tables in a PostgreSQL ledger (in the URL's schema)."""

    _mark = "%s"

    def __init__(self, datastore: PostgresDatastore, *, prefix: str = "dspyledger_merkle") -> None:
        """Declare the leaves, frontier and tracking tables named after ``prefix``."""
        super().__init__(datastore, tracking_table_name=f"{prefix}_tracking")
        schema = Identifier(datastore.schema)
        self.leaves_table = SQL("{0}.{1}").format(schema, Identifier(f"{prefix}_leaves"))
        self.frontier_table = SQL("{0}.{1}").format(schema, Identifier(f"{prefix}_frontier"))
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} (leaf_index bigint PRIMARY KEY, "
                "position bigint NOT NULL UNIQUE, hash bytea NOT NULL)"
            ).format(self.leaves_table)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} (log text PRIMARY KEY, size bigint NOT NULL, "
                "last_position bigint NOT NULL, hashes text NOT NULL)"
            ).format(self.frontier_table)
        )

    def load_state(self) -> LogState:
        """Return the stored frontier."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT size, last_position, hashes FROM {0} WHERE log = %s").format(
                    self.frontier_table
                ),
                (TRACKING_NAME,),
            )
            row = curs.fetchone()
        if row is None:
            return LogState(Frontier(), 0)
        return _state_from(row["size"], row["last_position"], row["hashes"])

    def append(self, leaves: Sequence[LeafTuple], state: LogState, tracking: Tracking) -> None:
        """Write leaves (index, position, hash), frontier and tracking in one transaction."""
        with self.datastore.transaction(commit=True) as curs:
            curs.executemany(
                SQL("INSERT INTO {0} (leaf_index, position, hash) VALUES (%s, %s, %s)").format(
                    self.leaves_table
                ),
                leaves,
            )
            curs.execute(
                SQL(
                    "INSERT INTO {0} (log, size, last_position, hashes) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (log) DO UPDATE SET size = EXCLUDED.size, "
                    "last_position = EXCLUDED.last_position, hashes = EXCLUDED.hashes"
                ).format(self.frontier_table),
                (TRACKING_NAME, state.frontier.size, state.last_position, _state_json(state)),
            )
            self._insert_tracking(curs, tracking)

    def _leaf_tuples(self, where: str, params: Sequence[Any]) -> list[LeafTuple]:
        query = SQL("SELECT leaf_index, position, hash FROM {0} ").format(self.leaves_table)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query + SQL(where), params)
            return [(r["leaf_index"], r["position"], bytes(r["hash"])) for r in curs.fetchall()]

    def leaf_count(self) -> int:
        """One more than the highest leaf index stored (0 for none)."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL("SELECT coalesce(max(leaf_index) + 1, 0) AS n FROM {0}").format(
                    self.leaves_table
                )
            )
            row = curs.fetchone()
        assert row is not None
        return int(row["n"])

    def positions_of(self, indexes: list[int]) -> dict[int, int]:
        """The positions recorded for the given leaf indexes (absent ones left out)."""
        found: dict[int, int] = {}
        for chunk in _chunks(indexes):
            for index, position, _ in self._leaf_tuples("WHERE leaf_index = ANY(%s)", (chunk,)):
                found[index] = position
        return found


def _chunks(values: list[int], size: int = 500) -> list[list[int]]:
    return [values[i : i + size] for i in range(0, len(values), size)]
