"""Governance commands: ``policy``, ``budget`` and ``ratelimit`` (allow, deny, set, list)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from dspy_ledger.cli.options import DbOption, JsonOption
from dspy_ledger.cli.output import folding_table, stdout_console
from dspy_ledger.governance import BudgetInfo, GovernanceReport
from dspy_ledger.ledger import Ledger

policy_app = typer.Typer(help="Which actors or roles may use which models.", no_args_is_help=True)
budget_app = typer.Typer(help="USD budgets per day or month.", no_args_is_help=True)
ratelimit_app = typer.Typer(help="Calls per minute per actor and model.", no_args_is_help=True)

ModelsArgument = Annotated[
    str, typer.Argument(help="Models: a name or glob, e.g. 'openai/gpt-4o*' or '*'.")
]
ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Actors: a name or glob, e.g. 'alice' or 'ci-*'.")
]
RoleOption = Annotated[str | None, typer.Option("--role", help="A role (or a glob of roles).")]
AsOfOption = Annotated[
    str | None, typer.Option("--as-of", help="Answer as of this ISO time (default: now).")
]
PeriodOption = Annotated[str, typer.Option("--per", help="The budget's window: day or month.")]


def _rule(effect: str, models: str, actor: str | None, role: str | None, db: str | None) -> None:
    with Ledger(db) as ledger:
        method = ledger.allow if effect == "allow" else ledger.deny
        rule_id = method(models, actor=actor, role=role)
    who = f"actors {actor!r}" if actor is not None else f"role {role!r}"
    typer.echo(f"Policy {rule_id}: {effect} {who} the use of {models!r}.")


@policy_app.command("allow")
def policy_allow(
    models: ModelsArgument, actor: ActorOption = None, role: RoleOption = None, db: DbOption = None
) -> None:
    """Allow actors or a role to use models (a PolicyChanged event)."""
    _rule("allow", models, actor, role, db)


@policy_app.command("deny")
def policy_deny(
    models: ModelsArgument, actor: ActorOption = None, role: RoleOption = None, db: DbOption = None
) -> None:
    """Deny actors or a role the use of models; a deny wins over any allow."""
    _rule("deny", models, actor, role, db)


@policy_app.command("remove")
def policy_remove(
    rule_id: Annotated[str, typer.Argument(help="The rule's id, as policy list shows it.")],
    db: DbOption = None,
) -> None:
    """Withdraw an allow or deny rule."""
    with Ledger(db, create=False) as ledger:
        ledger.remove_policy(rule_id)
    typer.echo(f"Policy {rule_id} removed.")


@policy_app.command("role")
def policy_role(
    actor: Annotated[str, typer.Argument(help="The actor's name.")],
    role: Annotated[str, typer.Argument(help="The role's name.")],
    remove: Annotated[bool, typer.Option("--remove", help="Take the role away.")] = False,
    db: DbOption = None,
) -> None:
    """Give an actor a role (or take it away with --remove)."""
    with Ledger(db) as ledger:
        ledger.assign_role(actor, role, member=not remove)
    typer.echo(f"{actor} {'no longer holds' if remove else 'now holds'} role {role}.")


@policy_app.command("list")
def policy_list(
    as_of: AsOfOption = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only the rules that cover this actor.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Only the rules that cover this model (who could use it)."),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The policies, roles, budgets and rate limits in force (now or --as-of a time).

    With --actor and --model, also whether that actor could use that model, and why.
    """
    with Ledger(db, create=False) as ledger:
        report = ledger.policies(as_of, actor=actor, model=model)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    _print_report(report)


@budget_app.command("set")
def budget_set(
    usd: Annotated[float, typer.Option("--usd", help="The budget in USD (>= 0).")],
    actor: Annotated[str | None, typer.Option("--actor", help="The actor's name.")] = None,
    program: Annotated[
        str | None, typer.Option("--program", help="The program's name (its class).")
    ] = None,
    per: PeriodOption = "day",
    db: DbOption = None,
) -> None:
    """Set the USD budget of an actor or a program per UTC day or month (BudgetSet)."""
    with Ledger(db) as ledger:
        ledger.set_budget(usd, actor=actor, program=program, period=per)
    typer.echo(f"Budget set: ${usd:g} per {per} for {_scope(actor, program)}.")


@budget_app.command("remove")
def budget_remove(
    actor: Annotated[str | None, typer.Option("--actor", help="The actor's name.")] = None,
    program: Annotated[str | None, typer.Option("--program", help="The program's name.")] = None,
    per: PeriodOption = "day",
    db: DbOption = None,
) -> None:
    """Remove a budget (a BudgetSet event with no limit)."""
    with Ledger(db, create=False) as ledger:
        ledger.set_budget(None, actor=actor, program=program, period=per)
    typer.echo(f"Budget per {per} for {_scope(actor, program)} removed.")


@budget_app.command("list")
def budget_list(as_of: AsOfOption = None, db: DbOption = None, as_json: JsonOption = False) -> None:
    """The budgets in force, with what is spent in the current window."""
    with Ledger(db, create=False) as ledger:
        budgets = ledger.policies(as_of).budgets
    if as_json:
        typer.echo("[" + ",".join(b.model_dump_json() for b in budgets) + "]")
        return
    stdout_console().print(_budget_table(budgets))


@ratelimit_app.command("set")
def ratelimit_set(
    per_minute: Annotated[int, typer.Option("--per-minute", help="Calls per minute (>= 1).")],
    actor: Annotated[str, typer.Option("--actor", help="Actors: a name or glob.")] = "*",
    model: Annotated[str, typer.Option("--model", help="Models: a name or glob.")] = "*",
    db: DbOption = None,
) -> None:
    """Limit each matching actor to N calls per minute to each matching model."""
    with Ledger(db) as ledger:
        ledger.set_rate_limit(per_minute, actor=actor, model=model)
    typer.echo(f"Rate limit set: {per_minute} calls/minute for actors {actor!r}, models {model!r}.")


@ratelimit_app.command("remove")
def ratelimit_remove(
    actor: Annotated[str, typer.Option("--actor", help="Actors, as set.")] = "*",
    model: Annotated[str, typer.Option("--model", help="Models, as set.")] = "*",
    db: DbOption = None,
) -> None:
    """Remove a rate limit (a RateLimitSet event with no limit)."""
    with Ledger(db, create=False) as ledger:
        ledger.set_rate_limit(None, actor=actor, model=model)
    typer.echo(f"Rate limit for actors {actor!r}, models {model!r} removed.")


@ratelimit_app.command("list")
def ratelimit_list(
    as_of: AsOfOption = None, db: DbOption = None, as_json: JsonOption = False
) -> None:
    """The rate limits in force."""
    with Ledger(db, create=False) as ledger:
        limits = ledger.policies(as_of).rate_limits
    if as_json:
        typer.echo("[" + ",".join(r.model_dump_json() for r in limits) + "]")
        return
    table = folding_table("actors", "models", "calls/minute", "set by", "set at")
    for r in limits:
        table.add_row(r.actors, r.models, str(r.calls_per_minute), r.set_by, r.set_at)
    stdout_console().print(table)


def _scope(actor: str | None, program: str | None) -> str:
    return f"actor {actor}" if actor is not None else f"program {program}"


def _budget_table(budgets: list[BudgetInfo]) -> Table:
    table = folding_table("scope", "name", "per", "limit $", "spent $", "since", "set by", "set at")
    for b in budgets:
        table.add_row(
            b.scope_kind,
            b.scope,
            b.period,
            f"{b.limit_usd:g}",
            f"{b.spent_usd:.6f}",
            b.window_start,
            b.set_by,
            b.set_at,
        )
    return table


def _print_report(report: GovernanceReport) -> None:
    console = stdout_console()
    console.print(f"Rules in force as of {report.as_of} (version {report.rules_version}):")
    table = folding_table("rule", "effect", "who", "models", "set by", "set at")
    for p in report.policies:
        table.add_row(
            p.rule_id, p.effect, f"{p.principal_kind}:{p.principal}", p.models, p.set_by, p.set_at
        )
    console.print(table)
    if not any(p.effect == "allow" for p in report.policies):
        console.print("No allow rule is in force: every model is open, except what is denied.")
    for actor, roles in report.roles.items():
        console.print(f"{actor} holds: {', '.join(roles)}")
    if report.budgets:
        console.print(_budget_table(report.budgets))
    for r in report.rate_limits:
        console.print(f"rate limit: {r.calls_per_minute}/min for {r.actors!r} on {r.models!r}")
    if report.access is not None:
        a = report.access
        verdict = "MAY" if a.allowed else "may NOT"
        console.print(f"{a.actor} {verdict} use {a.model}: {a.reason}")
        for b in a.budgets:
            console.print(f"  budget: ${b.limit_usd:g} per {b.period} ({b.scope_kind} {b.scope})")
        for r in a.rate_limits:
            console.print(f"  rate limit: {r.calls_per_minute} calls/minute")


def register(app: typer.Typer) -> None:
    """Add the governance command groups to the ``dspy-ledger`` app."""
    app.add_typer(policy_app, name="policy")
    app.add_typer(budget_app, name="budget")
    app.add_typer(ratelimit_app, name="ratelimit")
