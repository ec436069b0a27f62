"""What OpenTelemetry costs a recorded prediction: ``python -m bench.otel [--quick]``.

Side by side, interleaved round by round: bare DSPy, recorded with no OpenTelemetry
set up (the default: one check per hook), and recorded with spans going through a
``BatchSpanProcessor`` to an in-memory exporter. A last row times the telemetry hooks
of one prediction alone, with no provider, against the recorded prediction.

The workload is a ``ChainOfThought`` answered by ``DummyLM`` (no network), recorded
with ``durability="async"`` into a temporary SQLite file; each timing includes the
flush, so the writer's work is counted too.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.common import Row, configure_dspy, interleaved, make_program, median, predict_many, row

SECTION = "opentelemetry"


def _row(
    name: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    target: str | None = None,
) -> Row:
    return row(SECTION, name, value, unit, baseline=baseline, target=target)


def _per_prediction(program: Any, count: int, after: Callable[[], None]) -> float:
    seconds = predict_many(program, count)
    started = time.perf_counter()
    after()
    return (seconds + time.perf_counter() - started) / count * 1e6


def _hooks_without_provider(count: int) -> float:
    """Microseconds for the telemetry hooks one ChainOfThought prediction calls."""
    from commands.telemetry import Telemetry, TelemetrySettings

    telemetry = Telemetry(TelemetrySettings())  # the global providers: none is set
    started = time.perf_counter()
    for i in range(count):
        root, inner, call = f"p{i}", f"m{i}", f"l{i}"
        telemetry.prediction_started(root, None, None, {})  # type: ignore[arg-type]
        telemetry.call_started(inner, root, "module", "Predict")
        telemetry.lm_started(call, inner, None, {}, None)
        telemetry.lm_ended(call, "dummy", "ChainOfThought", None, None)
        telemetry.call_ended(inner, None)
        telemetry.prediction_ended(root, "ChainOfThought", None, None)
    return (time.perf_counter() - started) / count * 1e6


def run(quick: bool) -> list[Row]:
    """Measure and return the rows (see the module docstring)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import dspy_ledger
    from dspy_ledger.telemetry import TelemetrySettings

    count, rounds = (100, 5) if quick else (400, 9)
    import dspy

    configure_dspy()
    dspy.configure(callbacks=[])  # no callback left by an earlier section in this process
    program = make_program()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    with tempfile.TemporaryDirectory(prefix="dspy-ledger-bench-otel-") as folder:
        plain = dspy_ledger.open(
            f"sqlite:///{folder}/plain.db", durability="async", otel=TelemetrySettings()
        )
        traced = dspy_ledger.open(
            f"sqlite:///{folder}/traced.db",
            durability="async",
            otel=TelemetrySettings(tracer_provider=provider),
        )

        def recorded(ledger: dspy_ledger.Ledger, flush: Callable[[], None]) -> float:
            with ledger.instrument():
                return _per_prediction(program, count, flush)

        def spans_flushed() -> None:
            traced.flush()
            processor.force_flush()
            exporter.clear()

        variants: dict[str, Callable[[], float]] = {
            "bare": lambda: _per_prediction(program, count, lambda: None),
            "plain": lambda: recorded(plain, plain.flush),
            "traced": lambda: recorded(traced, spans_flushed),
        }
        _per_prediction(program, 20, lambda: None)  # warm DSPy's caches up
        times = interleaved(variants, rounds)
        hooks = median([_hooks_without_provider(count * 10) for _ in range(rounds)])
        plain.close()
        traced.close()
    provider.shutdown()
    bare, no_otel, spans = (median(times[n]) for n in ("bare", "plain", "traced"))
    unit = "us/prediction"
    return [
        _row("bare DSPy ChainOfThought (DummyLM)", bare, unit),
        _row("recorded, no OpenTelemetry set up", no_otel, unit, baseline=bare),
        _row(
            "recorded, spans to an in-memory exporter",
            spans,
            unit,
            baseline=no_otel,
            target="<= 1.5",
        ),
        _row(
            "telemetry hooks with no provider (of a recorded prediction)",
            hooks,
            unit,
            baseline=no_otel,
            target="<= 0.01",
        ),
    ]


if __name__ == "__main__":
    for result in run(quick="--quick" in sys.argv):
        ratio = f"  x{result['ratio']:.3f}" if result["ratio"] is not None else ""
        target = f"  (target {result['target']})" if result["target"] else ""
        print(f"{result['name']:<62} {result['value']:>10.1f} {result['unit']}{ratio}{target}")
