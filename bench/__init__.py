"""The dspy-ledger benchmark suite: ``python -m bench [--quick] [--out DIR]``.

Every figure is measured side by side with its baseline in the same run and reported as
a ratio, the median of several rounds (see docs/performance.md).
"""
