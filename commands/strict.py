"""Delivering a failed synchronous write to the caller.

DSPy swallows (and logs) any exception raised by a callback, so the recorder cannot
raise from ``on_module_end``. Under ``durability="sync"`` the writer's error is parked in
a ContextVar instead, and a thin wrapper around ``dspy.Module.__call__`` / ``acall``
raises it once the top-level call has returned. The user's own exception always wins:
if the program raised, that exception propagates unchanged and the write error is logged.
"""

from __future__ import annotations

import functools
import logging
from contextvars import ContextVar
from typing import Any

logger = logging.getLogger("dspy_ledger")

#: A write error waiting to be raised to the caller of the current top-level call.
parked_error: ContextVar[BaseException | None] = ContextVar("dspy_ledger_write_error", default=None)

_installed = False


def _raise_parked() -> None:
    error = parked_error.get()
    if error is not None:
        parked_error.set(None)
        raise error


def _drop_parked() -> None:
    error = parked_error.get()
    if error is not None:
        parked_error.set(None)
        logger.error("dspy-ledger: %s", error)


def install() -> None:
    """Wrap ``dspy.Module.__call__`` and ``acall`` once per process (idempotent)."""
    global _installed  # noqa: PLW0603 - a process-wide, once-only patch
    if _installed:
        return
    import dspy

    original_call = dspy.Module.__call__
    original_acall = dspy.Module.acall

    @functools.wraps(original_call)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = original_call(self, *args, **kwargs)
        except BaseException:
            _drop_parked()
            raise
        _raise_parked()
        return result

    @functools.wraps(original_acall)
    async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await original_acall(self, *args, **kwargs)
        except BaseException:
            _drop_parked()
            raise
        _raise_parked()
        return result

    from commands.hooks import mark_installed

    dspy.Module.__call__ = mark_installed(call)
    dspy.Module.acall = mark_installed(acall)
    _installed = True
