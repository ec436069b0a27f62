"""The ``dspy-ledger`` command line.

Every command takes ``--db URL`` (else ``DSPY_LEDGER_URL``, else the embedded default);
every read command takes ``--json``. Errors are one sentence on stderr and a non-zero
exit code (see :mod:`dspy_ledger.cli.errors`), never a traceback.
"""

from __future__ import annotations

import typer

from dspy_ledger.cli.demo_command import demo
from dspy_ledger.cli.errors import run_app
from dspy_ledger.cli.read_commands import export, show, stats

app = typer.Typer(
    name="dspy-ledger",
    help="An event-sourced audit ledger for DSPy programs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(demo)
app.command()(export)
app.command()(show)
app.command()(stats)


from dspy_ledger.cli.view_commands import register as _register_views  # noqa: E402

_register_views(app)

from dspy_ledger.cli.integrity_commands import register as _register_integrity  # noqa: E402

_register_integrity(app)

from dspy_ledger.cli.privacy_commands import register as _register_privacy  # noqa: E402

_register_privacy(app)
from dspy_ledger.cli.governance_commands import register as _register_governance  # noqa: E402

_register_governance(app)
from dspy_ledger.cli.replay_command import replay as _replay  # noqa: E402

app.command()(_replay)


def main() -> None:
    """Entry point of the ``dspy-ledger`` script."""
    run_app(app)
