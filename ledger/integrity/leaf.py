"""The leaf of the Merkle log: one stored event, byte for byte as the store holds it.

The leaf *entry* (the bytes hashed with ``leaf_hash``) is, in order:

====================  =============================================================
``b"DSPYLEAF\\x01"``   magic and format version 1 (9 bytes)
topic                 u32 big-endian length, then the topic's UTF-8 bytes
stream id             1 byte kind: ``0x00`` then the UUID's 16 bytes, or
                      ``0x01`` then u32 length and the id's UTF-8 bytes
version               i64 big-endian (the stream version, 1 for the first event)
state                 u64 big-endian length, then the ``state`` bytes as stored
====================  =============================================================

``state`` is taken after any compression or encryption, so forgetting a data subject
(deleting its key, not its ciphertext) leaves every leaf hash unchanged. The position
(notification id) is deliberately not hashed: the leaf *index* is the log's
coordinate, and leaving the position out lets a verifier recognise a row moved to
another position ("reordered") rather than only "modified".
"""

from __future__ import annotations

import struct
from typing import Final
from uuid import UUID

from ledger.integrity.merkle import leaf_hash

#: Leading bytes of every leaf entry: a magic word and the format version.
LEAF_MAGIC: Final = b"DSPYLEAF\x01"


def leaf_entry(topic: str, stream_id: UUID | str, version: int, state: bytes) -> bytes:
    """Return the leaf entry of a stored event (the bytes that get hashed)."""
    topic_bytes = topic.encode("utf-8")
    if isinstance(stream_id, UUID):
        id_part = b"\x00" + stream_id.bytes
    else:
        text = stream_id.encode("utf-8")
        id_part = b"\x01" + struct.pack(">I", len(text)) + text
    return b"".join(
        (
            LEAF_MAGIC,
            struct.pack(">I", len(topic_bytes)),
            topic_bytes,
            id_part,
            struct.pack(">q", version),
            struct.pack(">Q", len(state)),
            bytes(state),
        )
    )


def event_leaf_hash(topic: str, stream_id: UUID | str, version: int, state: bytes) -> bytes:
    """Return the RFC 9162 leaf hash of a stored event."""
    return leaf_hash(leaf_entry(topic, stream_id, version, state))
