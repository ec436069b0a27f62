"""Readable lineage: a prediction's ancestry as a tree, an example's uses as a table."""

from __future__ import annotations

import json

from rich.markup import escape
from rich.tree import Tree

from dspy_ledger.cli.output import folding_table, stdout_console
from dspy_ledger.views import ExampleLineage, PredictionLineage, RunLineage, VersionLineage


def _version_label(role: str, version: VersionLineage) -> str:
    name = escape(version.program_name or "?")
    return (
        f"{role} [bold]{version.version_id}[/bold] {name}"
        f"  registered {version.registered_at}"
        + (f"  state {version.state_hash[:12]}" if version.state_hash else "")
    )


def _add_version(parent: Tree, role: str, version: VersionLineage | None) -> None:
    if version is None:
        return
    node = parent.add(_version_label(role, version))
    if version.produced_by is not None:
        _add_run(node, version.produced_by)
    _add_version(node, "parent version", version.parent)


def _add_run(parent: Tree, run: RunLineage) -> None:
    node = parent.add(
        f"produced by run [bold]{run.run_id}[/bold] {escape(run.optimizer)} ({run.status})"
    )
    node.add(f"metric {escape(run.metric or '-')}")
    node.add(f"trainset {run.trainset_digest or '-'}  valset {run.valset_digest or '-'}")
    if run.params:
        text = json.dumps(run.params, sort_keys=True, default=str)
        node.add("params " + escape(text if len(text) <= 160 else text[:157] + "..."))
    _add_version(node, "student version", run.student)
    _add_version(node, "teacher version", run.teacher)


def print_lineage(lineage: PredictionLineage) -> None:
    """Print where a prediction's program came from, as a tree."""
    tree = Tree(
        f"prediction [bold]{lineage.prediction_id}[/bold] ({lineage.status})"
        f"  by {escape(lineage.actor or '-')}  in {escape(lineage.context or 'production')}"
        f"  at {lineage.started_at}"
    )
    if lineage.version is None:
        tree.add("program version not recorded")
    _add_version(tree, "program version", lineage.version)
    stdout_console().print(tree)


def print_uses(lineage: ExampleLineage) -> None:
    """Print the runs that used an example, what they produced and predicted."""
    table = folding_table("run", "optimizer", "dataset", "produced version", "predictions")
    for use in lineage.runs:
        shown = ", ".join(p[:8] for p in use.predictions[:3])
        more = f" (+{len(use.predictions) - 3} more)" if len(use.predictions) > 3 else ""
        table.add_row(
            use.run_id,
            use.optimizer,
            use.dataset_digest[:12],
            use.result_version_id or "-",
            f"{len(use.predictions)}: {shown}{more}" if use.predictions else "0",
        )
    console = stdout_console()
    console.print(f"Example {lineage.example_digest}: used by {len(lineage.runs)} run(s)")
    console.print(table)
