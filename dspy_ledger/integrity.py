"""``IntegrityMixin``: the Merkle log on the :class:`~dspy_ledger.ledger.Ledger` facade.

``ledger.verify()``, ``ledger.checkpoint()``, ``ledger.prove(position)`` and
``ledger.bundle(path, ...)``; the algorithms live in :mod:`ledger.integrity`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eventsourcing.persistence import Notification
from pydantic import BaseModel

from dspy_ledger.checkpointing import AutoCheckpointer, CheckpointPolicy
from ledger.application import LedgerApplication
from ledger.errors import InvalidInputError
from ledger.integrity.bundle import write_bundle
from ledger.integrity.checkpoint import (
    Checkpoint,
    MerkleCheckpoint,
    load_private_key,
    now_utc,
)
from ledger.integrity.log import MerkleLog
from ledger.integrity.parallel import BackgroundCatchUp
from ledger.integrity.verify import VerifyReport, verify_log
from ledger.storage import StoreURL

Progress = Callable[[int], None]


class CheckpointInfo(BaseModel):
    """A checkpoint made by :meth:`IntegrityMixin.checkpoint`, and where it was recorded."""

    tree_size: int
    root_hash: str
    last_position: int
    time: str
    key_id: str | None
    signature: str | None
    recorded_at: int | None
    text: str


class InclusionProof(BaseModel):
    """Proof that the event at ``position`` is leaf ``leaf_index`` of the tree ``root_hash``."""

    position: int
    leaf_index: int
    leaf_hash: str
    tree_size: int
    root_hash: str
    proof: list[str]


class IntegrityMixin:
    """Adds tamper evidence to the ledger facade (needs ``app``, ``store`` and ``actor``)."""

    app: LedgerApplication
    store: StoreURL
    actor: str
    _merkle_log: MerkleLog | None = None
    _auto_checkpoints: AutoCheckpointer | None = None
    _background_catch_up: BackgroundCatchUp | None = None

    @property
    def merkle_log(self) -> MerkleLog:
        """The ledger's Merkle log (its tables are opened, or created, on first use)."""
        if self._merkle_log is None:
            self._merkle_log = MerkleLog(self.app)
        return self._merkle_log

    def start_auto_checkpoints(self, policy: CheckpointPolicy | None = None) -> None:
        """Checkpoint automatically as the ledger grows (policy: the environment's)."""
        policy = policy or CheckpointPolicy.from_environment()
        if not policy.enabled or self._auto_checkpoints is not None:
            return

        catch_up = BackgroundCatchUp(self.app, self.merkle_log)

        def take() -> int:
            checkpoint, recorded_at = self._record_checkpoint(policy.key_path, catch_up=catch_up)
            return recorded_at or checkpoint.last_position

        self._background_catch_up = catch_up
        self._auto_checkpoints = AutoCheckpointer(policy, self.app.last_position, take).start()

    def stop_auto_checkpoints(self) -> None:
        """Stop automatic checkpoints (waits for one in progress)."""
        if self._auto_checkpoints is not None:
            self._auto_checkpoints.stop()
            self._auto_checkpoints = None
        if self._background_catch_up is not None:
            self._background_catch_up.close()
            self._background_catch_up = None

    def close_merkle_log(self) -> None:
        """Stop automatic checkpoints and close the log's leaf file (reopened on next use)."""
        self.stop_auto_checkpoints()
        if self._merkle_log is not None:
            self._merkle_log.close()

    def verify(
        self,
        *,
        against: Checkpoint | None = None,
        update: bool = True,
        progress: Progress | None = None,
        public_key: Ed25519PublicKey | None = None,
    ) -> VerifyReport:
        """Recompute every leaf and recorded checkpoint; report the first problem found.

        With ``public_key``, also re-check the signature of every recorded checkpoint
        that key signed.
        """
        return verify_log(
            self.app,
            self.merkle_log,
            against=against,
            update=update,
            progress=progress,
            public_key=public_key,
        )

    def checkpoint(self, sign_key: Path | str | Ed25519PrivateKey | None = None) -> CheckpointInfo:
        """Hash new events, then record (and return) a checkpoint, signed if a key is given."""
        return _info(*self._record_checkpoint(sign_key))

    def _record_checkpoint(
        self,
        sign_key: Path | str | Ed25519PrivateKey | None,
        *,
        catch_up: Callable[[], int] | None = None,
    ) -> tuple[Checkpoint, int | None]:
        """Hash new events, record a checkpoint; return it and the position recorded at.

        ``catch_up`` hashes the new events (default: the log's own, in this thread).
        """
        key = load_private_key(Path(sign_key)) if isinstance(sign_key, (str, Path)) else sign_key
        log = self.merkle_log
        (catch_up or log.catch_up)()
        state = log.state()
        checkpoint = Checkpoint(
            state.frontier.size, state.frontier.root(), state.last_position, now_utc()
        )
        if key is not None:
            checkpoint = checkpoint.signed(key)
        recorded_at = self.app.save_aggregates(
            MerkleCheckpoint.from_checkpoint(checkpoint, actor=self.actor)
        )
        return checkpoint, recorded_at

    def prove(self, position: int) -> InclusionProof:
        """Return the inclusion proof of the event at ``position`` in today's log."""
        log = self.merkle_log
        log.catch_up()
        leaf = log.recorder.leaf_at(position)
        if leaf is None:
            msg = f"No event is stored at position {position}; positions run from 1 upwards."
            raise InvalidInputError(msg)
        state = log.state()
        proof = log.hasher().inclusion_proof(leaf.index, state.frontier.size)
        return InclusionProof(
            position=position,
            leaf_index=leaf.index,
            leaf_hash=leaf.hash.hex(),
            tree_size=state.frontier.size,
            root_hash=state.frontier.root().hex(),
            proof=[h.hex() for h in proof],
        )

    def bundle(
        self,
        path: Path,
        *,
        stream: UUID | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        sign_key: Path | str | Ed25519PrivateKey | None = None,
    ) -> tuple[int, CheckpointInfo]:
        """Write an audit bundle of the selected events; return the count and checkpoint."""
        checkpoint, recorded_at = self._record_checkpoint(sign_key)
        selection: dict[str, Any] = {
            "stream": str(stream) if stream else None,
            "actor": actor,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        }
        chosen = self._select(stream, actor, since, until, checkpoint.last_position)
        count = write_bundle(path, self.merkle_log, checkpoint, chosen, selection)
        return count, _info(checkpoint, recorded_at)

    def _select(
        self,
        stream: UUID | None,
        actor: str | None,
        since: datetime | None,
        until: datetime | None,
        stop: int,
    ) -> Iterator[Notification]:
        for notification in self.app.notifications(stop=stop):
            if stream is not None and notification.originator_id != stream:
                continue
            if actor is None and since is None and until is None:
                yield notification
                continue
            event = self.app.decode(notification)
            if actor is not None and getattr(event, "actor", None) != actor:
                continue
            when: datetime = event.timestamp
            if since is not None and when < since:
                continue
            if until is not None and when > until:
                continue
            yield notification


def _info(checkpoint: Checkpoint, recorded_at: int | None) -> CheckpointInfo:
    return CheckpointInfo(
        tree_size=checkpoint.tree_size,
        root_hash=checkpoint.root_hash.hex(),
        last_position=checkpoint.last_position,
        time=checkpoint.time,
        key_id=checkpoint.key_id,
        signature=base64.b64encode(checkpoint.signature).decode() if checkpoint.signature else None,
        recorded_at=recorded_at,
        text=checkpoint.to_text(),
    )
