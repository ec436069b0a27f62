"""``python -m dspy_ledger.cli`` runs the command line."""

from dspy_ledger.cli import main

main()
