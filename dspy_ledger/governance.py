"""``GovernanceMixin``: model policies, budgets and rate limits on the ``Ledger`` facade.

``ledger.allow(...)``, ``deny``, ``remove_policy``, ``assign_role``, ``set_budget``,
``set_rate_limit`` record rule changes; ``ledger.policies(as_of=...)`` answers what was
in force at any moment; ``ledger.enforce()`` makes this process refuse LM calls the
rules forbid (``dspy_ledger.open(..., enforce=True)`` does it on opening).
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from pydantic import BaseModel

from commands import scope
from commands.governance import enforcement
from commands.governance.counters import CounterStore
from commands.governance.rules import Budget, Rulebook, window_key
from ledger.application import DuplicateStreamError, LedgerApplication
from ledger.domain.governance import GovernanceRules
from ledger.errors import InvalidInputError

_WRITE_ATTEMPTS = 5


class PolicyInfo(BaseModel):
    """One allow or deny rule in force."""

    rule_id: str
    effect: str
    principal_kind: str
    principal: str
    models: str
    set_by: str
    set_at: str


class BudgetInfo(BaseModel):
    """One budget in force, with what is spent in the current window."""

    scope_kind: str
    scope: str
    period: str
    limit_usd: float
    set_by: str
    set_at: str
    window_start: str
    spent_usd: float


class RateLimitInfo(BaseModel):
    """One rate limit in force."""

    actors: str
    models: str
    calls_per_minute: int
    set_by: str
    set_at: str


class AccessAnswer(BaseModel):
    """Whether an actor could use a model at the moment asked about, and why."""

    actor: str
    model: str
    allowed: bool
    reason: str
    roles: list[str]
    budgets: list[BudgetInfo]
    rate_limits: list[RateLimitInfo]


class GovernanceReport(BaseModel):
    """The governance rules in force at ``as_of`` (now if not given)."""

    as_of: str
    rules_version: int
    last_change: str | None
    policies: list[PolicyInfo]
    roles: dict[str, list[str]]
    budgets: list[BudgetInfo]
    rate_limits: list[RateLimitInfo]
    access: AccessAnswer | None = None


class Enforcement(AbstractContextManager["Enforcement"]):
    """Governance enforced on this process's LM calls; leaving the block stops it."""

    def __init__(self, ledger: GovernanceMixin) -> None:
        self._ledger = ledger

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ledger.stop_enforcing()


class GovernanceMixin:
    """Governance methods of the :class:`~dspy_ledger.ledger.Ledger` facade."""

    app: LedgerApplication
    actor: str
    _enforcer: enforcement.Enforcer | None = None

    # -- changing the rules ------------------------------------------------------------

    def allow(self, models: str, *, actor: str | None = None, role: str | None = None) -> str:
        """Allow actors (a glob) or a role to use models (a glob); returns the rule id."""
        return self._policy("allow", models, actor=actor, role=role)

    def deny(self, models: str, *, actor: str | None = None, role: str | None = None) -> str:
        """Deny actors (a glob) or a role the use of models; deny wins over any allow."""
        return self._policy("deny", models, actor=actor, role=role)

    def remove_policy(self, rule_id: str) -> None:
        """Withdraw an allow or deny rule by its id."""
        if rule_id not in self._rulebook().policies:
            msg = f"No policy rule {rule_id!r} is in force; see dspy-ledger policy list."
            raise InvalidInputError(msg)
        self._change(
            lambda rules, who: rules.change_policy(
                rule_id=rule_id,
                action="remove",
                principal_kind="actor",
                principal="*",
                models="*",
                actor=who,
            )
        )

    def assign_role(self, actor: str, role: str, *, member: bool = True) -> None:
        """Make ``actor`` a member of ``role`` (or, with ``member=False``, not any more)."""
        self._change(
            lambda rules, who: rules.assign_role(
                member_actor=actor, role=role, member=member, actor=who
            )
        )

    def set_budget(
        self,
        limit_usd: float | None,
        *,
        actor: str | None = None,
        program: str | None = None,
        period: str = "day",
    ) -> None:
        """Set the USD budget of an actor or a program per UTC day or month (None removes)."""
        scope_kind, name = _one_scope(actor=actor, program=program)
        self._change(
            lambda rules, who: rules.set_budget(
                scope_kind=scope_kind, scope=name, period=period, limit_usd=limit_usd, actor=who
            )
        )

    def set_rate_limit(
        self, calls_per_minute: int | None, *, actor: str = "*", model: str = "*"
    ) -> None:
        """Limit each matching actor to ``calls_per_minute`` calls per matching model."""
        self._change(
            lambda rules, who: rules.set_rate_limit(
                actors=actor, models=model, calls_per_minute=calls_per_minute, actor=who
            )
        )

    # -- reading the rules -------------------------------------------------------------

    def policies(
        self,
        as_of: datetime | str | None = None,
        *,
        actor: str | None = None,
        model: str | None = None,
    ) -> GovernanceReport:
        """The rules in force at ``as_of`` (default now), with spend in current windows.

        Given ``model``, only the rules that cover that model are listed (who could use
        it); given ``actor``, only those that cover that actor. Given both, ``access``
        also answers whether that actor could use that model then, and why.
        """
        moment = parse_moment(as_of) if as_of is not None else datetime.now(UTC)
        book = self._rulebook(moment)
        counters = self._counters()
        policies, budgets, limits = book.covering(actor=actor, model=model)
        report = GovernanceReport(
            as_of=_text(moment),
            rules_version=book.version,
            last_change=_text(book.last_change) if book.last_change else None,
            policies=[PolicyInfo(**_plain(p)) for p in policies],
            roles={a: sorted(r) for a, r in sorted(book.roles.items()) if r},
            budgets=[_budget_info(b, moment, counters) for b in budgets],
            rate_limits=[RateLimitInfo(**_plain(r)) for r in limits],
        )
        if actor is not None and model is not None:
            decision = book.decide(actor, model)
            report.access = AccessAnswer(
                actor=actor,
                model=model,
                allowed=decision.allowed,
                reason=decision.reason,
                roles=sorted(book.roles_of(actor)),
                budgets=report.budgets,
                rate_limits=report.rate_limits,
            )
        return report

    # -- enforcing ---------------------------------------------------------------------

    def enforce(
        self, *, refresh_seconds: float = enforcement.DEFAULT_REFRESH_SECONDS
    ) -> Enforcement:
        """Refuse this process's LM calls that the rules forbid (a context manager too)."""
        if self._enforcer is None:
            self._enforcer = enforcement.Enforcer(
                self.app, default_actor=self.actor, refresh_seconds=refresh_seconds
            )
            self._enforcer.counters.ensure_table()
        enforcement.register(self._enforcer)
        return Enforcement(self)

    def stop_enforcing(self) -> None:
        """Stop refusing LM calls on this ledger's behalf."""
        if self._enforcer is not None:
            enforcement.unregister(self._enforcer)

    # -- helpers -----------------------------------------------------------------------

    def _policy(self, action: str, models: str, *, actor: str | None, role: str | None) -> str:
        principal_kind, principal = _one_scope(actor=actor, role=role)
        rule_id = f"p-{uuid.uuid4().hex[:8]}"
        self._change(
            lambda rules, who: rules.change_policy(
                rule_id=rule_id,
                action=action,
                principal_kind=principal_kind,
                principal=principal,
                models=models,
                actor=who,
            )
        )
        return rule_id

    def _change(self, act: Any) -> None:
        """Load the rules stream, apply one change and save, retrying on a race."""
        who = scope.current_actor() or self.actor
        for attempt in range(_WRITE_ATTEMPTS):
            rules = self.app.get_aggregate(GovernanceRules.STREAM_ID)
            if not isinstance(rules, GovernanceRules):
                rules = GovernanceRules.start(actor=who)
            act(rules, who)
            try:
                self.app.save_aggregates(rules)
            except DuplicateStreamError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
            else:
                if self._enforcer is not None:
                    self._enforcer.invalidate()
                return

    def _rulebook(self, as_of: datetime | None = None) -> Rulebook:
        return Rulebook.fold(self.app.events.get(GovernanceRules.STREAM_ID), as_of)

    def _counters(self) -> CounterStore:
        if self._enforcer is not None:
            return self._enforcer.counters
        return CounterStore(self.app.recorder.datastore)  # type: ignore[attr-defined]


def _one_scope(**named: str | None) -> tuple[str, str]:
    given = [(kind, value) for kind, value in named.items() if value is not None]
    if len(given) != 1:
        msg = f"Name exactly one of: {', '.join('--' + k for k in named)}."
        raise InvalidInputError(msg)
    return given[0]


def parse_moment(value: datetime | str) -> datetime:
    """An ISO date or time (UTC if no zone) as an aware datetime."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            msg = f"{value!r} is not an ISO date or time; use e.g. 2025-06-01T12:00:00Z."
            raise InvalidInputError(msg) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(rule: Any) -> dict[str, Any]:
    fields = dict(vars(rule))
    fields["set_at"] = _text(fields["set_at"])
    return fields


def _budget_info(budget: Budget, moment: datetime, counters: CounterStore) -> BudgetInfo:
    window = window_key(budget.period, moment)
    key = (budget.counter_kind, budget.scope, window)
    spent = counters.amounts([key])[key]
    return BudgetInfo(**_plain(budget), window_start=window, spent_usd=spent)
