"""Random identifiers for calls and predictions, without a system call each.

``os.urandom`` (behind ``uuid.uuid4``) is a system call that releases the interpreter
lock, so every call id drawn from it lets any other thread of the program take the lock
and the program wait for it. Here randomness is drawn from ``os.urandom`` once per
:data:`_BATCH` identifiers and handed out 16 bytes at a time: the identifiers are as
random (cryptographically) and as unique as ``uuid4``'s. A forked child starts with
a pool of its own, so it never repeats its parent's identifiers.
"""

from __future__ import annotations

import os
import uuid
from collections import deque

_BATCH = 256
_pool: deque[bytes] = deque()


def _random16() -> bytes:
    while True:
        try:
            return _pool.popleft()  # atomic: threads never get the same bytes
        except IndexError:
            # Cut into 16-byte pieces at C speed: zip over one iterator 16 times.
            _pool.extend(map(bytes, zip(*[iter(os.urandom(16 * _BATCH))] * 16, strict=False)))


def new_call_id() -> str:
    """A call id: 32 random hexadecimal digits."""
    return _random16().hex()


def new_uuid() -> uuid.UUID:
    """A random (version 4) UUID, equal to ``uuid.UUID(bytes=..., version=4)``.

    Built as ``UUID.__init__`` builds it, minus its argument checks, which cost as much
    as the rest of recording a call id; the names it uses are bound once, below (an
    enum member's lookup alone costs a fifth of it).
    """
    made = _new(_UUID)
    _set(made, "int", int.from_bytes(_random16(), "big") & _CLEAR_VERSION | _VERSION_4)
    _set(made, "is_safe", _SAFE_UNKNOWN)  # UUID is immutable: set as __init__ sets it
    return made


_new = object.__new__
_set = object.__setattr__
_UUID = uuid.UUID
_SAFE_UNKNOWN = uuid.SafeUUID.unknown

# RFC 4122 version 4: the variant bits 10 and the version nibble 0100.
_CLEAR_VERSION = ~((0xC000 << 48) | (0xF000 << 64))
_VERSION_4 = (0x8000 << 48) | (4 << 76)


os.register_at_fork(after_in_child=_pool.clear)
