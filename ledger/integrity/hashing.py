"""Hashing raw event rows into leaves, and growing a frontier a perfect subtree at a time.

Going through the library's ``Notification`` objects and one Python call chain per
leaf costs more than the hashing itself, so stored events are read as plain tuples
and each is hashed with one SHA-256 call over a precomputed per-topic prefix. The
bytes hashed are exactly :func:`leaf.leaf_entry`'s (``tests/test_integrity_scan.py``
checks the two agree).

This module imports no database driver, so the worker processes that verify ranges
of the log in parallel (:mod:`ledger.integrity.worker`) start quickly.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from ledger.integrity.leaf import LEAF_MAGIC
from ledger.integrity.merkle import Frontier

#: One stored event as read here: (position, topic, stream id, version, state).
EventRow = tuple[int, str, Any, int, bytes]

_sha256 = hashlib.sha256
_pack_version_length = struct.Struct(">qQ").pack
_pack_u32 = struct.Struct(">I").pack


class LeafHasher:
    """Hashes raw event rows into RFC 9162 leaf hashes (format ``DSPYLEAF v1``)."""

    def __init__(self) -> None:
        self._prefixes: dict[str, bytes] = {}

    def _prefix(self, topic: str) -> bytes:
        prefix = self._prefixes.get(topic)
        if prefix is None:
            encoded = topic.encode("utf-8")
            # 0x00 is RFC 9162's leaf prefix; the rest begins the leaf entry.
            prefix = b"\x00" + LEAF_MAGIC + _pack_u32(len(encoded)) + encoded
            self._prefixes[topic] = prefix
        return prefix

    def hash_rows(self, rows: Sequence[EventRow]) -> list[bytes]:
        """The leaf hash of each row, in order."""
        prefix = self._prefix
        try:
            return [
                _sha256(
                    prefix(topic)
                    + stream_id_part(stream_id)
                    + _pack_version_length(version, len(state))
                    + state
                ).digest()
                for _, topic, stream_id, version, state in rows
            ]
        except (TypeError, AttributeError, struct.error):
            return [self._hash_odd_row(row) for row in rows]

    def _hash_odd_row(self, row: EventRow) -> bytes:
        """The leaf hash of a row edited to hold values of the wrong type, if it has one."""
        _, topic, stream_id, version, state = row
        if isinstance(state, str):
            state = state.encode()  # text written into the state column, stored as UTF-8
        try:
            return _sha256(
                self._prefix(topic)
                + stream_id_part(stream_id)
                + _pack_version_length(version, len(state))
                + state
            ).digest()
        except (TypeError, AttributeError, struct.error):
            return b""  # a NULL or a value no event holds: equal to no leaf hash


_ID_PARTS: dict[Any, bytes] = {}


def stream_id_part(stream_id: Any) -> bytes:
    """The stream id's part of a leaf entry, remembered for the streams seen lately."""
    part = _ID_PARTS.get(stream_id)
    if part is None:
        if len(_ID_PARTS) > 100_000:
            _ID_PARTS.clear()
        part = _ID_PARTS[stream_id] = _stream_id_part(stream_id)
    return part


def _stream_id_part(stream_id: Any) -> bytes:
    """The stream id's part of a leaf entry (UUID bytes, or length-prefixed text)."""
    if isinstance(stream_id, UUID):
        return b"\x00" + stream_id.bytes
    text = str(stream_id)
    if len(text) == 32:
        # SQLite stores UUIDs as 32 hex digits (the library reads them back as UUIDs).
        try:
            return b"\x00" + bytes.fromhex(text)
        except ValueError:
            pass
    try:
        return b"\x00" + UUID(text).bytes
    except ValueError:
        encoded = text.encode("utf-8")
        return b"\x01" + _pack_u32(len(encoded)) + encoded


def extend_frontier(frontier: Frontier, leaves: Sequence[bytes]) -> None:
    """Append many leaf hashes, merging whole perfect subtrees at a time.

    The same result as ``frontier.append`` leaf by leaf: a block of ``2**k`` leaves
    starting at a multiple of ``2**k`` is a perfect subtree, hashed level by level,
    then carried into the frontier like one leaf at height ``k``.
    """
    i, n = 0, len(leaves)
    while i < n:
        size = frontier.size
        room = size & -size if size else 1 << 62
        block = min(room, 1 << ((n - i).bit_length() - 1))
        if block < 64:
            frontier.append(leaves[i])
            i += 1
            continue
        level = list(leaves[i : i + block])
        while len(level) > 1:
            level = [
                _sha256(b"\x01" + left + right).digest()
                for left, right in zip(level[0::2], level[1::2], strict=True)
            ]
        frontier.append_subtree(level[0], block)
        i += block


__all__ = ["EventRow", "LeafHasher", "extend_frontier", "stream_id_part"]
