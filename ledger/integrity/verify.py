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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from eventsourcing.persistence import Notification
from pydantic import BaseModel

from ledger.application import LedgerApplication
from ledger.integrity.checkpoint import CHECKPOINT_TOPIC, Checkpoint
from ledger.integrity.leaf import event_leaf_hash
from ledger.integrity.log import LeafRow, MerkleLog
from ledger.integrity.merkle import Frontier, MerkleError, verify_consistency

ProblemKind = Literal["modified", "missing", "inserted", "reordered", "checkpoint", "frontier"]


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
    untracked_events: int
    events_added: int
    against_tree_size: int | None = None
    problem: Problem | None = None


class _RecordedCheckpoint(BaseModel):
    position: int
    tree_size: int
    root_hash: str


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
) -> VerifyReport:
    """Recompute the whole log from the stored events; report the first problem found.

    With ``against``, also prove that today's log extends that checkpoint. With
    ``update`` (the default), hash events newer than the log once all else verified.
    """
    state = log.state()
    checkpoints: dict[int, list[_RecordedCheckpoint]] = {}
    for recorded in recorded_checkpoints(app):
        checkpoints.setdefault(recorded.tree_size, []).append(recorded)
    frontier = Frontier()
    rows = iter(app.notifications(batch_size=log.batch_size))
    leaves = log.iter_leaves()
    row: Notification | None = next(rows, None)
    leaf: LeafRow | None = next(leaves, None)
    checked = untracked = checkpoints_checked = pending = 0

    def report(problem: Problem | None) -> VerifyReport:
        return VerifyReport(
            ok=problem is None,
            events_checked=checked,
            tree_size=state.frontier.size,
            root_hash=state.frontier.root().hex(),
            checkpoints_checked=checkpoints_checked,
            untracked_events=untracked,
            events_added=0,
            against_tree_size=against.tree_size if against else None,
            problem=problem,
        )

    while row is not None or leaf is not None:
        if leaf is None:
            assert row is not None
            if row.id <= state.last_position:
                return report(
                    Problem(
                        kind="inserted",
                        position=row.id,
                        leaf_index=None,
                        message=f"An event was inserted at position {row.id}, "
                        "which the Merkle log passed over when it was built.",
                    )
                )
            untracked += 1
            row = next(rows, None)
            continue
        if row is None or row.id > leaf.position:
            return report(
                Problem(
                    kind="missing",
                    position=leaf.position,
                    leaf_index=leaf.index,
                    message=f"The event at position {leaf.position} (leaf {leaf.index}) "
                    "is missing from the store: it was deleted.",
                )
            )
        if row.id < leaf.position:
            return report(
                Problem(
                    kind="inserted",
                    position=row.id,
                    leaf_index=None,
                    message=f"An event was inserted at position {row.id}, "
                    "which has no leaf in the Merkle log.",
                )
            )
        digest = event_leaf_hash(row.topic, row.originator_id, row.originator_version, row.state)
        if digest != leaf.hash:
            moved = log.recorder.leaf_with_hash(digest)
            if moved is not None and moved.position != row.id:
                return report(
                    Problem(
                        kind="reordered",
                        position=row.id,
                        leaf_index=leaf.index,
                        message=f"The event stored at position {row.id} was recorded at "
                        f"position {moved.position}: events were moved or swapped.",
                    )
                )
            return report(
                Problem(
                    kind="modified",
                    position=row.id,
                    leaf_index=leaf.index,
                    message=f"The event at position {row.id} (leaf {leaf.index}) was modified "
                    "after it was recorded: its bytes no longer hash to the recorded leaf.",
                )
            )
        frontier.append(digest)
        checked += 1
        pending += 1
        for recorded in checkpoints.get(frontier.size, ()):
            checkpoints_checked += 1
            if recorded.root_hash != frontier.root().hex():
                return report(
                    Problem(
                        kind="checkpoint",
                        position=recorded.position,
                        leaf_index=None,
                        message=f"The checkpoint recorded at position {recorded.position} "
                        f"says the first {recorded.tree_size} events have root "
                        f"{recorded.root_hash[:16]}..., but they hash to "
                        f"{frontier.root().hex()[:16]}...: the log was rewritten.",
                    )
                )
        if progress is not None and pending >= 1000:
            progress(pending)
            pending = 0
        row = next(rows, None)
        leaf = next(leaves, None)
    if progress is not None and pending:
        progress(pending)

    if frontier.size != state.frontier.size or frontier.root() != state.frontier.root():
        return report(
            Problem(
                kind="frontier",
                position=state.last_position,
                leaf_index=None,
                message=f"The Merkle log's stored state ({state.frontier.size} leaves) does not "
                f"match its {frontier.size} verified leaves; the log tables were altered.",
            )
        )
    if against is not None:
        problem = _check_against(log, against, frontier)
        if problem is not None:
            return report(problem)
    result = report(None)
    if update and untracked:
        result.events_added = log.catch_up(progress)
    return result


def _check_against(log: MerkleLog, against: Checkpoint, frontier: Frontier) -> Problem | None:
    size = frontier.size
    if against.tree_size > size:
        return Problem(
            kind="checkpoint",
            position=against.last_position,
            leaf_index=None,
            message=f"The checkpoint covers {against.tree_size} events but the log holds only "
            f"{size}: events were removed, or the checkpoint is from another ledger.",
        )
    try:
        proof = log.hasher().consistency_proof(against.tree_size, size)
    except MerkleError as error:
        return Problem(kind="frontier", position=None, leaf_index=None, message=str(error))
    if not verify_consistency(against.tree_size, size, against.root_hash, frontier.root(), proof):
        return Problem(
            kind="checkpoint",
            position=against.last_position,
            leaf_index=None,
            message=f"Today's log does not extend the checkpoint of {against.tree_size} events: "
            "its first events were rewritten, or the checkpoint is from another ledger.",
        )
    return None
