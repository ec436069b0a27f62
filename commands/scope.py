"""Who is acting and in which context: task- and thread-scoped settings of the recorder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_actor: ContextVar[str | None] = ContextVar("dspy_ledger_actor", default=None)
_context: ContextVar[str | None] = ContextVar("dspy_ledger_context", default=None)
_subject: ContextVar[str | None] = ContextVar("dspy_ledger_subject", default=None)

#: The context of a prediction made outside any evaluation, optimization or replay.
PRODUCTION = "production"


def current_actor() -> str | None:
    """The actor set by the innermost :func:`acting_as`, if any."""
    return _actor.get()


def current_context() -> str | None:
    """The context set by the innermost :func:`in_context`, if any."""
    return _context.get()


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Record everything done inside the block (and its tasks) as done by ``actor``.

    Asyncio tasks inherit the actor; DSPy's own worker threads (``dspy.Parallel``,
    ``Evaluate(num_threads=...)``) inherit it through the call they run under. A plain
    ``threading.Thread`` started inside the block does not: run its target under
    ``contextvars.copy_context().run``.
    """
    if not actor or not actor.strip():
        msg = "An actor must be a non-empty name."
        raise ValueError(msg)
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


@contextmanager
def in_context(context: str) -> Iterator[None]:
    """Label predictions made inside the block with ``context`` (e.g. ``replay:<id>``)."""
    token = _context.set(context)
    try:
        yield
    finally:
        _context.reset(token)


def current_subject() -> str | None:
    """The data subject set by the innermost :func:`acting_for`, if any."""
    return _subject.get()


@contextmanager
def acting_for(subject: str) -> Iterator[None]:
    """Record predictions made inside the block as concerning the data subject ``subject``.

    Their personal fields are encrypted under the subject's own key (docs/privacy.md).
    The context propagates like :func:`acting_as`.
    """
    if not isinstance(subject, str) or not subject.strip():
        msg = "A data subject must be a non-empty id, such as 'customer-123'."
        raise ValueError(msg)
    with _setting(_subject, subject):
        yield


@contextmanager
def _setting(variable: ContextVar[str | None], value: str) -> Iterator[None]:
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


#: Where the recorder notes the draft of each prediction it starts in this context.
_started_calls: ContextVar[list[Any] | None] = ContextVar("dspy_ledger_started", default=None)


def note_prediction_started(draft: Any) -> None:
    """Called by the recorder when a top-level call becomes a prediction (its draft)."""
    started = _started_calls.get()
    if started is not None:
        started.append(draft)


@contextmanager
def watching_predictions() -> Iterator[list[Any]]:
    """Collect the drafts (:class:`commands.drafts.PredictionDraft`) of the predictions
    started inside the block, in order.

    Once the block's calls have ended, each holds what the prediction's events will
    record: its id, its root call id (``call_tree["call_id"]``), its latency and its
    model calls. A caller (replay) finds there the prediction its own call made.
    """
    started: list[Any] = []
    token = _started_calls.set(started)
    try:
        yield started
    finally:
        _started_calls.reset(token)
