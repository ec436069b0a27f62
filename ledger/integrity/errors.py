"""Errors of the integrity layer, each with the exit code the command line uses.

::

    LedgerError
    └── IntegrityError              base of everything below; ``exit_code`` says how to exit
        ├── TamperDetectedError     the stored events disagree with the Merkle log
        │   (kind: modified, missing, inserted, reordered, checkpoint, frontier)
        ├── BundleInvalidError      an audit bundle's events, proofs or checkpoint do not verify
        ├── SignatureInvalidError   a checkpoint's signature is missing, or not by the given key
        ├── IntegrityFileError      a named file (key, checkpoint, bundle) cannot be read
        ├── CheckpointFormatError   a checkpoint text is not in the documented format
        ├── BundleFormatError       a bundle is not a readable zip in the documented format
        └── KeyFormatError          a key file is not an Ed25519 PEM key

Every message is one sentence saying what is wrong and what to do.
"""

from __future__ import annotations

from typing import ClassVar

from ledger.errors import LedgerError

#: Exit codes of ``verify`` / ``verify-bundle`` findings, by tamper kind (docs/integrity.md).
TAMPER_EXIT_CODES: dict[str, int] = {
    "modified": 10,
    "missing": 11,
    "inserted": 12,
    "reordered": 13,
    "checkpoint": 14,
    "frontier": 15,
    "signature": 16,
}


class IntegrityError(LedgerError):
    """Root of the integrity errors; ``exit_code`` is the command line's exit status."""

    exit_code: ClassVar[int] = 1


class TamperDetectedError(IntegrityError):
    """The stored events no longer match the Merkle log (raised only on request)."""

    exit_code: ClassVar[int] = 10


class BundleInvalidError(IntegrityError):
    """An audit bundle is well formed but its content does not verify."""

    exit_code: ClassVar[int] = 17


class SignatureInvalidError(IntegrityError):
    """A checkpoint signature is absent where required, or made with another key."""

    exit_code: ClassVar[int] = 16


class IntegrityFileError(IntegrityError):
    """A file named on the command line does not exist or cannot be read."""

    exit_code: ClassVar[int] = 20


class CheckpointFormatError(IntegrityError):
    """A checkpoint text does not follow the documented format."""

    exit_code: ClassVar[int] = 21


class BundleFormatError(IntegrityError):
    """A bundle is not a readable zip, or lacks the documented members."""

    exit_code: ClassVar[int] = 22


class KeyFormatError(IntegrityError):
    """A key file is not an Ed25519 key in PEM."""

    exit_code: ClassVar[int] = 23
