"""Pausing Python's cyclic garbage collector around batches of short-lived objects.

Turning a batch of events into view rows, or a batch of drafts into events, allocates
tens of thousands of short-lived tuples, dicts and strings, none in a reference cycle.
Each allocation burst makes the collector walk the young objects, and every so often
the whole heap: measured, about a third of a view rebuild's CPU time, and 5-10% of the
writer process's (a third when thousands of drafts wait in it). Reference counting
still frees everything as it goes; the collector runs again, on its usual thresholds,
once the batch is done.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _CollectorPause:
    """Pauses Python's cyclic garbage collector while a batch is processed.

    Nested and concurrent pauses (views caught up on several threads) share one pause,
    and the collector is enabled again only if it was enabled when the first began.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._reenable = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._reenable = gc.isenabled()
                gc.disable()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._reenable:
                    gc.enable()


#: The process-wide pause: ``with collector_paused(): ...``.
collector_paused = _CollectorPause()
