"""Verifying the Merkle log one range of leaves at a time, so ranges can run in parallel.

The leaves are cut into ranges of ``width`` leaves, ``width`` a power of two: range
``r`` holds the leaves ``r * width <= i < (r + 1) * width`` and the events stored from
the position of its first leaf up to, not including, the position of the next
range's first leaf (for the last range: every later event). Each range is checked on
its own, a batch at a time: its events' positions must be its leaves' positions and
their hashes its leaves' hashes; events after its last leaf must lie past the log's
last position (stored since the log was last extended, "untracked").

Because a range starts at a multiple of its width, every perfect subtree of the
range's own compact frontier is a subtree of the whole tree too. Appending the
ranges' frontiers in order therefore rebuilds the whole log's frontier, and its root
at any recorded checkpoint's size, without hashing anything twice
(:func:`combine_ranges`).

A range only says whether it matched. On any disagreement the caller runs the
leaf-by-leaf pass, which names the first bad position and what is wrong with it.

This module imports no database driver: :mod:`ledger.integrity.worker` runs it in
worker processes that must start quickly.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ledger.integrity.hashing import LeafHasher, extend_frontier
from ledger.integrity.merkle import Frontier, from_hex

#: Positions and hashes read in one batch, in order.
Batch = tuple[list[int], list[bytes]]


@dataclass(frozen=True)
class LeafRange:
    """Leaves ``start <= i < end``, and the events at positions ``low <= p < high``."""

    start: int
    end: int
    low: int
    #: ``None`` for the last range: no upper bound.
    high: int | None
    #: The log's last position; an event after the last leaf must lie beyond it.
    last_position: int
    #: Tree sizes in ``(start, end]`` at which the frontier is wanted (checkpoints).
    cuts: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The range as JSON-able data (for a worker process)."""
        return {
            "start": self.start,
            "end": self.end,
            "low": self.low,
            "high": self.high,
            "last_position": self.last_position,
            "cuts": list(self.cuts),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeafRange:
        """The range :meth:`to_json` wrote."""
        return cls(
            int(data["start"]),
            int(data["end"]),
            int(data["low"]),
            None if data["high"] is None else int(data["high"]),
            int(data["last_position"]),
            tuple(int(cut) for cut in data["cuts"]),
        )


@dataclass
class RangeOutcome:
    """What checking one range found: whether it matched and, if so, its subtrees."""

    matched: bool
    checked: int = 0
    untracked: int = 0
    #: The range's own frontier over all its leaves (hex roots, largest first).
    frontier: list[str] = field(default_factory=list)
    #: For each wanted tree size, the range's own frontier over the leaves below it.
    at_cuts: dict[int, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The outcome as JSON-able data (from a worker process)."""
        return {
            "matched": self.matched,
            "checked": self.checked,
            "untracked": self.untracked,
            "frontier": self.frontier,
            "at_cuts": {str(size): roots for size, roots in self.at_cuts.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RangeOutcome:
        """The outcome :meth:`to_json` wrote."""
        return cls(
            bool(data["matched"]),
            int(data["checked"]),
            int(data["untracked"]),
            [str(root) for root in data["frontier"]],
            {int(size): [str(r) for r in roots] for size, roots in data["at_cuts"].items()},
        )


class RangeReader(Protocol):
    """Reads one range's events (as leaf hashes) and stored leaves, a batch at a time."""

    def event_hashes(self, low: int, high: int | None, limit: int) -> Batch:
        """Up to ``limit`` events from position ``low`` (below ``high``): positions, leaf hashes."""

    def leaf_hashes(self, start: int, end: int) -> Batch:
        """The stored leaves ``start <= i < end``: their positions and hashes."""


def check_range(reader: RangeReader, job: LeafRange, batch: int) -> RangeOutcome:
    """Check one range of the log against the stored events, ``batch`` rows per read."""
    frontier = Frontier()
    outcome = RangeOutcome(matched=False)
    cuts = sorted(job.cuts)
    index, low = job.start, job.low
    while True:
        wanted = min(batch, job.end - index)
        positions, hashes = reader.leaf_hashes(index, index + wanted) if wanted else ([], [])
        event_positions, digests = reader.event_hashes(low, job.high, batch)
        n = len(positions)
        if n != wanted or len(event_positions) < n:
            return outcome  # a hole in the leaves, or a leaf without its event: missing
        if event_positions[:n] != positions or digests[:n] != hashes:
            return outcome
        done = frontier.size
        while cuts and cuts[0] - job.start <= done + n:
            cut = cuts.pop(0) - job.start
            extend_frontier(frontier, digests[frontier.size - done : cut - done])
            outcome.at_cuts[job.start + cut] = frontier.to_list()
        extend_frontier(frontier, digests[frontier.size - done : n])
        tail = event_positions[n:]
        if tail and tail[0] <= job.last_position:
            return outcome  # an event the log passed over: inserted
        outcome.untracked += len(tail)
        index += n
        if len(event_positions) < batch:
            break
        low = event_positions[-1] + 1
    if index != job.end:
        return outcome  # leaves left over without events: missing
    outcome.matched = True
    outcome.checked = frontier.size
    outcome.frontier = frontier.to_list()
    return outcome


def plan_ranges(
    leaves: int,
    width: int,
    last_position: int,
    cut_sizes: Sequence[int],
    first_positions: Callable[[list[int]], dict[int, int]],
) -> list[LeafRange] | None:
    """Cut ``leaves`` leaves into ranges of ``width``; ``None`` if a range's first leaf is missing.

    ``first_positions`` maps leaf indexes to the positions the log recorded for them.
    """
    starts = list(range(0, leaves, width)) or [0]
    positions = first_positions(starts[1:])
    if any(start not in positions for start in starts[1:]):
        return None
    lows = [-(1 << 63)] + [positions[start] for start in starts[1:]]
    highs: list[int | None] = [*lows[1:], None]
    return [
        LeafRange(
            start,
            min(start + width, leaves),
            low,
            high,
            last_position,
            tuple(s for s in cut_sizes if start < s <= start + width),
        )
        for start, low, high in zip(starts, lows, highs, strict=True)
    ]


@dataclass
class CombinedScan:
    """The ranges' outcomes put together, in leaf order."""

    frontier: Frontier
    roots_at: dict[int, bytes]
    checked: int
    untracked: int


def combine_ranges(outcomes: Sequence[RangeOutcome]) -> CombinedScan:
    """The whole log's frontier, and its roots at the wanted sizes, from matched ranges."""
    total = Frontier()
    roots_at: dict[int, bytes] = {}
    untracked = 0
    for outcome in outcomes:
        for size, roots in outcome.at_cuts.items():
            partial = Frontier.from_list(total.to_list(), total.size)
            _append_frontier(partial, roots, size - total.size)
            roots_at[size] = partial.root()
        _append_frontier(total, outcome.frontier, outcome.checked)
        untracked += outcome.untracked
    return CombinedScan(total, roots_at, total.size, untracked)


def _append_frontier(frontier: Frontier, roots: list[str], size: int) -> None:
    """Append a range's own frontier of ``size`` leaves: each root a perfect subtree."""
    widths = [1 << bit for bit in reversed(range(size.bit_length())) if size >> bit & 1]
    for root, width in zip(roots, widths, strict=True):
        frontier.append_subtree(from_hex(root), width)


#: Runs one statement and returns its rows as tuples.
Execute = Callable[[str, tuple[Any, ...]], list[Any]]


class SQLiteRangeReader:
    """Reads a SQLite ledger's events and leaves, hashing the events here."""

    def __init__(self, events: Execute, leaves: Execute, table: str) -> None:
        """``events`` and ``leaves`` run statements on the ledger and on the log's tables.

        ``table`` holds the events. The two may be one database (an in-memory ledger).
        """
        self._events = events
        self._leaves = leaves
        self._table = table
        self._hasher = LeafHasher()

    def event_hashes(self, low: int, high: int | None, limit: int) -> Batch:
        """Up to ``limit`` events from position ``low`` (below ``high``): positions, leaf hashes."""
        bound = "" if high is None else " AND rowid < ?"
        params = (low, limit) if high is None else (low, high, limit)
        rows = self._events(
            "SELECT rowid, topic, originator_id, originator_version, state "
            f"FROM {self._table} WHERE rowid >= ?{bound} ORDER BY rowid LIMIT ?",
            params,
        )
        return [row[0] for row in rows], self._hasher.hash_rows(rows)

    def leaf_hashes(self, start: int, end: int) -> Batch:
        """The stored leaves ``start <= i < end``: their positions and hashes."""
        rows = self._leaves(
            "SELECT position, hash FROM merkle_leaves "
            "WHERE leaf_index >= ? AND leaf_index < ? ORDER BY leaf_index",
            (start, end),
        )
        return [row[0] for row in rows], [row[1] for row in rows]


def read_only_file(path: str) -> Execute:
    """Statements over a connection of its own to the SQLite file at ``path``, never writing.

    Each statement reads in its own transaction, so a reader never holds back the
    file's write-ahead log checkpoints between statements.
    """
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("PRAGMA query_only = 1")

    def execute(sql: str, params: tuple[Any, ...]) -> list[Any]:
        return connection.execute(sql, params).fetchall()

    return execute


def sqlite_file_reader(path: str, leaf_path: str, table: str) -> SQLiteRangeReader:
    """A reader of the ledger file at ``path`` and its leaf file (its own connections)."""
    return SQLiteRangeReader(read_only_file(path), read_only_file(leaf_path), table)


__all__ = [
    "CombinedScan",
    "Execute",
    "LeafRange",
    "RangeOutcome",
    "RangeReader",
    "SQLiteRangeReader",
    "check_range",
    "combine_ranges",
    "plan_ranges",
    "read_only_file",
    "sqlite_file_reader",
]
