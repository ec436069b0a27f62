"""The master key: it wraps (encrypts) every data subject's key, and is never stored.

A master key is 32 random bytes written as URL-safe base64 (``dspy-ledger keys
generate`` prints one). It is read from ``DSPY_LEDGER_MASTER_KEY``, or from the file
named by ``DSPY_LEDGER_MASTER_KEY_FILE``, or given to ``dspy_ledger.open(master_key=...)``.
Its *id* (a digest) is stored beside each wrapped key, so a wrong master key is
recognised before anything is decrypted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.errors import MasterKeyError

MASTER_KEY_ENV = "DSPY_LEDGER_MASTER_KEY"
MASTER_KEY_FILE_ENV = "DSPY_LEDGER_MASTER_KEY_FILE"
KEY_BYTES = 32
NONCE_BYTES = 12


def generate_master_key() -> str:
    """Return a new random master key, as the text to keep in a secret store."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


@dataclass(frozen=True)
class MasterKey:
    """A loaded master key (its bytes are kept out of ``repr``)."""

    secret: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        """A short public digest naming this key (safe to store and print)."""
        return hashlib.sha256(b"dspy-ledger master key\x00" + self.secret).hexdigest()[:16]

    def wrap(self, subject_key: bytes, key_id: str) -> bytes:
        """Encrypt a subject key under this master key (bound to the key's id)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + AESGCM(self.secret).encrypt(nonce, subject_key, key_id.encode())

    def unwrap(self, wrapped: bytes, key_id: str) -> bytes:
        """Decrypt a subject key; MasterKeyError if this is not the key that wrapped it."""
        try:
            return AESGCM(self.secret).decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], key_id.encode()
            )
        except InvalidTag:
            msg = (
                f"The master key {self.key_id} cannot unwrap subject key {key_id}; "
                "give the master key the ledger was written with."
            )
            raise MasterKeyError(msg) from None


def parse_master_key(text: str, source: str) -> MasterKey:
    """Parse a master key written as URL-safe base64 of 32 bytes."""
    try:
        secret = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        secret = b""
    if len(secret) != KEY_BYTES:
        msg = (
            f"The master key from {source} is not 32 bytes of URL-safe base64; "
            "create one with: dspy-ledger keys generate."
        )
        raise MasterKeyError(msg)
    return MasterKey(secret)


def load_master_key(given: str | bytes | Path | None = None) -> MasterKey | None:
    """The master key given, else from the environment, else None.

    ``given`` may be the key text, its 32 raw bytes, or a Path to a file holding it.
    """
    if isinstance(given, bytes):
        if len(given) != KEY_BYTES:
            msg = "A master key given as bytes must be exactly 32 bytes long."
            raise MasterKeyError(msg)
        return MasterKey(given)
    if isinstance(given, Path):
        return _from_file(given)
    if isinstance(given, str):
        return parse_master_key(given, "the master_key argument")
    text = os.environ.get(MASTER_KEY_ENV)
    if text:
        return parse_master_key(text, MASTER_KEY_ENV)
    path = os.environ.get(MASTER_KEY_FILE_ENV)
    if path:
        return _from_file(Path(path))
    return None


def _from_file(path: Path) -> MasterKey:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        msg = f"Cannot read the master key file {path}: {error.__class__.__name__}."
        raise MasterKeyError(msg) from None
    return parse_master_key(text, str(path))
