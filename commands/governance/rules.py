"""The rules in force, folded from the governance events, and the decisions they imply.

Pure domain logic: no database and no DSPy. A :class:`Rulebook` is the fold of the
``GovernanceRules`` stream up to some moment; it answers "may this actor use this
model?", "which budgets count this call?" and "which rate limits apply?".

Policy semantics (see docs/governance.md):

* A rule names actors (a glob over actor names) or a role (a glob over role names the
  actor holds), and models (a glob over model names such as ``openai/gpt-4o-mini``).
* A matching ``deny`` rule always wins over any ``allow`` rule.
* With no ``allow`` rule at all in force, every model is open to everyone (only the
  deny rules apply). Once one ``allow`` rule exists, a call needs a matching one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from ledger.domain.governance import GovernanceRules


@dataclass(frozen=True)
class PolicyRule:
    """One allow or deny rule in force."""

    rule_id: str
    effect: str
    principal_kind: str
    principal: str
    models: str
    set_by: str
    set_at: datetime

    def names(self, actor: str, roles: frozenset[str]) -> bool:
        """True if the rule's principal covers this actor (by name or by a role held)."""
        if self.principal_kind == "actor":
            return fnmatchcase(actor, self.principal)
        return any(fnmatchcase(role, self.principal) for role in roles)

    def covers(self, actor: str, roles: frozenset[str], model: str) -> bool:
        """True if the rule applies to this actor using this model."""
        return self.names(actor, roles) and fnmatchcase(model, self.models)


@dataclass(frozen=True)
class Budget:
    """A USD budget for one actor or program per UTC day or month."""

    scope_kind: str
    scope: str
    period: str
    limit_usd: float
    set_by: str
    set_at: datetime

    @property
    def counter_kind(self) -> str:
        """The spend counter this budget is checked against."""
        return f"spend:{self.scope_kind}:{self.period}"


@dataclass(frozen=True)
class RateLimit:
    """At most ``calls_per_minute`` calls per actor and model, for matching ones."""

    actors: str
    models: str
    calls_per_minute: int
    set_by: str
    set_at: datetime


@dataclass(frozen=True)
class PolicyDecision:
    """Whether a call may go ahead as far as policies go, and which rule decided."""

    allowed: bool
    rule: PolicyRule | None
    reason: str


@dataclass
class Rulebook:
    """The governance rules in force after the events folded into it."""

    policies: dict[str, PolicyRule] = field(default_factory=dict)
    roles: dict[str, set[str]] = field(default_factory=dict)
    budgets: dict[tuple[str, str, str], Budget] = field(default_factory=dict)
    rate_limits: dict[tuple[str, str], RateLimit] = field(default_factory=dict)
    version: int = 0
    last_change: datetime | None = None

    # -- folding -------------------------------------------------------------------

    def apply(self, event: Any) -> None:
        """Fold one event of the rules stream into the rulebook."""
        self.version = int(event.originator_version)
        self.last_change = event.timestamp
        who, when = event.actor, event.timestamp
        if isinstance(event, GovernanceRules.PolicyChanged):
            if event.action == "remove":
                self.policies.pop(event.rule_id, None)
            else:
                self.policies[event.rule_id] = PolicyRule(
                    event.rule_id,
                    event.action,
                    event.principal_kind,
                    event.principal,
                    event.models,
                    who,
                    when,
                )
        elif isinstance(event, GovernanceRules.RoleAssigned):
            held = self.roles.setdefault(event.member_actor, set())
            if event.member:
                held.add(event.role)
            else:
                held.discard(event.role)
        elif isinstance(event, GovernanceRules.BudgetSet):
            key = (event.scope_kind, event.scope, event.period)
            if event.limit_usd is None:
                self.budgets.pop(key, None)
            else:
                self.budgets[key] = Budget(*key, event.limit_usd, who, when)
        elif isinstance(event, GovernanceRules.RateLimitSet):
            rate_key = (event.actors, event.models)
            if event.calls_per_minute is None:
                self.rate_limits.pop(rate_key, None)
            else:
                self.rate_limits[rate_key] = RateLimit(*rate_key, event.calls_per_minute, who, when)

    @classmethod
    def fold(cls, events: Iterable[Any], as_of: datetime | None = None) -> Rulebook:
        """The rulebook after ``events`` (only those at or before ``as_of``, if given)."""
        book = cls()
        for event in events:
            if as_of is not None and event.timestamp > as_of:
                break
            book.apply(event)
        return book

    # -- decisions -----------------------------------------------------------------

    @property
    def empty(self) -> bool:
        """True when no rule of any kind is in force (enforcement has nothing to do)."""
        return not (self.policies or self.budgets or self.rate_limits)

    def roles_of(self, actor: str) -> frozenset[str]:
        """The roles the actor holds."""
        return frozenset(self.roles.get(actor, ()))

    def decide(self, actor: str, model: str) -> PolicyDecision:
        """May ``actor`` use ``model``? Deny wins over allow; no allow rule means open."""
        roles = self.roles_of(actor)
        matching = [r for r in self.policies.values() if r.covers(actor, roles, model)]
        for rule in matching:
            if rule.effect == "deny":
                reason = (
                    f"Policy {rule.rule_id} denies {_principal(rule)} the use of "
                    f"{rule.models!r}, which covers {actor!r} using {model!r}."
                )
                return PolicyDecision(False, rule, reason)
        allows = [r for r in self.policies.values() if r.effect == "allow"]
        if not allows:
            return PolicyDecision(True, None, "No allow rule is in force: every model is open.")
        for rule in matching:
            return PolicyDecision(True, rule, f"Policy {rule.rule_id} allows it.")
        reason = (
            f"No policy allows {actor!r} to use {model!r}; "
            "ask for an allow rule (dspy-ledger policy allow)."
        )
        return PolicyDecision(False, None, reason)

    def budgets_for(self, actor: str, program: str | None) -> list[Budget]:
        """The budgets a call by ``actor`` inside ``program`` counts against."""
        return [
            b
            for b in self.budgets.values()
            if (b.scope_kind == "actor" and b.scope == actor)
            or (b.scope_kind == "program" and program is not None and b.scope == program)
        ]

    def rate_limits_for(self, actor: str, model: str) -> list[RateLimit]:
        """The rate limits that apply to ``actor`` calling ``model``."""
        return [
            r
            for r in self.rate_limits.values()
            if fnmatchcase(actor, r.actors) and fnmatchcase(model, r.models)
        ]

    def covering(
        self, *, actor: str | None = None, model: str | None = None
    ) -> tuple[list[PolicyRule], list[Budget], list[RateLimit]]:
        """The policies, budgets and rate limits that cover ``actor`` and/or ``model``.

        Either left out means "any": with neither, every rule in force.
        """
        policies = list(self.policies.values())
        budgets = list(self.budgets.values())
        limits = list(self.rate_limits.values())
        if model is not None:
            policies = [p for p in policies if fnmatchcase(model, p.models)]
            limits = [r for r in limits if fnmatchcase(model, r.models)]
        if actor is not None:
            roles = self.roles_of(actor)
            policies = [p for p in policies if p.names(actor, roles)]
            budgets = self.budgets_for(actor, None)
            limits = [r for r in limits if fnmatchcase(actor, r.actors)]
        return policies, budgets, limits


def _principal(rule: PolicyRule) -> str:
    return (
        f"actors {rule.principal!r}"
        if rule.principal_kind == "actor"
        else f"role {rule.principal!r}"
    )


def window_start(period: str, at: datetime) -> datetime:
    """The start (UTC) of the ``minute``, ``day`` or ``month`` window holding ``at``."""
    moment = at.astimezone(UTC)
    if period == "minute":
        return moment.replace(second=0, microsecond=0)
    if period == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    msg = f"Unknown window period {period!r}."
    raise ValueError(msg)


def window_key(period: str, at: datetime) -> str:
    """The window start as fixed-width UTC text (the counters' key)."""
    return window_start(period, at).strftime("%Y-%m-%dT%H:%M:%SZ")
