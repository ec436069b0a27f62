"""Governance: who may use which model, with what budget and rate, and every refusal.

All rules live in one stream (``GovernanceRules``), so the rules in force at any moment
are the fold of that stream's events up to that moment, and two people changing rules at
once are ordered by the library's optimistic concurrency. Each refused LM call is a
stream of its own (``ExecutionDenial``): refusals are written from many processes at
once and never contend with each other or with the rules.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.domain.base import LedgerAggregate, provenance
from ledger.errors import InvalidInputError
from ledger.hashing import content_id

#: What a policy rule does; ``remove`` withdraws an earlier rule by its id.
POLICY_ACTIONS = ("allow", "deny", "remove")
#: Whom a policy rule names: actors by a glob of their names, or members of a role.
PRINCIPAL_KINDS = ("actor", "role")
#: What a budget is counted for.
BUDGET_SCOPES = ("actor", "program")
#: The calendar windows (UTC) a budget is counted over.
BUDGET_PERIODS = ("day", "month")

_BRACKET = re.compile(r"\[!?\]?[^\]]*\]")


def check_pattern(pattern: str, what: str) -> str:
    """Return ``pattern`` stripped if it is a usable glob, else raise InvalidInputError.

    A glob is ``*`` (any text), ``?`` (one character) and ``[...]`` (one of a set); a
    ``[`` with no closing ``]`` is refused rather than silently matched literally.
    """
    value = pattern.strip() if isinstance(pattern, str) else ""
    if not value:
        msg = f"The {what} pattern is empty; give a name or a glob such as 'openai/gpt-4*'."
        raise InvalidInputError(msg)
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        msg = f"The {what} pattern {pattern!r} contains spaces or control characters."
        raise InvalidInputError(msg)
    if "[" in _BRACKET.sub("", value) or "]" in _BRACKET.sub("", value):
        msg = (
            f"The {what} pattern {pattern!r} has an unbalanced '[' or ']'; "
            "use [abc] for one of a set of characters."
        )
        raise InvalidInputError(msg)
    return value


def check_name(name: str, what: str) -> str:
    """Return ``name`` stripped if it is a non-empty name without spaces."""
    value = name.strip() if isinstance(name, str) else ""
    if not value or any(ch.isspace() or not ch.isprintable() for ch in value):
        msg = f"The {what} must be a non-empty name without spaces, not {name!r}."
        raise InvalidInputError(msg)
    return value


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        msg = f"The {what} must be one of {', '.join(choices)}, not {value!r}."
        raise InvalidInputError(msg)
    return value


def check_usd(amount: float) -> float:
    """Return ``amount`` as a float if it is a finite number of USD >= 0."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        msg = f"A budget must be a number of USD, not {amount!r}."
        raise InvalidInputError(msg)
    if not math.isfinite(amount) or amount < 0:
        msg = f"A budget must be a finite number of USD >= 0, not {amount}."
        raise InvalidInputError(msg)
    return float(amount)


def check_calls(calls: int) -> int:
    """Return ``calls`` if it is a whole number of calls per minute >= 1."""
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        msg = f"A rate limit must be a whole number of calls per minute >= 1, not {calls!r}."
        raise InvalidInputError(msg)
    return calls


class GovernanceRules(LedgerAggregate):
    """The one stream holding every policy, role, budget and rate-limit change."""

    class GovernanceStarted(LedgerAggregate.Created):
        """Governance rules were written to this ledger for the first time."""

    class RuleChange(LedgerAggregate.Event):
        """Base of the events that change the rules; each is counted."""

        def apply(self, aggregate: GovernanceRules) -> None:
            """Count the change."""
            aggregate.changes += 1

    class PolicyChanged(RuleChange):
        """A rule allowing or denying actors or a role the use of models, or its removal."""

        rule_id: str
        action: str
        principal_kind: str
        principal: str
        models: str

    class RoleAssigned(RuleChange):
        """An actor was made a member of a role (``member`` true) or left it (false)."""

        member_actor: str
        role: str
        member: bool

    class BudgetSet(RuleChange):
        """A USD budget per day or month for an actor or a program (null removes it)."""

        scope_kind: str
        scope: str
        period: str
        limit_usd: float | None

    class RateLimitSet(RuleChange):
        """A limit of calls per minute for matching actors and models (null removes it)."""

        actors: str
        models: str
        calls_per_minute: int | None

    def __init__(self) -> None:
        self.changes = 0

    #: The id of the single rules stream of every ledger.
    STREAM_ID: UUID = content_id("governance", "rules")

    @classmethod
    def start(cls, *, actor: str) -> GovernanceRules:
        """Open the rules stream (``GovernanceStarted``)."""
        return cls._create(cls.GovernanceStarted, id=cls.STREAM_ID, **provenance(actor, None, None))

    def change_policy(
        self,
        *,
        rule_id: str,
        action: str,
        principal_kind: str,
        principal: str,
        models: str,
        actor: str,
    ) -> None:
        """Record a policy change (``PolicyChanged``) after checking its patterns."""
        fields: dict[str, Any] = {
            "rule_id": check_name(rule_id, "rule id"),
            "action": check_choice(action, POLICY_ACTIONS, "policy action"),
            "principal_kind": check_choice(
                principal_kind, PRINCIPAL_KINDS, "policy principal kind"
            ),
            "principal": check_pattern(principal, principal_kind),
            "models": check_pattern(models, "model"),
        }
        self.record(self.PolicyChanged, None, **fields, **provenance(actor, None, None))

    def assign_role(self, *, member_actor: str, role: str, member: bool, actor: str) -> None:
        """Record that an actor joined or left a role (``RoleAssigned``)."""
        self.record(
            self.RoleAssigned,
            None,
            member_actor=check_name(member_actor, "actor"),
            role=check_name(role, "role"),
            member=bool(member),
            **provenance(actor, None, None),
        )

    def set_budget(
        self, *, scope_kind: str, scope: str, period: str, limit_usd: float | None, actor: str
    ) -> None:
        """Record a budget (``BudgetSet``); ``limit_usd=None`` removes it."""
        self.record(
            self.BudgetSet,
            None,
            scope_kind=check_choice(scope_kind, BUDGET_SCOPES, "budget scope"),
            scope=check_name(scope, scope_kind),
            period=check_choice(period, BUDGET_PERIODS, "budget period"),
            limit_usd=None if limit_usd is None else check_usd(limit_usd),
            **provenance(actor, None, None),
        )

    def set_rate_limit(
        self, *, actors: str, models: str, calls_per_minute: int | None, actor: str
    ) -> None:
        """Record a rate limit (``RateLimitSet``); ``calls_per_minute=None`` removes it."""
        self.record(
            self.RateLimitSet,
            None,
            actors=check_pattern(actors, "actor"),
            models=check_pattern(models, "model"),
            calls_per_minute=None if calls_per_minute is None else check_calls(calls_per_minute),
            **provenance(actor, None, None),
        )


class ExecutionDenial(LedgerAggregate):
    """One LM call refused before it was made: a stream of one ``ExecutionDenied``."""

    class ExecutionDenied(LedgerAggregate.Created):
        """An LM call was refused by a policy, a budget or a rate limit; nothing was sent."""

        model: str
        program_name: str | None
        reason: str
        message: str
        details: dict[str, Any]

    def __init__(
        self, model: str, program_name: str | None, reason: str, message: str, details: Any
    ) -> None:
        self.model = model
        self.program_name = program_name
        self.reason = reason
        self.message = message

    @classmethod
    def deny(
        cls,
        *,
        denial_id: UUID,
        model: str,
        program_name: str | None,
        reason: str,
        message: str,
        details: dict[str, Any],
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> ExecutionDenial:
        """Record a refused call (``ExecutionDenied``)."""
        extra: dict[str, Any] = {} if occurred_at is None else {"timestamp": occurred_at}
        return cls._create(
            cls.ExecutionDenied,
            id=denial_id,
            model=model,
            program_name=program_name,
            reason=reason,
            message=message,
            details=details,
            **provenance(actor, trace_id, span_id),
            **extra,
        )
