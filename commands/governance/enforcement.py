"""Enforcement at the LM call: refuse before any request is sent, count spend after.

:func:`install` wraps ``dspy.BaseLM.__call__`` and ``acall`` once per process, outside
DSPy's callback decorator: a refused call raises a
:class:`~ledger.errors.GovernanceError` before DSPy prepares, sends or even announces
the call, so no request reaches the provider and no ``ModelExecuted`` is recorded;
the refusal is recorded as ``ExecutionDenied`` instead. It also wraps
``dspy.clients.execution.finalize`` to learn each call's billed cost (0 for a cache
hit), which is added to the spend counters of the budgets the call counted against.

With no :class:`Enforcer` registered, the wrappers only check an empty list.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import threading
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dspy.utils.callback_context import ACTIVE_CALL_ID
from eventsourcing.persistence import PersistenceError

from commands import scope
from commands.governance.counters import CounterKey, CounterStore
from commands.governance.rules import Budget, Rulebook, window_key, window_start
from commands.tracing import current_trace_ids
from ledger.application import LedgerApplication, store_error
from ledger.domain.governance import ExecutionDenial, GovernanceRules
from ledger.errors import (
    BudgetExceeded,
    GovernanceError,
    LedgerError,
    PolicyViolation,
    RateLimited,
)

logger = logging.getLogger("dspy_ledger")

_ADVERB = {"day": "daily", "month": "monthly"}

#: How long a process trusts its copy of the rules before looking for new events.
DEFAULT_REFRESH_SECONDS = 1.0


@dataclass
class Admission:
    """A call let through: the spend counters its cost goes to."""

    spend_keys: list[CounterKey] = field(default_factory=list)


class Enforcer:
    """Decides, for one ledger, whether an LM call may go ahead, and counts its spend."""

    def __init__(
        self,
        app: LedgerApplication,
        *,
        default_actor: str,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
    ) -> None:
        self.app = app
        self.default_actor = default_actor
        self.refresh_seconds = refresh_seconds
        self.counters = CounterStore(app.recorder.datastore)  # type: ignore[attr-defined]
        self._book = Rulebook()
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def rulebook(self) -> Rulebook:
        """The rules in force, reading only events newer than the cached copy."""
        now = time.monotonic()
        if now - self._checked_at < self.refresh_seconds:
            return self._book
        with self._lock:
            if now - self._checked_at >= self.refresh_seconds:
                newer = list(self.app.events.get(GovernanceRules.STREAM_ID, gt=self._book.version))
                if newer:
                    # Other threads may be deciding on the current copy: fold into a new one.
                    book = copy.deepcopy(self._book)
                    for event in newer:
                        book.apply(event)
                    self._book = book
                self._checked_at = time.monotonic()
        return self._book

    def invalidate(self) -> None:
        """Read the rules again on the next call (this process just changed them)."""
        self._checked_at = float("-inf")

    def admit(self, lm: Any) -> Admission:
        """Let the call through, or record ``ExecutionDenied`` and raise why not.

        Governance fails closed: if the rules or counters cannot be read, the call is not
        made and StoreUnavailableError says why.
        """
        try:
            return self._admit(lm)
        except (PersistenceError, OSError) as error:
            raise store_error(self.app.store, error) from error

    def _admit(self, lm: Any) -> Admission:
        book = self.rulebook()
        if book.empty:
            return Admission()
        actor = scope.current_actor() or self.default_actor
        model = str(getattr(lm, "model", type(lm).__name__))
        program = top_program()
        now = datetime.now(UTC)
        who: dict[str, Any] = {"actor": actor, "model": model, "program": program}
        decision = book.decide(actor, model)
        if not decision.allowed:
            details: dict[str, Any] = {"rule_id": decision.rule.rule_id} if decision.rule else {}
            self._deny(PolicyViolation, decision.reason, **who, details=details)
        budgets = book.budgets_for(actor, program)
        keys = [_spend_key(b, now) for b in budgets]
        spent = self.counters.amounts(keys)
        for budget, key in zip(budgets, keys, strict=True):
            if spent[key] >= budget.limit_usd:
                reason = (
                    f"The {_ADVERB[budget.period]} budget of {budget.scope_kind} "
                    f"{budget.scope!r} (${budget.limit_usd:.6f}) is spent "
                    f"(${spent[key]:.6f} since {key[2]})."
                )
                details = {
                    "scope_kind": budget.scope_kind,
                    "scope": budget.scope,
                    "period": budget.period,
                    "limit_usd": budget.limit_usd,
                    "spent_usd": spent[key],
                    "window_start": key[2],
                }
                self._deny(BudgetExceeded, reason, **who, details=details)
        for limit in book.rate_limits_for(actor, model):
            rate_key = ("rate", f"{actor}\n{model}", window_key("minute", now))
            next_minute = window_start("minute", now) + timedelta(minutes=1)
            if self.counters.take_call(rate_key, limit.calls_per_minute) is None:
                reason = (
                    f"{actor!r} has made {limit.calls_per_minute} calls to {model!r} this "
                    f"minute, the limit set for actors {limit.actors!r} and models "
                    f"{limit.models!r}; retry after {next_minute:%H:%M:%S}Z."
                )
                details = {
                    "actors": limit.actors,
                    "models": limit.models,
                    "calls_per_minute": limit.calls_per_minute,
                    "window_start": rate_key[2],
                }
                self._deny(RateLimited, reason, **who, details=details)
        return Admission(spend_keys=keys)

    def settle(self, admission: Admission, cost_usd: float | None) -> None:
        """Add a finished call's billed cost to its budgets' counters."""
        if not admission.spend_keys or not cost_usd:
            return
        try:
            self.counters.add(admission.spend_keys, float(cost_usd))
        except Exception:
            logger.exception("dspy-ledger could not count $%s of spend.", cost_usd)

    def _deny(
        self,
        error_class: type[GovernanceError],
        reason: str,
        *,
        actor: str,
        model: str,
        program: str | None,
        details: dict[str, Any],
    ) -> None:
        trace_id, span_id = current_trace_ids()
        # The enclosing DSPy call: the node of the failed prediction's call tree.
        details = {**details, "dspy_call_id": ACTIVE_CALL_ID.get()}
        denial = ExecutionDenial.deny(
            denial_id=uuid.uuid4(),
            model=model,
            program_name=program,
            reason=error_class.reason,
            message=reason,
            details=details,
            actor=actor,
            trace_id=trace_id,
            span_id=span_id,
        )
        try:
            self.app.save_aggregates(denial)
        except LedgerError:
            logger.exception("dspy-ledger could not record a refused call: %s", reason)
        raise error_class(reason, actor=actor, model=model)


def _spend_key(budget: Budget, now: datetime) -> CounterKey:
    return (budget.counter_kind, budget.scope, window_key(budget.period, now))


def top_program() -> str | None:
    """The name of the outermost DSPy module running in this context, if any."""
    import dspy

    callers = dspy.settings.get("caller_modules") or []
    return type(callers[0]).__qualname__ if callers else None


# -- the process-wide wrapper -----------------------------------------------------------

_enforcers: list[Enforcer] = []
_cost_slot: ContextVar[dict[str, Any] | None] = ContextVar("dspy_ledger_cost", default=None)
_install_lock = threading.Lock()
_installed = False


def register(enforcer: Enforcer) -> None:
    """Enforce ``enforcer``'s rules on every LM call of this process."""
    install()
    if enforcer not in _enforcers:
        _enforcers.append(enforcer)


def unregister(enforcer: Enforcer) -> None:
    """Stop enforcing ``enforcer``'s rules."""
    if enforcer in _enforcers:
        _enforcers.remove(enforcer)


def _admit_all(lm: Any) -> list[tuple[Enforcer, Admission]]:
    return [(enforcer, enforcer.admit(lm)) for enforcer in list(_enforcers)]


def _settle_all(admitted: list[tuple[Enforcer, Admission]], slot: dict[str, Any]) -> None:
    for enforcer, admission in admitted:
        enforcer.settle(admission, slot.get("cost"))


def install() -> None:
    """Wrap ``BaseLM.__call__``, ``BaseLM.acall`` and DSPy's ``finalize`` once."""
    global _installed  # noqa: PLW0603 - a process-wide, once-only patch
    with _install_lock:
        if _installed:
            return
        from dspy.clients import base_lm, execution

        original_call = base_lm.BaseLM.__call__
        original_acall = base_lm.BaseLM.acall
        original_finalize = execution.finalize

        @functools.wraps(original_call)
        def governed_call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not _enforcers:
                return original_call(self, *args, **kwargs)
            admitted = _admit_all(self)
            slot: dict[str, Any] = {"lm": self}
            token = _cost_slot.set(slot)
            try:
                return original_call(self, *args, **kwargs)
            finally:
                _cost_slot.reset(token)
                _settle_all(admitted, slot)

        @functools.wraps(original_acall)
        async def governed_acall(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not _enforcers:
                return await original_acall(self, *args, **kwargs)
            admitted = await asyncio.to_thread(_admit_all, self)
            slot: dict[str, Any] = {"lm": self}
            token = _cost_slot.set(slot)
            try:
                return await original_acall(self, *args, **kwargs)
            finally:
                _cost_slot.reset(token)
                await asyncio.to_thread(_settle_all, admitted, slot)

        @functools.wraps(original_finalize)
        def finalize(lm: Any, call: Any, result: Any) -> Any:
            slot = _cost_slot.get()
            if slot is not None and slot.get("lm") is lm:
                cost = getattr(result, "cost", None)
                billed = 0.0 if getattr(result, "cache_hit", False) else cost
                slot["cost"] = (slot.get("cost") or 0.0) + float(billed or 0.0)
            return original_finalize(lm, call, result)

        base_lm.BaseLM.__call__ = governed_call
        base_lm.BaseLM.acall = governed_acall
        execution.finalize = finalize
        _installed = True
