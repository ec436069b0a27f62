"""Section 1: what recording adds to a DSPy prediction.

Bare DSPy, dspy-ledger (sync and async durability, SQLite and PostgreSQL), and, when
they are installed (``pip install -e ".[bench]"``), DSPy with a no-op callback, the
OpenInference instrumentor with an in-memory OpenTelemetry exporter, and MLflow's
``mlflow.dspy.autolog()``, all measured in turn, round after round, in one process.

Two figures per variant: the *hot path* (the time the program itself sees per
prediction, while any background writer runs alongside) and *until written* (the same
predictions plus the wait until everything they recorded is committed).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from bench.common import (
    Row,
    backends,
    configure_dspy,
    fresh_store,
    make_program,
    median,
    predict_many,
    row,
)

SECTION = "1. Recording overhead per prediction"
TARGETS = {"async/sqlite": "<= 1.15x bare", "sync/sqlite": "<= 1.50x bare"}

#: A variant: ``enable()`` returns (disable, wait_until_written).
Variant = Callable[[], tuple[Callable[[], None], Callable[[], None]]]


def _nothing() -> None:
    """Nothing to undo or wait for."""


def _ledger_variant(stack: ExitStack, backend: str, durability: str) -> Variant:
    import dspy_ledger

    url = stack.enter_context(fresh_store(backend))
    ledger = stack.enter_context(dspy_ledger.open(url, durability=durability))  # type: ignore[arg-type]

    def enable() -> tuple[Callable[[], None], Callable[[], None]]:
        ledger.instrument()
        return ledger.uninstrument, ledger.flush

    return enable


def _noop_callback_variant() -> Variant:
    import dspy
    from dspy.utils.callback import BaseCallback

    def enable() -> tuple[Callable[[], None], Callable[[], None]]:
        dspy.settings.configure(callbacks=[BaseCallback()])
        return lambda: dspy.settings.configure(callbacks=[]), _nothing

    return enable


def _openinference_variant() -> Variant | None:
    try:
        from openinference.instrumentation.dspy import DSPyInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
    except ImportError:
        return None
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = DSPyInstrumentor()

    def enable() -> tuple[Callable[[], None], Callable[[], None]]:
        instrumentor.instrument(tracer_provider=provider)

        def disable() -> None:
            instrumentor.uninstrument()
            exporter.clear()

        return disable, _nothing

    return enable


def _mlflow_variant(stack: ExitStack) -> Variant | None:
    try:
        import mlflow
        import mlflow.dspy
    except ImportError:
        return None
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="dspy-ledger-mlflow-"))
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    mlflow.set_experiment("dspy-ledger-bench")

    def wait() -> None:
        flush = getattr(mlflow, "flush_trace_async_logging", None)
        if callable(flush):
            flush()

    def enable() -> tuple[Callable[[], None], Callable[[], None]]:
        mlflow.dspy.autolog()
        return lambda: mlflow.dspy.autolog(disable=True), wait

    return enable


@contextmanager
def _variants(quick: bool) -> Iterator[dict[str, Variant | None]]:
    with ExitStack() as stack:
        variants: dict[str, Variant | None] = {"bare": None}
        for backend in backends():
            for durability in ("async", "sync"):
                variants[f"{durability}/{backend}"] = _ledger_variant(stack, backend, durability)
        if not quick:
            variants["peer: no-op DSPy callback"] = _noop_callback_variant()
            openinference = _openinference_variant()
            if openinference is not None:
                variants["peer: OpenInference + in-memory OTel"] = openinference
            else:
                print("bench: openinference-instrumentation-dspy not installed; skipped.")
            with contextlib.suppress(Exception):
                mlflow_variant = _mlflow_variant(stack)
                if mlflow_variant is not None:
                    variants["peer: MLflow dspy.autolog (SQLite)"] = mlflow_variant
                else:
                    print("bench: mlflow not installed; skipped.")
        yield variants


def _measure(program: Any, variant: Variant | None, count: int, offset: int) -> tuple[float, float]:
    """(hot path, until written) in microseconds per prediction."""
    if variant is None:
        seconds = predict_many(program, count, offset)
        return seconds / count * 1e6, seconds / count * 1e6
    disable, wait = variant()
    try:
        started = time.perf_counter()
        predict_many(program, count, offset)
        hot = time.perf_counter() - started
        wait()
        written = time.perf_counter() - started
    finally:
        disable()
    return hot / count * 1e6, written / count * 1e6


def run(quick: bool) -> list[Row]:
    """Measure every variant in turn, ``rounds`` times; report medians and ratios."""
    configure_dspy()
    program = make_program()
    count, rounds = (40, 3) if quick else (400, 7)
    with _variants(quick) as variants:
        for variant in variants.values():  # warm every path once, untimed
            _measure(program, variant, 10, 0)
        hot: dict[str, list[float]] = {name: [] for name in variants}
        written: dict[str, list[float]] = {name: [] for name in variants}
        offset = 0
        for _ in range(rounds):
            for name, variant in variants.items():
                offset += count
                h, w = _measure(program, variant, count, offset)
                hot[name].append(h)
                written[name].append(w)
    bare = median(hot["bare"])
    rows = [row(SECTION, "bare DSPy ChainOfThought + DummyLM", bare, "us/prediction")]
    for name in variants:
        if name == "bare":
            continue
        rows.append(
            row(
                SECTION,
                f"{name} (hot path)",
                median(hot[name]),
                "us/prediction",
                baseline=bare,
                target=TARGETS.get(name),
            )
        )
        if median(written[name]) > median(hot[name]) * 1.01:
            rows.append(
                row(
                    SECTION,
                    f"{name} (until written)",
                    median(written[name]),
                    "us/prediction",
                    baseline=bare,
                )
            )
    return rows
