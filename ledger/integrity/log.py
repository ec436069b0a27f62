"""The Merkle log over the stored events, kept as a tracked projection.

Leaf ``i`` of the log is the ``i``-th stored event in position (notification id)
order, hashed as :mod:`ledger.integrity.leaf` defines. Its tables
(:mod:`ledger.integrity.log_store`) live in the ledger's PostgreSQL schema, in a file
of their own next to a SQLite ledger file (:mod:`ledger.integrity.leaf_file`), or in an
in-memory ledger's own database.

:meth:`MerkleLog.catch_up` reads the events after the last tracked position in
batches and writes their leaves, the new frontier and the tracking record in one
transaction per batch, so the log is exactly-once and resumable and each event is
hashed once, never recomputed on every write. Two processes catching up at the
same time conflict on the leaf primary key; the loser rolls back and re-reads.

Positions need not be contiguous (PostgreSQL sequences skip ids of rolled-back
writes), which is why leaves record the position they were read from.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from eventsourcing.persistence import IntegrityError as StoreIntegrityError
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from ledger.application import LedgerApplication, setup_lock
from ledger.integrity.hashing import EventRow, LeafHasher, extend_frontier
from ledger.integrity.leaf_file import (
    claim_leaf_file,
    leaf_file_of,
    ledger_file,
    open_leaf_datastore,
    prepare_leaf_file,
)
from ledger.integrity.log_store import (
    TRACKING_NAME,
    LeafRow,
    LogState,
    MerkleRecorder,
    PostgresMerkleRecorder,
    SQLiteMerkleRecorder,
)
from ledger.integrity.merkle import Frontier, SubtreeHasher
from ledger.integrity.scan import read_event_rows

#: Events hashed per transaction while catching up.
DEFAULT_BATCH_SIZE: Final = 5000
#: Events hashed between hand-overs of the GIL when catching up in the background.
_BACKGROUND_SLICE: Final = 200


def open_recorder(app: LedgerApplication, leaf_path: str | None) -> MerkleRecorder:
    """Open the log's tables: in the leaf file at ``leaf_path``, else beside the events.

    A leaf file is made ready first (:func:`prepare_leaf_file`: the ledger's identity,
    a log moved out of the ledger file) and must belong to this ledger
    (:class:`~ledger.integrity.leaf_file.LeafFileMismatchError` if not).
    """
    datastore = app.recorder.datastore  # type: ignore[attr-defined]
    if leaf_path is not None:
        identity = prepare_leaf_file(datastore, leaf_path)
        leaves = open_leaf_datastore(leaf_path)
        try:
            leaf_recorder = SQLiteMerkleRecorder(leaves)
            leaf_recorder.create_table()
            with leaves.transaction(commit=True) as cursor:
                claim_leaf_file(cursor, identity, leaf_path)
        except BaseException:
            leaves.close()
            raise
        return leaf_recorder
    recorder: MerkleRecorder
    if isinstance(datastore, SQLiteDatastore):
        recorder = SQLiteMerkleRecorder(datastore)
    elif isinstance(datastore, PostgresDatastore):
        recorder = PostgresMerkleRecorder(datastore)
    else:  # pragma: no cover - LedgerApplication only builds these two
        msg = f"The Merkle log does not support {type(datastore).__name__}."
        raise TypeError(msg)
    # Creating the tables records the library's "__migration__" tracking row: processes
    # opening one new PostgreSQL ledger at once must take turns, as the event store does.
    with setup_lock(app.store):
        recorder.create_table()
    return recorder


Progress = Callable[[int], None]


class MerkleLog:
    """The ledger's Merkle log: catch up with the events, read leaves, build proofs."""

    def __init__(self, app: LedgerApplication, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        """The log of ``app``'s store; its tables are opened (and created) on first use."""
        self.app = app
        self.batch_size = batch_size
        self.leaf_hasher = LeafHasher()
        ledger_path = ledger_file(app.recorder.datastore)  # type: ignore[attr-defined]
        #: The SQLite file holding the log's tables; ``None``: the ledger's own database.
        self.leaf_path = None if ledger_path is None else leaf_file_of(ledger_path)
        self._recorder: MerkleRecorder | None = None
        self._opening = threading.Lock()

    @property
    def recorder(self) -> MerkleRecorder:
        """The log's tables, opened on first use (see :func:`open_recorder`)."""
        if self._recorder is None:
            with self._opening:
                if self._recorder is None:
                    self._recorder = open_recorder(self.app, self.leaf_path)
        return self._recorder

    def open(self) -> None:
        """Open the log's tables now rather than at first use (:func:`open_recorder`)."""
        _ = self.recorder

    def close(self) -> None:
        """Close the leaf file, if the log has one open (it reopens on next use)."""
        with self._opening:
            recorder: Any = self._recorder
            self._recorder = None
        if recorder is not None and self.leaf_path is not None:
            recorder.datastore.close()

    def state(self) -> LogState:
        """The stored frontier: tree size, root and last position hashed."""
        return self.recorder.load_state()

    def catch_up(
        self,
        progress: Progress | None = None,
        *,
        background: bool = False,
        until: int | None = None,
    ) -> int:
        """Hash the events stored after the log's last position; return how many.

        Only the new events are read: the tree grows from the stored frontier. With
        ``background``, other threads get the interpreter every few hundred events:
        a thread that hashes for milliseconds on end makes a recording thread wait
        that long each time it comes back from the database (the GIL's switch
        interval), which slows recording far more than the hashing costs. With
        ``until``, events after that position are left for later.
        """
        return catch_up_log(
            self.recorder,
            lambda start, limit: read_event_rows(self.app, start, limit),
            self.leaf_hasher,
            batch_size=self.batch_size,
            progress=progress,
            background=background,
            until=until,
        )

    def iter_leaves(self, start_index: int = 0) -> Iterator[LeafRow]:
        """Yield the stored leaves in index order, in batches."""
        index = start_index
        while True:
            batch = self.recorder.select_leaves(index, self.batch_size)
            yield from batch
            if len(batch) < self.batch_size:
                return
            index = batch[-1].index + 1

    def fetch(self, start: int, end: int) -> Sequence[bytes]:
        """Leaf hashes ``start <= i < end`` (the :class:`SubtreeHasher` callback)."""
        # Filtering on the index makes a hole in the leaf table show up as a short read
        # (which SubtreeHasher reports) rather than as shifted leaves.
        rows = self.recorder.select_leaves(start, end - start)
        return [leaf.hash for leaf in rows if leaf.index < end]

    def hasher(self) -> SubtreeHasher:
        """A hasher over the stored leaves, for roots and proofs at any size."""
        return SubtreeHasher(self.fetch)


def catch_up_log(
    recorder: MerkleRecorder,
    read_rows: Callable[[int, int], list[EventRow]],
    hasher: LeafHasher,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    background: bool = False,
    until: int | None = None,
) -> int:
    """Hash the events after the log's last position into ``recorder``; return how many.

    ``read_rows(start, limit)`` reads up to ``limit`` events from position ``start``.
    See :meth:`MerkleLog.catch_up` (which this serves, as does a catch-up worker process).
    """
    added = 0
    while True:
        state = recorder.load_state()
        batch = read_rows(state.last_position + 1, batch_size)
        if until is not None:
            batch = [row for row in batch if row[0] <= until]
        if not batch:
            return added
        frontier = Frontier.from_list(state.frontier.to_list(), state.frontier.size)
        if background:
            digests = []
            for start in range(0, len(batch), _BACKGROUND_SLICE):
                time.sleep(0)  # hand over the GIL to any thread waiting for it
                digests += hasher.hash_rows(batch[start : start + _BACKGROUND_SLICE])
        else:
            digests = hasher.hash_rows(batch)
        first = frontier.size
        indexes = range(first, first + len(batch))
        leaves = list(zip(indexes, [row[0] for row in batch], digests, strict=True))
        extend_frontier(frontier, digests)
        last = batch[-1][0]
        try:
            recorder.append(leaves, LogState(frontier, last), Tracking(TRACKING_NAME, last))
        except StoreIntegrityError:
            # Another process hashed this batch first; re-read its frontier.
            continue
        added += len(leaves)
        if progress is not None:
            progress(len(leaves))
