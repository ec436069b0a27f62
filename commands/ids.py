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
            block = os.urandom(16 * _BATCH)
            _pool.extend(block[i : i + 16] for i in range(0, len(block), 16))


def new_call_id() -> str:
    """A call id: 32 random hexadecimal digits."""
    return _random16().hex()


def new_uuid() -> uuid.UUID:
    """A random (version 4) UUID."""
    return uuid.UUID(bytes=_random16(), version=4)


os.register_at_fork(after_in_child=_pool.clear)
