"""Program factories the replay tests name by ``module:attr``, as users do."""

from __future__ import annotations

from typing import Any

import dspy

#: Every real call of :func:`lookup_capital` (a recorded replay must make none).
TOOL_CALLS: list[str] = []

CAPITALS = {"France": "Paris", "Japan": "Tokyo"}


def lookup_capital(country: str) -> str:
    """The capital of a country (a tool for the ReAct agent)."""
    TOOL_CALLS.append(country)
    return CAPITALS.get(country, "unknown")


def build_agent() -> dspy.Module:
    """A ReAct agent with one tool."""
    return dspy.ReAct("question -> answer", tools=[lookup_capital], max_iters=3)


#: One agent for the whole process, as an application often keeps it.
SHARED_AGENT = dspy.ReAct("question -> answer", tools=[lookup_capital], max_iters=3)


def shared_agent() -> dspy.Module:
    """A factory that hands out the same agent every time (not a fresh one)."""
    return SHARED_AGENT


def build_reworded() -> dspy.Module:
    """The demo's program with different instructions."""
    signature = dspy.Signature("question -> answer", "Answer with a single word.")
    return dspy.ChainOfThought(signature)


def build_renamed() -> dspy.Module:
    """The demo's program after its input field was renamed."""
    return dspy.ChainOfThought("query -> answer")


def build_not_a_module() -> Any:
    """A factory that returns something other than a DSPy module."""
    return {"program": "not a module"}


def raising_metric(example: Any, prediction: Any, trace: Any = None) -> float:
    """A metric that always raises."""
    msg = "the metric is broken"
    raise RuntimeError(msg)


class AsyncQA(dspy.Module):  # type: ignore[misc]
    """A program that can only be called asynchronously."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    async def aforward(self, question: str) -> dspy.Prediction:
        """Answer through the async path."""
        return await self.answer.acall(question=question)


class ParallelQA(dspy.Module):  # type: ignore[misc]
    """A program that answers several questions in DSPy's own worker threads."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, questions: list[str]) -> dspy.Prediction:
        """Answer every question with ``dspy.Parallel``."""
        parallel = dspy.Parallel(num_threads=3, disable_progress_bar=True)
        results = parallel([(self.answer, {"question": q}) for q in questions])
        return dspy.Prediction(answers=[result.answer for result in results])


class DescribeImage(dspy.Signature):  # type: ignore[misc]
    """Describe the picture."""

    image: dspy.Image = dspy.InputField()
    answer: str = dspy.OutputField()


def build_image_describer() -> dspy.Module:
    """A program whose prompts hold an image (content parts, not plain text)."""
    return dspy.Predict(DescribeImage)
