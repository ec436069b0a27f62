"""Verification: recompute every leaf from the stored rows and compare with the log.

One pass, in position order, reading events and stored leaves in batches side by
side. The first disagreement is reported, with its position and kind:

* ``modified``  a stored event hashes differently from its recorded leaf;
* ``reordered`` ... and its hash is recorded at *another* position (rows moved or swapped);
* ``missing``   the log has a leaf for a position that holds no event (deleted rows,
  truncated tail);
* ``inserted``  an event sits at a position the log passed over without a leaf;
* ``checkpoint`` a checkpoint recorded in the ledger, or the one given to compare
  against, does not match the recomputed tree;
* ``frontier``  the log's stored frontier does not match its own leaves.

Events stored after the log's last position are not yet covered ("untracked"); they
are hashed into the log afterwards, and only when everything else verified.

A log behind the checkpoints recorded in the ledger (its leaf file was lost, or is an
older copy) is first extended to the last of them from the stored events, so that every
recorded checkpoint is checked against the events ("rehashed").
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from eventsourcing.persistence import Notification
from pydantic import BaseModel

from ledger.application import LedgerApplication
from ledger.integrity.checkpoint import CHECKPOINT_TOPIC, Checkpoint, key_id
from ledger.integrity.errors import SignatureInvalidError
from ledger.integrity.log import MerkleLog
from ledger.integrity.log_store import LeafRow, LogState
from ledger.integrity.merkle import Frontier, MerkleError, verify_consistency
from ledger.integrity.parallel import RangeScanner, ScanSettings

ProblemKind = Literal[
    "modified", "missing", "inserted", "reordered", "checkpoint", "frontier", "signature"
]


class Problem(BaseModel):
    """The first thing found wrong, where, and why."""

    kind: ProblemKind
    position: int | None
    leaf_index: int | None
    message: str


class VerifyReport(BaseModel):
    """The outcome of :func:`verify_log`."""

    ok: bool
    events_checked: int
    tree_size: int
    root_hash: str
    checkpoints_checked: int
    signatures_checked: int = 0
    untracked_events: int
    events_added: int
    events_rehashed: int = 0
    against_tree_size: int | None = None
    problem: Problem | None = None
    #: The log's size and root once the events added after the check are in it (the
    #: root a checkpoint made now would record); the checked ones when none were added.
    log_tree_size: int | None = None
    log_root_hash: str | None = None


class _RecordedCheckpoint(BaseModel):
    position: int
    tree_size: int
    root_hash: str
    last_position: int = 0
    time: str = ""
    key_id: str | None = None
    signature: str | None = None

    def checkpoint(self) -> Checkpoint:
        """The checkpoint as it was signed."""
        return Checkpoint.from_recorded(
            self.tree_size,
            self.root_hash,
            self.last_position,
            self.time,
            key_id=self.key_id,
            signature=self.signature,
        )


def recorded_checkpoints(app: LedgerApplication) -> list[_RecordedCheckpoint]:
    """The checkpoints recorded in the ledger (undecodable ones are left to the leaf check)."""
    found: list[_RecordedCheckpoint] = []
    start = 1
    while True:
        batch = app.recorder.select_notifications(
            start=start, limit=1000, topics=[CHECKPOINT_TOPIC]
        )
        for notification in batch:
            try:
                event = app.decode(notification)
                found.append(
                    _RecordedCheckpoint(
                        position=notification.id,
                        tree_size=int(event.tree_size),
                        root_hash=str(event.root_hash),
                        last_position=int(event.last_position),
                        time=str(event.checkpoint_time),
                        key_id=event.key_id,
                        signature=event.signature,
                    )
                )
            except Exception:
                continue
        if len(batch) < 1000:
            return found
        start = batch[-1].id + 1


def verify_log(
    app: LedgerApplication,
    log: MerkleLog,
    *,
    against: Checkpoint | None = None,
    update: bool = True,
    progress: Callable[[int], None] | None = None,
    batched: bool = True,
    public_key: Ed25519PublicKey | None = None,
    settings: ScanSettings | None = None,
) -> VerifyReport:
    """Recompute the whole log from the stored events; report the first problem found.

    With ``against``, also prove that today's log extends that checkpoint. With
    ``update`` (the default), hash events newer than the log once all else verified.
    Events that a recorded checkpoint covers but the log lacks (a lost leaf file) are
    hashed first either way, so that the checkpoint is checked.
    ``batched`` compares whole ranges first, side by side as ``settings`` says (default:
    from the environment, see :mod:`ledger.integrity.parallel`); ``False``: leaf by
    leaf throughout.
    With ``public_key``, every recorded checkpoint signed by that key must carry a
    valid signature (a rewritten log cannot be re-signed without the private key).
    """
    state = log.state()
    with ExitStack() as workers:
        # Workers start first, so that they get ready while the checkpoints are read.
        scanner = workers.enter_context(RangeScanner(app, log, settings)) if batched else None
        checkpoints: dict[int, list[_RecordedCheckpoint]] = {}
        recorded_list = recorded_checkpoints(app)
        for recorded in recorded_list:
            checkpoints.setdefault(recorded.tree_size, []).append(recorded)
        rehashed = _catch_up_to_checkpoints(log, state, recorded_list)
        if rehashed:
            state = log.state()
            if scanner is not None:
                workers.close()  # they were started for the shorter log
                scanner = workers.enter_context(RangeScanner(app, log, settings))
        signed = _check_signatures(recorded_list, public_key)
        if isinstance(signed, Problem):
            return _report(state, against, _Scan(Frontier(), 0, 0, 0, rehashed), signed)
        fast = (
            None
            if scanner is None
            else _fast_scan(scanner, state.last_position, checkpoints, progress)
        )
    if fast is not None:
        fast.rehashed = rehashed
        return _finish(log, state, against, update, fast).model_copy(
            update={"signatures_checked": signed}
        )
    frontier = Frontier()
    rows = iter(app.notifications(batch_size=log.batch_size))
    leaves = log.iter_leaves()
    row: Notification | None = next(rows, None)
    leaf: LeafRow | None = next(leaves, None)
    checked = untracked = checkpoints_checked = pending = 0

    def report(
        kind: ProblemKind, position: int | None, leaf_index: int | None, message: str
    ) -> VerifyReport:
        # The first problem found, reported with what had been verified before it.
        scan = _Scan(frontier, checked, untracked, checkpoints_checked, rehashed)
        return _report(state, against, scan, _problem(kind, position, leaf_index, message))

    while row is not None or leaf is not None:
        if leaf is None:
            assert row is not None
            if row.id <= state.last_position:
                return report(
                    "inserted",
                    row.id,
                    None,
                    f"An event was inserted at position {row.id}, "
                    "which the Merkle log passed over when it was built.",
                )
            untracked += 1
            row = next(rows, None)
            continue
        if row is None or row.id > leaf.position:
            return report(
                "missing",
                leaf.position,
                leaf.index,
                f"The event at position {leaf.position} (leaf {leaf.index}) "
                "is missing from the store: it was deleted.",
            )
        if row.id < leaf.position:
            return report(
                "inserted",
                row.id,
                None,
                f"An event was inserted at position {row.id}, which has no leaf in the Merkle log.",
            )
        row_tuple = (row.id, row.topic, row.originator_id, row.originator_version, row.state)
        digest = log.leaf_hasher.hash_rows([row_tuple])[0]
        if digest != leaf.hash:
            moved = log.recorder.leaf_with_hash(digest)
            if moved is not None and moved.position != row.id:
                return report(
                    "reordered",
                    row.id,
                    leaf.index,
                    f"The event stored at position {row.id} was recorded at "
                    f"position {moved.position}: events were moved or swapped.",
                )
            return report(
                "modified",
                row.id,
                leaf.index,
                f"The event at position {row.id} (leaf {leaf.index}) was modified "
                "after it was recorded: its bytes no longer hash to the recorded leaf.",
            )
        frontier.append(digest)
        checked += 1
        pending += 1
        for recorded in checkpoints.get(frontier.size, ()):
            checkpoints_checked += 1
            if recorded.root_hash != frontier.root().hex():
                return report(
                    "checkpoint",
                    recorded.position,
                    None,
                    f"The checkpoint recorded at position {recorded.position} "
                    f"says the first {recorded.tree_size} events have root "
                    f"{recorded.root_hash[:16]}..., but they hash to "
                    f"{frontier.root().hex()[:16]}...: the log was rewritten.",
                )
        if progress is not None and pending >= 1000:
            progress(pending)
            pending = 0
        row = next(rows, None)
        leaf = next(leaves, None)
    if progress is not None and pending:
        progress(pending)
    scan = _Scan(frontier, checked, untracked, checkpoints_checked, rehashed)
    result = _finish(log, state, against, update, scan)
    return result.model_copy(update={"signatures_checked": signed})


@dataclass
class _Scan:
    """What a pass over events and leaves found, when every leaf matched its event."""

    frontier: Frontier
    checked: int
    untracked: int
    checkpoints_checked: int
    #: Events hashed into the log again before the pass (see :func:`_catch_up_to_checkpoints`).
    rehashed: int = 0


def _catch_up_to_checkpoints(
    log: MerkleLog, state: LogState, recorded: list[_RecordedCheckpoint]
) -> int:
    """Extend the log to the last checkpoint recorded in the ledger; the events hashed.

    Checkpoints are made from the log, so the log is behind one only when its leaves
    were lost (a SQLite ledger's leaf file deleted, or replaced by an older copy). The
    leaves are derived data: they are hashed again from the stored events, and the
    pass that follows checks the recorded checkpoints against them, as always.
    """
    ahead = [entry for entry in recorded if entry.tree_size > state.frontier.size]
    if not ahead:
        return 0
    last = max(ahead, key=lambda entry: entry.tree_size)
    return log.catch_up(until=last.last_position or None)


def _check_signatures(
    recorded: list[_RecordedCheckpoint], public_key: Ed25519PublicKey | None
) -> int | Problem:
    """Check the signature of every recorded checkpoint signed by ``public_key``."""
    if public_key is None:
        return 0
    wanted = key_id(public_key)
    checked = 0
    for entry in recorded:
        if entry.key_id != wanted:
            continue
        try:
            entry.checkpoint().check_signature(public_key)
        except (SignatureInvalidError, ValueError):  # ValueError: the fields were mangled
            return _problem(
                "signature",
                entry.position,
                None,
                f"The checkpoint recorded at position {entry.position} "
                f"(tree size {entry.tree_size}) is not validly signed by key {wanted[:16]}...: "
                "it was altered after signing.",
            )
        checked += 1
    return checked


def _problem(
    kind: ProblemKind, position: int | None, leaf_index: int | None, message: str
) -> Problem:
    return Problem(kind=kind, position=position, leaf_index=leaf_index, message=message)


def _report(
    state: LogState, against: Checkpoint | None, scan: _Scan, problem: Problem | None
) -> VerifyReport:
    return VerifyReport(
        ok=problem is None,
        events_checked=scan.checked,
        tree_size=state.frontier.size,
        root_hash=state.frontier.root().hex(),
        checkpoints_checked=scan.checkpoints_checked,
        untracked_events=scan.untracked,
        events_added=0,
        events_rehashed=scan.rehashed,
        against_tree_size=against.tree_size if against else None,
        problem=problem,
    )


def _fast_scan(
    scanner: RangeScanner,
    last_position: int,
    checkpoints: dict[int, list[_RecordedCheckpoint]],
    progress: Callable[[int], None] | None,
) -> _Scan | None:
    """Check the log range by range, side by side; ``None`` at the first disagreement.

    Nothing is reported from here: on any disagreement the leaf-by-leaf pass runs and
    names the first bad position exactly.
    """
    scanned = scanner.scan(last_position, list(checkpoints), progress)
    if scanned is None:
        return None
    checked = 0
    for size, root in scanned.roots_at.items():
        if any(recorded.root_hash != root.hex() for recorded in checkpoints[size]):
            return None
        checked += len(checkpoints[size])
    return _Scan(scanned.frontier, scanned.checked, scanned.untracked, checked)


def _finish(
    log: MerkleLog,
    state: LogState,
    against: Checkpoint | None,
    update: bool,
    scan: _Scan,
) -> VerifyReport:
    """Check the log's own state and ``against``; hash new events if all verified."""
    frontier = scan.frontier

    def report(problem: Problem | None) -> VerifyReport:
        return _report(state, against, scan, problem)

    if frontier.size != state.frontier.size or frontier.root() != state.frontier.root():
        return report(
            _problem(
                "frontier",
                state.last_position,
                None,
                f"The Merkle log's stored state ({state.frontier.size} leaves) does not "
                f"match its {frontier.size} verified leaves; the log tables were altered.",
            )
        )
    if against is not None:
        problem = _check_against(log, against, frontier)
        if problem is not None:
            return report(problem)
    result = report(None)
    result.log_tree_size, result.log_root_hash = result.tree_size, result.root_hash
    if update and scan.untracked:
        result.events_added = log.catch_up()
        grown = log.state().frontier
        result.log_tree_size, result.log_root_hash = grown.size, grown.root().hex()
    return result


def _check_against(log: MerkleLog, against: Checkpoint, frontier: Frontier) -> Problem | None:
    size = frontier.size
    if against.tree_size > size:
        return _problem(
            "checkpoint",
            against.last_position,
            None,
            f"The checkpoint covers {against.tree_size} events but the log holds only "
            f"{size}: events were removed, or the checkpoint is from another ledger.",
        )
    try:
        proof = log.hasher().consistency_proof(against.tree_size, size)
    except MerkleError as error:
        return _problem("frontier", None, None, str(error))
    if not verify_consistency(against.tree_size, size, against.root_hash, frontier.root(), proof):
        return _problem(
            "checkpoint",
            against.last_position,
            None,
            f"Today's log does not extend the checkpoint of {against.tree_size} events: "
            "its first events were rewritten, or the checkpoint is from another ledger.",
        )
    return None
