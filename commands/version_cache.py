"""Remembering a program's version between calls, and noticing when its state changes.

Hashing a program's state (``dump_state()``) on every prediction is the recorder's single
largest cost: DSPy walks every attribute of every sub-module, including each module's
call history, which grows with every call (up to ``max_history_size``). So the version
is computed once per program object and reused for as long as nothing it depends on has
changed.

"Nothing has changed" is checked by identity, cheaply and without walking histories:
the cache keeps a *snapshot* of the attributes of every object the state is built from
(the program, its sub-modules, their predictors, the predictors' LMs and demos), one
level deep: each attribute's value, and for a list, tuple or dict the items it holds.
Any assignment (``predictor.demos = ...``, ``lm.kwargs["temperature"] = 0.9``,
``demos.append(...)``, ``load_state``, ``with_instructions``) replaces a value in one of
those snapshots, so the next call hashes the state again. The snapshot holds references,
not ids, so a freed object's id reused by a new one cannot fool it.

A change made deeper than one level inside an attribute (mutating a nested list inside a
demo's field in place) is not seen until the next full hash, which happens at the latest
after :data:`RECHECK_EVERY` calls or :data:`RECHECK_SECONDS` seconds.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
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
_Snapshot = tuple[tuple[Any, ...], ...]


def _shallow(value: Any) -> tuple[Any, ...] | None:
    if isinstance(value, (list, tuple)):
        return tuple(value) if len(value) <= _MAX_ITEMS else None
    if isinstance(value, dict):
        return tuple(value.items()) if len(value) <= _MAX_ITEMS else None
    return ()


def _snapshot(objects: list[Any]) -> _Snapshot | None:
    parts: list[tuple[Any, ...]] = []
    for obj in objects:
        attributes = getattr(obj, "__dict__", None)
        if attributes is None:
            continue
        for key, value in attributes.items():
            if key in _SKIPPED:
                continue
            items = _shallow(value)
            if items is None:
                return None
            parts.append((obj, key, value, items))
    return tuple(parts)


def _same(a: _Snapshot, b: _Snapshot) -> bool:
    if len(a) != len(b):
        return False
    for left, right in zip(a, b, strict=True):
        if left[0] is not right[0] or left[1] != right[1] or left[2] is not right[2]:
            return False
        if len(left[3]) != len(right[3]):
            return False
        for x, y in zip(left[3], right[3], strict=True):
            if x is not y:
                return False
    return True


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
    __slots__ = ("calls", "objects", "snapshot", "stamp", "value")

    def __init__(self, value: Any, objects: list[Any], snapshot: _Snapshot) -> None:
        self.value = value
        self.objects = objects
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
            snapshot = _snapshot(entry.objects) if fresh else None
            if snapshot is not None and _same(snapshot, entry.snapshot):
                return entry.value  # type: ignore[no-any-return]
        objects = _tracked(program)
        before = _snapshot(objects)
        value = compute(program)
        # Cache only if nothing changed while hashing (another thread editing the program).
        if before is not None and _same(before, _snapshot(objects) or ()):
            with self._lock:
                self._entries[program] = _Entry(value, objects, before)
        return value
