"""A separate process spending against one budget: ``python governance_worker.py URL API_BASE``.

Calls the simulated model as actor ``shared`` until the ledger refuses with
BudgetExceeded, then prints one JSON line: calls that went through and their cost.
Used by the multi-process budget test and by bench/governance_overspend.py.
"""

from __future__ import annotations

import json
import sys
import time

import dspy

import dspy_ledger
from dspy_ledger.simulated_model import register_simulated_prices


def main(url: str, api_base: str, start_at: float) -> None:
    """Spend until refused, starting at ``start_at`` (a time.time()) with the others."""
    register_simulated_prices(include_litellm=False)
    ledger = dspy_ledger.open(url, actor="shared", enforce=True)
    ledger.instrument()
    lm = dspy.LM(
        "openai/sim-qa-small", api_base=api_base, api_key="sk-test", cache=False, num_retries=0
    )
    calls, cost = 0, 0.0
    time.sleep(max(0.0, start_at - time.time()))
    try:
        while True:
            lm("What is the capital of France?")
            calls += 1
            cost += float(lm.history[-1]["cost"] or 0.0)
    except dspy_ledger.BudgetExceeded:
        pass
    ledger.close()
    print(json.dumps({"calls": calls, "cost_usd": cost}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
