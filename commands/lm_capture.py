"""Seeing what DSPy's callbacks do not show about an LM call: its history entry.

``on_lm_end`` receives only the outputs. Usage, cost, the response model and whether
the answer came from DSPy's cache live in the history entry DSPy builds in
``dspy.clients.execution.finalize`` and hands to ``BaseLM.update_history``. We wrap those
two functions once, and they copy what they see into a per-call *slot* held in a
ContextVar, so concurrent calls in threads or tasks never see each other's entries.
Outside a recorded call the wrappers only read one ContextVar and carry on.
"""

from __future__ import annotations

import functools
import logging
from contextvars import ContextVar
from typing import Any

logger = logging.getLogger("dspy_ledger")

#: The slot of the LM call running in this context, if it is being recorded.
current_slot: ContextVar[dict[str, Any] | None] = ContextVar("dspy_ledger_lm_slot", default=None)

_installed = False


def install() -> None:
    """Wrap DSPy's history hand-off and finalization once per process (idempotent)."""
    global _installed  # noqa: PLW0603 - a process-wide, once-only patch
    if _installed:
        return
    from dspy.clients import base_lm

    original_update_history = base_lm.BaseLM.update_history

    @functools.wraps(original_update_history)
    def update_history(self: Any, entry: Any) -> Any:
        slot = current_slot.get()
        if slot is not None and slot.get("lm") is self:
            slot["entry"] = entry
        return original_update_history(self, entry)

    base_lm.BaseLM.update_history = update_history

    try:
        from dspy.clients import execution
    except ImportError:  # another DSPy layout: cache hits are then inferred from usage
        logger.info("dspy-ledger: DSPy has no clients.execution; cache hits are inferred.")
    else:
        original_finalize = execution.finalize

        @functools.wraps(original_finalize)
        def finalize(lm: Any, call: Any, result: Any) -> Any:
            slot = current_slot.get()
            if slot is not None and slot.get("lm") is lm:
                slot["cache_hit"] = bool(getattr(result, "cache_hit", False))
            return original_finalize(lm, call, result)

        execution.finalize = finalize
    _installed = True
