"""Remembering a program's version between calls, and noticing when its state changes.

Hashing a program's state (``dump_state()``) on every prediction is the recorder's single
largest cost: DSPy walks every attribute of every sub-module, including each module's
call history, which grows with every call (up to ``max_history_size``). So the version
is computed once per program object and reused for as long as nothing it depends on has
changed.

"Nothing has changed" is checked by identity, cheaply and without walking histories:
the cache keeps a *snapshot*, the attributes of every object the state is built from
(the program, its sub-modules, their predictors, the predictors' LMs and demos), one
level deep: each attribute's name and value, and for a list or dict the items it holds.
Any assignment (``predictor.demos = ...``, ``lm.kwargs["temperature"] = 0.9``,
``demos.append(...)``, ``load_state``, ``with_instructions``) puts another object (or
another count of them) in its place, so the next call hashes the state again. The
snapshot holds references to everything in it, so no new object can take the place of
one while the entry lives.

The snapshot is compared on every call, so it is compared with what the entry found once
(the attribute dicts and the containers in them) by C-level passes alone: a Python loop
over the attributes cost a fifth of the whole recorder, and taking every item's ``id``
(an int made per item) cost 12 µs of a 365 µs prediction in place, against 2 µs in a
loop (docs/performance.md, item 17). DSPy's per-call histories
(``history``, ``callbacks``) count by identity only: DSPy appends to them in place and
assigns them anew only when a module is created or copied.

A change made deeper than one level inside an attribute (mutating a nested list inside a
demo's field in place), or an object's whole ``__dict__`` replaced, is not seen until the
next full hash, which happens at the latest after :data:`RECHECK_EVERY` calls or
:data:`RECHECK_SECONDS` seconds.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Collection
from itertools import chain
from operator import is_
from typing import Any, TypeVar

#: DSPy's own bookkeeping, which is not part of a program's state and changes every call.
_SKIPPED = frozenset({"history", "callbacks"})
#: Containers larger than this are not snapshotted item by item; the program is re-hashed.
_MAX_ITEMS = 1000
#: The state is hashed again after this many cached calls ...
RECHECK_EVERY = 1000
#: ... or after this many seconds, whichever comes first.
RECHECK_SECONDS = 5.0

T = TypeVar("T")


class _Watched:
    """What a snapshot is taken of: attribute dicts, and the lists and dicts in them.

    Found once per cache entry: reading ``__dict__`` goes through DSPy's own
    ``Module.__getattribute__``, which costs more than comparing the dict.
    """

    __slots__ = ("attributes", "containers", "mappings", "sources")

    def __init__(self, objects: list[Any]) -> None:
        found = (getattr(obj, "__dict__", None) for obj in objects)
        self.attributes: list[dict[str, Any]] = [a for a in found if isinstance(a, dict)]
        self.containers: list[list[Any] | dict[Any, Any]] = []
        self.mappings: list[dict[Any, Any]] = []
        for attributes in self.attributes:
            for key, value in attributes.items():
                # By type(): isinstance on a DSPy module or a signature class falls
                # back to their slow __class__ lookup.
                kind = type(value)
                if key in _SKIPPED or not issubclass(kind, (list, dict)):
                    continue
                self.containers.append(value)
                if issubclass(kind, dict):
                    self.mappings.append(value)
        # What the snapshot reads, as live views: each attribute dict (its names) and
        # its values, each container (its items, or a dict's keys), each dict's values.
        self.sources: list[Collection[Any]] = [
            *(part for a in self.attributes for part in (a, a.values())),
            *self.containers,
            *(mapping.values() for mapping in self.mappings),
        ]

    def too_large(self) -> bool:
        """True if a container is too large to snapshot item by item."""
        return any(len(container) > _MAX_ITEMS for container in self.containers)

    def sizes(self) -> tuple[int, ...]:
        """The size of every source."""
        return tuple(map(len, self.sources))

    def snapshot(self) -> list[Any]:
        """Every attribute name and value, container item and mapping value, in order.

        Held by the cache entry: it keeps them alive, so no new object can take the
        place (the id) of one still in it.
        """
        return list(chain.from_iterable(self.sources))

    def unchanged(self, sizes: tuple[int, ...], snapshot: list[Any]) -> bool:
        """True if every source has the size and holds the very objects it had.

        Compared by identity, in two C-level passes with no Python loop and no object
        made per item (this runs on every prediction): the sizes first, so that the same
        objects split differently between sources still count as a change.
        """
        try:
            return sizes == self.sizes() and all(
                map(is_, snapshot, chain.from_iterable(self.sources))
            )
        except RuntimeError:  # a dict changed size while being read: another thread
            return False


def _tracked(program: Any) -> list[Any]:
    """The program and every object its dumped state is built from.

    Walks sub-modules the way DSPy's ``named_parameters`` does (attributes, and items of
    lists, tuples and dicts) but never into DSPy's per-call histories.
    """
    from dspy.primitives.base_module import BaseModule

    objects: list[Any] = []
    seen: set[int] = set()
    pending: list[Any] = [program]
    while pending:
        obj = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            pending.extend(obj[:_MAX_ITEMS])
            continue
        if isinstance(obj, dict):
            pending.extend(list(obj.values())[:_MAX_ITEMS])
            continue
        if not isinstance(obj, BaseModule) and obj is not program:
            continue
        objects.append(obj)
        for key, value in vars(obj).items():
            if key in _SKIPPED:
                continue
            if key == "lm" and value is not None:
                objects.append(value)
            elif key == "demos" and isinstance(value, list):
                objects.extend(demo for demo in value[:_MAX_ITEMS] if hasattr(demo, "__dict__"))
            else:
                pending.append(value)
    return objects


class _Entry:
    __slots__ = ("calls", "sizes", "snapshot", "stamp", "value", "watched")

    def __init__(
        self, value: Any, watched: _Watched, sizes: tuple[int, ...], snapshot: list[Any]
    ) -> None:
        self.value = value
        self.watched = watched
        self.sizes = sizes
        self.snapshot = snapshot
        self.calls = 0
        self.stamp = time.monotonic()


class VersionCache:
    """Computes a value from a program's state once, until that state changes."""

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[Any, _Entry] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, program: Any, compute: Callable[[Any], T]) -> T:
        """``compute(program)``, or the value computed last time if nothing changed."""
        try:
            entry = self._entries.get(program)
        except TypeError:  # not weak-referenceable or not hashable: no caching
            return compute(program)
        if entry is not None:
            entry.calls += 1
            fresh = entry.calls < RECHECK_EVERY and (
                time.monotonic() - entry.stamp < RECHECK_SECONDS
            )
            if fresh and entry.watched.unchanged(entry.sizes, entry.snapshot):
                return entry.value  # type: ignore[no-any-return]
        watched = _Watched(_tracked(program))
        # Taken before hashing: what is compared by identity stays alive from now on.
        sizes, snapshot = watched.sizes(), watched.snapshot()
        value = compute(program)
        # Cache only if nothing changed while hashing (another thread editing the program).
        if not watched.too_large() and watched.unchanged(sizes, snapshot):
            with self._lock:
                self._entries[program] = _Entry(value, watched, sizes, snapshot)
        return value
