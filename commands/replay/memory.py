"""Keeping a replay's record out of the cyclic garbage collector's way.

A replay reads thousands of small dicts and lists (messages, outputs, call trees) and
holds them until it is done. None of them is in a reference cycle, so reference counting
frees them; but every young-generation collection walks the new ones again, and as they
age they push the collector towards a full collection of the whole heap (DSPy's modules
included, about 100 ms). Reading the record, preparing the programs, judging and
recording the verdicts run with the collector paused (the replayed program and the
metric do not run there; a program factory runs once per version), and while the program
runs, what was alive when it started (the record, the prepared programs, DSPy itself) is
frozen out of the collector's generations.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_while_running() -> Iterator[None]:
    """Freeze every object alive now out of the collector's generations, until the end.

    Left alone when objects are frozen already: someone else (a server that freezes
    before it forks, another replay) froze them and unfreezes them when it chooses.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
