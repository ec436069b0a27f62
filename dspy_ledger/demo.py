"""The demo: a small DSPy application recorded end to end.

It starts the built-in *simulated* model server on loopback (see
:mod:`dspy_ledger.simulated_model`; no real model, no network), drives it through a
real ``dspy.LM("openai/sim-qa-small", ...)``, and records: an evaluation, a
BootstrapFewShot compile, a second evaluation, and production predictions by two
actors, a few of which fail. The summary is read back from the ledger's events.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel

from dspy_ledger.ledger import Ledger

#: Questions the demo's production traffic adds to the task; the server fails them.
FAILING_QUESTION = "What is the capital of Atlantis? [[fail]]"
DEMO_API_KEY = "sk-demo-simulated-0000-secret"


class DemoSummary(BaseModel):
    """What the demo recorded, as read back from the ledger."""

    ledger_url: str
    events: int
    predictions: int
    failed_predictions: int
    lm_calls: int
    total_cost_usd: float
    accuracy_before: float | None
    accuracy_after: float | None
    optimization_runs: int
    program_versions: int
    model: str


def exact_match(example: Any, prediction: Any, trace: Any = None) -> bool:
    """The demo's metric: the answer matches, ignoring case and surrounding space."""
    expected = str(example.answer).strip().lower()
    got = str(getattr(prediction, "answer", "")).strip().lower().rstrip(".")
    return expected == got


def build_program() -> Any:
    """A fresh, uncompiled instance of the demo's program (``dspy-ledger replay --program``)."""
    import dspy

    return dspy.ChainOfThought("question -> answer")


@contextlib.contextmanager
def _language_model(model: str | None) -> Iterator[tuple[Any, str]]:
    import dspy

    from dspy_ledger.simulated_model import SimulatedModelServer, register_simulated_prices

    if model:
        yield dspy.LM(model, num_retries=1), model
        return
    register_simulated_prices(include_litellm=False)
    with SimulatedModelServer() as server:
        lm = dspy.LM(
            "openai/sim-qa-small",
            api_base=server.api_base,
            api_key=DEMO_API_KEY,
            cache=False,
            num_retries=0,
        )
        yield lm, "openai/sim-qa-small (simulated, on loopback)"


def run_demo(
    ledger: Ledger,
    *,
    model: str | None = None,
    production_predictions: int = 52,
    progress: Callable[[str, int], None] | None = None,
) -> DemoSummary:
    """Run the demo against ``ledger`` and return the summary read from its events.

    ``progress(step, advance)`` is called as work is done (for a progress bar).
    """
    import dspy

    from dspy_ledger.simulated_model import demo_examples

    def tick(step: str, advance: int = 1) -> None:
        if progress is not None:
            progress(step, advance)

    rows = demo_examples()
    examples = [dspy.Example(**row).with_inputs("question") for row in rows]
    trainset, devset = examples[:12], examples[12:32]
    first_position = ledger.app.last_position() + 1

    with _language_model(model) as (lm, model_label), dspy.context(lm=lm):
        ledger.instrument()
        program = build_program()
        evaluate = dspy.Evaluate(
            devset=devset, metric=exact_match, num_threads=2, display_progress=False
        )
        with ledger.acting_as("ml-engineer"):
            evaluate(program)
            tick("evaluated the baseline", len(devset))
            optimizer = dspy.BootstrapFewShot(
                metric=exact_match, max_bootstrapped_demos=4, max_labeled_demos=4
            )
            compiled = optimizer.compile(program, trainset=trainset)
            tick("compiled with BootstrapFewShot", len(trainset))
            evaluate(compiled)
            tick("evaluated the compiled program", len(devset))
        for index in range(production_predictions):
            actor = "alice" if index % 2 == 0 else "bob"
            question = FAILING_QUESTION if index % 17 == 5 else rows[index % len(rows)]["question"]
            with ledger.acting_as(actor), contextlib.suppress(Exception):
                compiled(question=question)
            tick("production predictions", 1)
        ledger.flush()
    return summarize(ledger, first_position, model_label)


def summarize(ledger: Ledger, first_position: int, model_label: str) -> DemoSummary:
    """Read the demo's figures back from the events it recorded."""
    predictions = failed = lm_calls = runs = versions = 0
    cost = 0.0
    scores: list[float] = []
    events = 0
    for event in ledger.events(start=first_position):
        events += 1
        kind = event.type
        if kind == "PredictionStarted":
            predictions += 1
        elif kind == "PredictionFailed":
            failed += 1
        elif kind == "ModelExecuted":
            lm_calls += 1
            cost += float(event.data.get("cost_usd") or 0.0)
        elif kind == "EvaluationCompleted":
            scores.append(float(event.data["score"]))
        elif kind == "OptimizationStarted":
            runs += 1
        elif kind == "ProgramVersionRegistered":
            versions += 1
    return DemoSummary(
        ledger_url=ledger.url,
        events=events,
        predictions=predictions,
        failed_predictions=failed,
        lm_calls=lm_calls,
        total_cost_usd=round(cost, 8),
        accuracy_before=scores[0] if scores else None,
        accuracy_after=scores[-1] if len(scores) > 1 else None,
        optimization_runs=runs,
        program_versions=versions,
        model=model_label,
    )
