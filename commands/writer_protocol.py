"""The frames a recording process and its writer process exchange over two pipes.

A frame is a 5-byte header (payload length, u32 big-endian; kind, 1 byte) and a pickled
payload. The recording process sends, in order:

- ``CONFIG`` once, first: a :class:`WriterConfig`;
- ``DRAFTS``: one draft, pickled by :func:`commands.portable_drafts.dumps_draft`;
- ``FLUSH``: commit what has arrived without lingering (someone waits in ``flush()``).

Closing the writer's input means "commit everything, then exit". The writer process
answers with ``STATUS`` frames, each a :class:`WriterStatus`: once the store is open, after
the commit that answers a ``FLUSH``, and otherwise at most once a second while drafts
keep coming (:data:`commands.writer_process.REPORT_SECONDS`). Only this package's own
processes read these pickles.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import IO, Any

CONFIG, DRAFTS, FLUSH, STATUS = 1, 2, 3, 4
_HEADER = struct.Struct(">IB")


@dataclass(frozen=True)
class WriterConfig:
    """What the writer process needs to build and store events as its parent would."""

    url: str
    max_string_bytes: int
    redactors: tuple[str, ...]
    master_key: bytes | None
    #: The read end of the wake-up pipe (inherited), or None: a byte on it ends the
    #: writer's lingering at once, because someone waits in ``flush()``.
    wake_fd: int | None = None


@dataclass(frozen=True)
class WriterStatus:
    """The writer process's counters: drafts committed (in order), and what went wrong."""

    committed: int
    unbuildable: int
    batches: int
    retries: int
    last_error: str | None


def encode(kind: int, payload: Any) -> bytes:
    """One frame, ready to write."""
    return frame(kind, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def frame(kind: int, body: bytes) -> bytes:
    """One frame around an already pickled body."""
    return _HEADER.pack(len(body), kind) + body


def read_frame(stream: IO[bytes]) -> tuple[int, bytes] | None:
    """The next frame's kind and (pickled) body, or None at the end of the stream."""
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    size, kind = _HEADER.unpack(header)
    body = _read_exactly(stream, size)
    if body is None:
        return None
    return kind, body


def loads(body: bytes) -> Any:
    """A frame's payload (only this package's own processes write these frames)."""
    return pickle.loads(body)


@dataclass(frozen=True)
class UnreadableDraft:
    """Stands in for a draft the writer could not unpickle (the writer logs why), so that
    it is counted as not recorded and the acknowledgements stay in step."""

    reason: str


def split_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete frame off the front of ``buffer`` (a partial one stays)."""
    frames = []
    while len(buffer) >= _HEADER.size:
        size, kind = _HEADER.unpack_from(buffer)
        end = _HEADER.size + size
        if len(buffer) < end:
            break
        frames.append((kind, bytes(buffer[_HEADER.size : end])))
        del buffer[:end]
    return frames


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
