"""The write side of dspy-ledger: the DSPy recorder, the writers, and the commands."""
