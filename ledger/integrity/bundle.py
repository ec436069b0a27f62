"""Audit bundles: selected events with inclusion proofs, verifiable with no database.

A bundle is a zip file with three members (docs/integrity.md has the full format):

* ``manifest.json`` — ``{"format": "dspy-ledger-bundle", "version": 1, "leaf_format":
  "DSPYLEAF v1", "events": <count>, "tree_size", "root_hash", "selection", "created_at"}``;
* ``checkpoint.txt`` — the checkpoint the proofs lead to (text format of
  :mod:`ledger.integrity.checkpoint`, signed or not);
* ``events.jsonl`` — one JSON object per event: ``position``, ``leaf_index``,
  ``topic``, ``stream_id``, ``stream_id_kind`` (``uuid`` or ``text``), ``version``,
  ``state`` (base64 of the stored bytes), ``proof`` (hex hashes, leaf to root);
* ``consistency.json`` — for each checkpoint recorded in the ledger before this one,
  ``{"tree_size", "root_hash", "proof"}``: lets an auditor holding an older trusted
  checkpoint check that the bundle's tree extends it.
"""

from __future__ import annotations

import base64
import binascii
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from pydantic import BaseModel

from ledger.integrity.checkpoint import Checkpoint, parse_checkpoint
from ledger.integrity.errors import BundleFormatError, BundleInvalidError, IntegrityFileError
from ledger.integrity.leaf import event_leaf_hash
from ledger.integrity.log import MerkleLog
from ledger.integrity.merkle import from_hex, verify_consistency, verify_inclusion
from ledger.integrity.verify import recorded_checkpoints

BUNDLE_FORMAT = "dspy-ledger-bundle"


class BundleReport(BaseModel):
    """The outcome of :func:`verify_bundle` (raised as an error when it fails)."""

    ok: bool
    events: int
    tree_size: int
    root_hash: str
    signed_by: str | None
    against_tree_size: int | None = None


def write_bundle(
    path: Path,
    log: MerkleLog,
    checkpoint: Checkpoint,
    notifications: Iterable[Notification],
    selection: dict[str, Any],
) -> int:
    """Write a bundle of the given events (all within ``checkpoint``); return the count."""
    hasher = log.hasher()
    lines: list[str] = []
    for n in notifications:
        if n.id > checkpoint.last_position:
            break
        leaf = log.recorder.leaf_at(n.id)
        if leaf is None:  # pragma: no cover - every position up to the checkpoint has a leaf
            continue
        is_uuid = isinstance(n.originator_id, UUID)
        lines.append(
            json.dumps(
                {
                    "position": n.id,
                    "leaf_index": leaf.index,
                    "topic": n.topic,
                    "stream_id": str(n.originator_id),
                    "stream_id_kind": "uuid" if is_uuid else "text",
                    "version": n.originator_version,
                    "state": base64.b64encode(n.state).decode(),
                    "proof": [
                        h.hex() for h in hasher.inclusion_proof(leaf.index, checkpoint.tree_size)
                    ],
                }
            )
        )
    consistency = [
        {
            "tree_size": c.tree_size,
            "root_hash": c.root_hash,
            "proof": [h.hex() for h in hasher.consistency_proof(c.tree_size, checkpoint.tree_size)],
        }
        for c in recorded_checkpoints(log.app)
        if c.tree_size <= checkpoint.tree_size
    ]
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": 1,
        "leaf_format": "DSPYLEAF v1",
        "hash": "sha256 (RFC 9162)",
        "events": len(lines),
        "tree_size": checkpoint.tree_size,
        "root_hash": checkpoint.root_hash.hex(),
        "selection": selection,
    }
    try:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("manifest.json", json.dumps(manifest, indent=2))
            archive.writestr("checkpoint.txt", checkpoint.to_text())
            archive.writestr("events.jsonl", "".join(line + "\n" for line in lines))
            archive.writestr("consistency.json", json.dumps(consistency, indent=2))
    except OSError as error:
        msg = f"Cannot write the bundle {path} ({error.strerror}); check the folder."
        raise IntegrityFileError(msg) from None
    return len(lines)


def read_bundle(path: Path) -> tuple[dict[str, Any], Checkpoint, list[dict[str, Any]], list[Any]]:
    """Read a bundle's manifest, checkpoint, events and consistency proofs."""
    if not path.is_file():
        msg = f"The bundle {path} does not exist; check the path."
        raise IntegrityFileError(msg)
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
            checkpoint_text = archive.read("checkpoint.txt").decode("utf-8")
            events = [
                json.loads(line)
                for line in archive.read("events.jsonl").decode("utf-8").splitlines()
                if line.strip()
            ]
            consistency = json.loads(archive.read("consistency.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as error:
        msg = (
            f"The file {path} is not a readable dspy-ledger bundle ({type(error).__name__}); "
            "it is corrupt or truncated, make it again with dspy-ledger bundle."
        )
        raise BundleFormatError(msg) from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        msg = f"The file {path} is a zip but not a dspy-ledger bundle (its manifest is wrong)."
        raise BundleFormatError(msg)
    checkpoint = parse_checkpoint(checkpoint_text, source=f"The checkpoint in {path}")
    return manifest, checkpoint, events, consistency if isinstance(consistency, list) else []


def _event_leaf(entry: dict[str, Any]) -> tuple[int, bytes]:
    stream: UUID | str = (
        UUID(entry["stream_id"]) if entry["stream_id_kind"] == "uuid" else entry["stream_id"]
    )
    state = base64.b64decode(entry["state"], validate=True)
    return int(entry["leaf_index"]), event_leaf_hash(
        str(entry["topic"]), stream, int(entry["version"]), state
    )


def verify_bundle(path: Path, *, against: Checkpoint | None = None) -> BundleReport:
    """Verify every event's inclusion proof against the bundle's checkpoint (no database).

    With ``against`` (a trusted checkpoint), also check that the bundle's tree is that
    checkpoint's tree or extends it. Raises :class:`BundleInvalidError` on the first
    failure, naming the event's position.
    """
    manifest, checkpoint, events, consistency = read_bundle(path)
    if manifest.get("events") != len(events):
        msg = f"The bundle lists {manifest.get('events')} events but holds {len(events)}."
        raise BundleInvalidError(msg)
    for entry in events:
        position = entry.get("position") if isinstance(entry, dict) else None
        try:
            index, digest = _event_leaf(entry)
            proof = [from_hex(h) for h in entry["proof"]]
        except (KeyError, TypeError, ValueError, binascii.Error, AttributeError):
            msg = f"The bundle's event at position {position} is malformed."
            raise BundleInvalidError(msg) from None
        if not verify_inclusion(digest, index, checkpoint.tree_size, proof, checkpoint.root_hash):
            msg = (
                f"The event at position {position} does not verify against the bundle's "
                f"checkpoint: the event or its proof was altered, or it is not in that log."
            )
            raise BundleInvalidError(msg)
    if against is not None:
        _check_extends(checkpoint, against, consistency)
    return BundleReport(
        ok=True,
        events=len(events),
        tree_size=checkpoint.tree_size,
        root_hash=checkpoint.root_hash.hex(),
        signed_by=checkpoint.key_id,
        against_tree_size=against.tree_size if against else None,
    )


def _check_extends(checkpoint: Checkpoint, against: Checkpoint, consistency: list[Any]) -> None:
    if against.tree_size == checkpoint.tree_size:
        if against.root_hash != checkpoint.root_hash:
            msg = (
                "The bundle's checkpoint and the trusted one have the same size but different "
                "roots: the bundle is from another ledger or a rewritten log."
            )
            raise BundleInvalidError(msg)
        return
    if against.tree_size > checkpoint.tree_size:
        msg = (
            f"The trusted checkpoint ({against.tree_size} events) is newer than the bundle's "
            f"({checkpoint.tree_size}); ask for a bundle made after it."
        )
        raise BundleInvalidError(msg)
    for item in consistency:
        if isinstance(item, dict) and item.get("tree_size") == against.tree_size:
            try:
                proof = [from_hex(h) for h in item["proof"]]
            except (KeyError, TypeError, ValueError):
                break
            # The trusted root is used, never the one the bundle claims.
            if verify_consistency(
                against.tree_size,
                checkpoint.tree_size,
                against.root_hash,
                checkpoint.root_hash,
                proof,
            ):
                return
            break
    msg = (
        f"The bundle does not prove that its log extends the trusted checkpoint of "
        f"{against.tree_size} events: it is from another ledger or the log was rewritten."
    )
    raise BundleInvalidError(msg)
