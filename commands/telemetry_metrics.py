"""Recording metrics through the OpenTelemetry metrics API.

Counters of predictions, LM calls, tokens and cost by model and program; histograms of
recording latency and writer queue depth; an observable counter of recording failures.
With no meter provider configured every call returns after one check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    MeterProvider,
    NoOpMeterProvider,
    Observation,
)

from commands.tracing import FromProvider

try:  # the API's placeholder before an application sets a provider
    from opentelemetry.metrics._internal import _ProxyMeterProvider as _Proxy
except ImportError:  # pragma: no cover - a future API may move it
    _Proxy = NoOpMeterProvider  # type: ignore[misc,assignment]

METER_NAME = "dspy_ledger"


class _Instruments:
    def __init__(self, meter: Meter) -> None:
        self.predictions = meter.create_counter(
            "dspy_ledger.predictions", unit="{prediction}", description="Predictions recorded"
        )
        self.lm_calls = meter.create_counter(
            "dspy_ledger.lm.calls", unit="{call}", description="LM calls recorded"
        )
        self.tokens = meter.create_counter(
            "dspy_ledger.lm.tokens", unit="{token}", description="Tokens used by LM calls"
        )
        self.cost = meter.create_counter(
            "dspy_ledger.lm.cost", unit="USD", description="Cost of LM calls (cache hits: 0)"
        )
        self.latency = meter.create_histogram(
            "dspy_ledger.recording.latency",
            unit="ms",
            description="Time the program waited to hand a record to the writer",
        )
        self.queue_depth = meter.create_histogram(
            "dspy_ledger.recording.queue_depth",
            unit="{record}",
            description="Records waiting for the writer when one more was handed over",
        )


class RecordingMetrics:
    """The ledger's instruments on one meter provider (``None``: the global one)."""

    def __init__(self, meter_provider: MeterProvider | None, enabled: bool = True) -> None:
        self._enabled = enabled
        self._failure_sources: list[Callable[[], int]] = []
        self._instruments = FromProvider(
            meter_provider, metrics.get_meter_provider, (_Proxy, NoOpMeterProvider), self._create
        )

    def enabled(self) -> bool:
        """True when a real meter provider would receive the measurements."""
        return self._get() is not None

    def _get(self) -> _Instruments | None:
        return self._instruments.get() if self._enabled else None

    def _create(self, provider: MeterProvider) -> _Instruments:
        meter = provider.get_meter(METER_NAME)
        instruments = _Instruments(meter)
        meter.create_observable_counter(
            "dspy_ledger.recording.failures",
            callbacks=[self._observe_failures],
            unit="{failure}",
            description="Recording failures (the program carried on)",
        )
        return instruments

    def observe_failures(self, source: Callable[[], int]) -> None:
        """Report ``source()`` (a running total) as the recording failures counter."""
        self._failure_sources.append(source)
        self._get()

    def _observe_failures(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(sum(source() for source in self._failure_sources))]

    def prediction(self, program: str, ok: bool) -> None:
        """Count one finished prediction."""
        instruments = self._get()
        if instruments is not None:
            status = "ok" if ok else "error"
            attributes = {"dspy_ledger.program": program, "dspy_ledger.status": status}
            instruments.predictions.add(1, attributes)

    def lm_call(self, model: str, program: str, response: dict[str, Any]) -> None:
        """Count one LM call, its tokens and its cost."""
        instruments = self._get()
        if instruments is None:
            return
        attributes = {"gen_ai.request.model": model, "dspy_ledger.program": program}
        instruments.lm_calls.add(1, attributes)
        for key, token_type in (
            ("gen_ai.usage.input_tokens", "input"),
            ("gen_ai.usage.output_tokens", "output"),
        ):
            if key in response:
                typed = {**attributes, "gen_ai.token.type": token_type}
                instruments.tokens.add(response[key], typed)
        if "dspy_ledger.cost_usd" in response:
            instruments.cost.add(response["dspy_ledger.cost_usd"], attributes)

    def recorded(self, latency_ms: float, queue_depth: int) -> None:
        """Record how long handing one record to the writer took, and the queue behind it."""
        instruments = self._get()
        if instruments is not None:
            instruments.latency.record(latency_ms)
            instruments.queue_depth.record(queue_depth)
