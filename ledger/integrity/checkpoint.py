"""Checkpoints: a signed statement of the Merkle log's size and root at one moment.

Text format (UTF-8, ``\\n`` line ends), documented in docs/integrity.md::

    dspy-ledger checkpoint v1
    tree-size 1234
    root-hash 5f1c...64 hex digits
    last-position 1240
    time 2025-05-01T12:00:00Z

    signature ed25519 <key id: 64 hex> <signature: base64>

The first five lines are the *body*; the Ed25519 signature is over the body's bytes
exactly. The key id is the SHA-256 of the raw 32-byte public key, in hex. An unsigned
checkpoint is the body alone. Every checkpoint made is also recorded in the ledger as
a ``MerkleCheckpoint`` stream with one ``CheckpointRecorded`` event, which becomes a
leaf after the checkpoint's own tree size.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.domain.base import LedgerAggregate, provenance
from ledger.integrity.errors import (
    CheckpointFormatError,
    IntegrityFileError,
    KeyFormatError,
    SignatureInvalidError,
)
from ledger.integrity.merkle import MerkleError, from_hex

#: First line of every checkpoint text.
CHECKPOINT_HEADER: Final = "dspy-ledger checkpoint v1"
_FIELDS: Final = ("tree-size", "root-hash", "last-position", "time")


class MerkleCheckpoint(LedgerAggregate):
    """A checkpoint of the Merkle log, recorded in the ledger itself."""

    class CheckpointRecorded(LedgerAggregate.Created):
        """The log had ``tree_size`` leaves with root ``root_hash`` at ``checkpoint_time``."""

        tree_size: int
        root_hash: str
        last_position: int
        checkpoint_time: str
        key_id: str | None
        signature: str | None

    def __init__(self, tree_size: int, root_hash: str, last_position: int) -> None:
        self.tree_size = tree_size
        self.root_hash = root_hash
        self.last_position = last_position

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, *, actor: str) -> MerkleCheckpoint:
        """Start a stream recording ``checkpoint`` (``CheckpointRecorded``)."""
        return cls._create(
            cls.CheckpointRecorded,
            id=uuid.uuid4(),
            tree_size=checkpoint.tree_size,
            root_hash=checkpoint.root_hash.hex(),
            last_position=checkpoint.last_position,
            checkpoint_time=checkpoint.time,
            key_id=checkpoint.key_id,
            signature=(
                base64.b64encode(checkpoint.signature).decode() if checkpoint.signature else None
            ),
            **provenance(actor, None, None),
        )


#: Topic of the recorded checkpoint events (how verification finds them).
CHECKPOINT_TOPIC: Final = (
    f"{MerkleCheckpoint.__module__}:{MerkleCheckpoint.CheckpointRecorded.__qualname__}"
)


@dataclass(frozen=True)
class Checkpoint:
    """Tree size, root hash, last position and time, optionally signed."""

    tree_size: int
    root_hash: bytes
    last_position: int
    time: str
    key_id: str | None = None
    signature: bytes | None = None

    @classmethod
    def from_recorded(
        cls,
        tree_size: int,
        root_hash: str,
        last_position: int,
        time: str,
        *,
        key_id: str | None,
        signature: str | None,
    ) -> Checkpoint:
        """A checkpoint from its recorded form (hex root, base64 signature)."""
        return cls(
            tree_size,
            bytes.fromhex(root_hash),
            last_position,
            time,
            key_id,
            base64.b64decode(signature) if signature else None,
        )

    def body(self) -> bytes:
        """The signed bytes: the five body lines."""
        return (
            f"{CHECKPOINT_HEADER}\n"
            f"tree-size {self.tree_size}\n"
            f"root-hash {self.root_hash.hex()}\n"
            f"last-position {self.last_position}\n"
            f"time {self.time}\n"
        ).encode()

    def to_text(self) -> str:
        """The checkpoint in the documented text format."""
        text = self.body().decode()
        if self.signature is not None:
            signature = base64.b64encode(self.signature).decode()
            text += f"\nsignature ed25519 {self.key_id} {signature}\n"
        return text

    def signed(self, key: Ed25519PrivateKey) -> Checkpoint:
        """Return this checkpoint signed with ``key``."""
        return replace(self, key_id=key_id(key.public_key()), signature=key.sign(self.body()))

    def check_signature(self, key: Ed25519PublicKey) -> None:
        """Raise :class:`SignatureInvalidError` unless ``key`` signed this checkpoint."""
        if self.signature is None:
            msg = "The checkpoint is not signed, but a public key was given; ask for a signed one."
            raise SignatureInvalidError(msg)
        expected = key_id(key)
        if self.key_id != expected:
            msg = (
                f"The checkpoint is signed by key {self.key_id}, not by the given public key "
                f"{expected}; check that you have the signer's key."
            )
            raise SignatureInvalidError(msg)
        try:
            key.verify(self.signature, self.body())
        except InvalidSignature:
            msg = (
                "The checkpoint's signature does not match its content; "
                "the checkpoint was altered after signing."
            )
            raise SignatureInvalidError(msg) from None


def now_utc() -> str:
    """The current UTC time as checkpoints write it (ISO 8601, seconds, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_checkpoint(text: str, *, source: str = "the checkpoint") -> Checkpoint:
    """Parse a checkpoint text, raising :class:`CheckpointFormatError` if malformed."""

    def bad(reason: str) -> CheckpointFormatError:
        return CheckpointFormatError(
            f"{source} is not a dspy-ledger checkpoint ({reason}); "
            "make one with dspy-ledger checkpoint."
        )

    body, _, tail = text.partition("\n\n")
    lines = body.rstrip("\n").split("\n")
    if not lines or lines[0] != CHECKPOINT_HEADER:
        raise bad(f"the first line must be {CHECKPOINT_HEADER!r}")
    if len(lines) != 1 + len(_FIELDS):
        raise bad(f"expected {1 + len(_FIELDS)} lines before the signature, found {len(lines)}")
    values: dict[str, str] = {}
    for line, name in zip(lines[1:], _FIELDS, strict=True):
        key, _, value = line.partition(" ")
        if key != name or not value:
            raise bad(f"expected a {name!r} line, found {line[:40]!r}")
        values[name] = value
    try:
        tree_size = int(values["tree-size"])
        last_position = int(values["last-position"])
        root = from_hex(values["root-hash"])
        datetime.strptime(values["time"], "%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, MerkleError) as error:
        raise bad(str(error).rstrip(".")) from None
    if tree_size < 0 or last_position < 0:
        raise bad("sizes and positions cannot be negative")
    checkpoint = Checkpoint(tree_size, root, last_position, values["time"])
    signature_lines = [line for line in tail.split("\n") if line.strip()]
    if not signature_lines:
        return checkpoint
    if len(signature_lines) != 1:
        raise bad("it has more than one signature line")
    parts = signature_lines[0].split(" ")
    if len(parts) != 4 or parts[:2] != ["signature", "ed25519"] or len(parts[2]) != 64:
        raise bad("the signature line must be 'signature ed25519 <key id> <base64>'")
    try:
        signature = base64.b64decode(parts[3], validate=True)
    except binascii.Error:
        raise bad("the signature is not base64") from None
    return replace(checkpoint, key_id=parts[2].lower(), signature=signature)


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and parse a checkpoint file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        msg = (
            f"Cannot read the checkpoint file {path} ({error.__class__.__name__}); check the path."
        )
        raise IntegrityFileError(msg) from None
    return parse_checkpoint(text, source=f"The file {path}")


# -- keys ---------------------------------------------------------------------------


def key_id(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, in hex: how checkpoints name their signer."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_key_pair(path: Path) -> tuple[Path, str]:
    """Write a new Ed25519 private key (PEM, mode 0600) and ``<path>.pub``; return both."""
    if path.exists():
        msg = f"The key file {path} already exists; choose another name or remove it first."
        raise IntegrityFileError(msg)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path = path.with_name(path.name + ".pub")
    try:
        # The private key is a secret: create it readable by its owner only.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(private)
        public_path.write_bytes(public)
    except OSError as error:
        msg = f"Cannot write the key file {path} ({error.strerror}); check the folder."
        raise IntegrityFileError(msg) from None
    return public_path, key_id(key.public_key())


def _read_key_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        msg = f"Cannot read the key file {path} ({error.strerror}); check the path."
        raise IntegrityFileError(msg) from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PEM file (as written by ``keygen``)."""
    data = _read_key_bytes(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        msg = (
            f"The file {path} is not an unencrypted Ed25519 private key in PEM; "
            "make one with dspy-ledger keygen."
        )
        raise KeyFormatError(msg)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from PEM (a private key file works too)."""
    data = _read_key_bytes(path)
    try:
        key: object = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            key = None
    if not isinstance(key, Ed25519PublicKey):
        msg = f"The file {path} is not an Ed25519 public key in PEM; use the .pub file from keygen."
        raise KeyFormatError(msg)
    return key
