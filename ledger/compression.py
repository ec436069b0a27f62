"""Optional compression of stored events, readable whichever way they were written.

``DSPY_LEDGER_COMPRESSION=zlib`` stores each event's state zlib-compressed (about 45%
fewer bytes for a typical prediction, for some writer CPU; see docs/performance.md).
Either way the ledger installs a compressor that reads both forms: a stored state that
starts with ``{`` is plain JSON, anything else is a zlib stream. So one ledger can hold
events written with and without compression, and switching the setting never makes
earlier events unreadable.

Compression happens before the Merkle log sees the bytes, so integrity proofs cover
exactly what is stored.
"""

from __future__ import annotations

import os
import zlib

from eventsourcing.persistence import Compressor

from ledger.errors import StorageURLError

#: Environment variable choosing how new events are stored: ``none`` (default) or ``zlib``.
COMPRESSION_ENV_VAR = "DSPY_LEDGER_COMPRESSION"
_LEVEL = 6


def _read(data: bytes) -> bytes:
    return data if data[:1] == b"{" else zlib.decompress(data)


class PlainCompressor(Compressor):
    """Stores events as they are; reads compressed ones too."""

    def compress(self, data: bytes) -> bytes:
        """Leave the bytes as they are."""
        return data

    def decompress(self, data: bytes) -> bytes:
        """Return plain JSON as it is, inflate a zlib stream."""
        return _read(data)


class ZlibCompressor(Compressor):
    """Stores events zlib-compressed; reads plain ones too."""

    def compress(self, data: bytes) -> bytes:
        """Deflate the bytes."""
        return zlib.compress(data, _LEVEL)

    def decompress(self, data: bytes) -> bytes:
        """Return plain JSON as it is, inflate a zlib stream."""
        return _read(data)


def compressor_topic() -> str:
    """The eventsourcing topic of the compressor the environment asks for."""
    choice = os.environ.get(COMPRESSION_ENV_VAR, "none").strip().lower() or "none"
    if choice == "none":
        return f"{__name__}:PlainCompressor"
    if choice == "zlib":
        return f"{__name__}:ZlibCompressor"
    msg = f"{COMPRESSION_ENV_VAR} must be 'none' or 'zlib', not {choice!r}."
    raise StorageURLError(msg)
