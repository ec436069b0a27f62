"""OpenTelemetry spans for what the recorder sees, linked both ways with the ledger.

One span per prediction (the root of its module tree), per sub-module, LM and tool
call, and per evaluation, compile and replay run. Spans are parented along the
recorder's own call tree (DSPy's ``ACTIVE_CALL_ID``), not only the thread's current
context: ``Evaluate`` and ``Parallel`` run predictions in worker threads and async
predictions interleave in one thread. A call with no recorded parent joins whatever
span is current, so a prediction made inside a web request joins that request's trace.

Each span carries ``dspy_ledger.stream_id`` (the ledger stream it is recorded in);
each event carries the span's trace and span ids (:class:`commands.drafts.Provenance`).
The ledger *position* is not put on spans: it is known only once the writer commits,
after the span has ended, and the stream id already leads to the record.

With no tracer provider configured (OpenTelemetry's default proxy) every hook returns
after one check: no span, no attribute dictionary, no context switch.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import Token
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Span, Status, StatusCode

from commands import genai_attributes
from commands.drafts import PredictionDraft, Provenance
from commands.telemetry_metrics import RecordingMetrics
from commands.tracing import FromProvider, span_ids

logger = logging.getLogger("dspy_ledger")
P = ParamSpec("P")
R = TypeVar("R")

INSTRUMENTATION_NAME = "dspy_ledger"
KIND = "dspy_ledger.kind"
STREAM_ID = "dspy_ledger.stream_id"
STREAM_TYPE = "dspy_ledger.stream_type"


@dataclass(frozen=True)
class TelemetrySettings:
    """Where spans and metrics go, and whether message contents may go with them.

    ``tracer_provider`` / ``meter_provider`` of ``None`` mean the application's global
    ones (checked on every call, so a provider set after the ledger opened is used).
    ``capture_content`` puts prompts, completions, inputs and outputs on spans; it is
    off by default because they may hold personal data. Secrets never go on spans.
    """

    tracer_provider: trace.TracerProvider | None = None
    meter_provider: metrics.MeterProvider | None = None
    capture_content: bool = False
    enabled: bool = True


@dataclass
class _OpenSpan:
    span: Span
    token: Token[Context] | None


def _never_raises(fallback: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Telemetry must never break the program nor keep a record from the ledger."""

    def wrap(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def safe(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(*args, **kwargs)
            except Exception:
                telemetry = args[0]
                if isinstance(telemetry, Telemetry):
                    telemetry.count_error()
                logger.exception("dspy-ledger could not trace a call; recording carries on.")
                return fallback  # type: ignore[no-any-return]

        return safe

    return wrap


class Telemetry:
    """Opens and closes the recorder's spans, keyed by DSPy call id.

    Every hook swallows (logs and counts in ``errors``) its own failures.
    """

    def __init__(self, settings: TelemetrySettings | None = None) -> None:
        self.settings = settings or TelemetrySettings()
        self.metrics = RecordingMetrics(self.settings.meter_provider, self.settings.enabled)
        self._open: dict[str, _OpenSpan] = {}
        self._tracer = FromProvider(
            self.settings.tracer_provider,
            trace.get_tracer_provider,
            (ProxyTracerProvider, NoOpTracerProvider),
            lambda provider: provider.get_tracer(INSTRUMENTATION_NAME),
        )
        self._lock = threading.Lock()
        self.errors = 0

    def count_error(self) -> None:
        """Count one failure of the telemetry itself (the program and ledger carry on)."""
        with self._lock:
            self.errors += 1

    # -- the tracer (the no-op fast path) ---------------------------------------------

    def tracer(self) -> trace.Tracer | None:
        """The tracer to use now, or None when no tracer provider is configured."""
        return self._tracer.get() if self.settings.enabled else None

    def active(self) -> bool:
        """False when there is neither a tracer nor a meter to report to: the recorder
        then skips every telemetry hook of a prediction (decided when it starts)."""
        return self.tracer() is not None or self.metrics.enabled()

    # -- hooks the recorder calls --------------------------------------------------------

    @_never_raises(None)
    def prediction_started(
        self, call_id: str, parent_call_id: str | None, prediction: PredictionDraft, inputs: Any
    ) -> None:
        """Open a prediction's root span; its events will carry the span's ids."""
        tracer = self.tracer()
        if tracer is None:
            return
        attributes = {
            KIND: "prediction",
            STREAM_ID: str(prediction.prediction_id),
            STREAM_TYPE: "Prediction",
            "dspy_ledger.program": prediction.program_name,
            "dspy_ledger.context": prediction.context,
        }
        if prediction.version is not None:
            attributes["dspy_ledger.program_version_id"] = str(prediction.version.version_id)
        if self.settings.capture_content:
            attributes["dspy_ledger.inputs"] = genai_attributes.as_json(inputs)
        name = f"predict {prediction.program_name}"
        self._start(
            tracer, call_id, parent_call_id, name, attributes, provenance=prediction.provenance
        )

    @_never_raises(None)
    def call_started(self, call_id: str, parent_call_id: str | None, kind: str, name: str) -> None:
        """Open a sub-module (``kind="module"``) or tool (``kind="tool"``) span."""
        tracer = self.tracer()
        if tracer is None:
            return
        attributes: dict[str, Any] = {KIND: kind, "dspy_ledger.call_id": call_id}
        if kind == "tool":
            attributes["gen_ai.operation.name"] = "execute_tool"
            attributes["gen_ai.tool.name"] = name
            span_name = f"execute_tool {name}"
        else:
            span_name = f"module {name}"
        self._start(tracer, call_id, parent_call_id, span_name, attributes, provenance=None)

    @_never_raises(None)
    def lm_started(
        self,
        call_id: str,
        parent_call_id: str | None,
        lm: Any,
        inputs: dict[str, Any],
        prediction: PredictionDraft | None,
    ) -> None:
        """Open an LM call span with the GenAI request attributes.

        ``prediction`` is given when the LM was called outside any module: the call is
        then a prediction of its own, and its span leads to that stream.
        """
        tracer = self.tracer()
        if tracer is None:
            return
        attributes = genai_attributes.request(lm, inputs, self.settings.capture_content)
        attributes[KIND] = "lm"
        attributes["dspy_ledger.call_id"] = call_id
        if prediction is not None:
            attributes[STREAM_ID] = str(prediction.prediction_id)
            attributes[STREAM_TYPE] = "Prediction"
        name = f"{attributes['gen_ai.operation.name']} {attributes['gen_ai.request.model']}"
        self._start(
            tracer,
            call_id,
            parent_call_id,
            name,
            attributes,
            provenance=prediction.provenance if prediction is not None else None,
            client=True,
        )

    @_never_raises((None, None))
    def lm_ended(
        self,
        call_id: str,
        model: str,
        program: str,
        entry: dict[str, Any] | None,
        error: BaseException | None,
        *,
        prediction: bool = False,
    ) -> tuple[str | None, str | None]:
        """Close an LM span with usage and response model; return its (trace, span) ids.

        ``prediction``: the call was a prediction of its own (made outside any module).
        """
        if prediction:
            self.metrics.prediction(program, error is None)
        opened = self._open.get(call_id)
        if opened is None and not self.metrics.enabled():
            return None, None
        response = genai_attributes.response(entry, self.settings.capture_content)
        self.metrics.lm_call(model, program, response)
        if opened is None:
            return None, None
        opened.span.set_attributes(response)
        ids = span_ids(opened.span)
        self.call_ended(call_id, error)
        return ids

    @_never_raises(None)
    def prediction_ended(
        self, call_id: str, program: str, error: BaseException | None, outputs: Any
    ) -> None:
        """Close a prediction's root span and count the prediction."""
        opened = self._open.get(call_id)
        if opened is not None and error is None and self.settings.capture_content:
            opened.span.set_attribute("dspy_ledger.outputs", genai_attributes.as_json(outputs))
        self.call_ended(call_id, error)
        self.metrics.prediction(program, error is None)

    @_never_raises(None)
    def run_started(
        self,
        call_id: str,
        parent_call_id: str | None,
        *,
        kind: str,
        name: str,
        stream_id: object,
        provenance: Provenance,
    ) -> None:
        """Open an evaluation or compile run span (``kind`` is the stream type)."""
        tracer = self.tracer()
        if tracer is None:
            return
        attributes = {KIND: kind.lower(), STREAM_ID: str(stream_id), STREAM_TYPE: kind}
        self._start(tracer, call_id, parent_call_id, name, attributes, provenance=provenance)

    @_never_raises(None)
    def call_ended(self, call_id: str, error: BaseException | None) -> None:
        """Close the span of a call, marking it failed if it raised."""
        opened = self._open.pop(call_id, None)
        if opened is None:
            return
        span = opened.span
        if error is not None:
            if self.settings.capture_content:
                span.record_exception(error)
            else:  # a message (and the traceback's last line) may quote user data
                span.add_event("exception", {"exception.type": type(error).__name__})
            span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
        if opened.token is not None:
            otel_context.detach(opened.token)  # logs a foreign context, never raises
        span.end()

    # -- internals -------------------------------------------------------------------

    def _start(
        self,
        tracer: trace.Tracer,
        call_id: str,
        parent_call_id: str | None,
        name: str,
        attributes: dict[str, Any],
        *,
        provenance: Provenance | None,
        client: bool = False,
    ) -> None:
        parent = self._open.get(parent_call_id) if parent_call_id is not None else None
        parent_context = trace.set_span_in_context(parent.span) if parent is not None else None
        span = tracer.start_span(
            name,
            context=parent_context,
            kind=trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL,
            attributes=attributes,
        )
        # Current for the call's duration, so spans of other instrumentations nest inside.
        token = otel_context.attach(trace.set_span_in_context(span))
        self._open[call_id] = _OpenSpan(span, token)
        if provenance is not None:
            provenance.trace_id, provenance.span_id = span_ids(span)


@contextmanager
def run_span(
    kind: str,
    name: str,
    attributes: dict[str, Any] | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
) -> Iterator[Span]:
    """A span around a whole run (e.g. ``run_span("replay", "replay Program", {...})``).

    The span is current inside the block, so predictions recorded there become its
    children; an exception leaving the block marks it failed. Without a configured
    tracer provider the span is a non-recording one and costs next to nothing.
    ``attributes`` should include ``dspy_ledger.stream_id`` when the run has a stream.
    """
    provider = tracer_provider or trace.get_tracer_provider()
    tracer = provider.get_tracer(INSTRUMENTATION_NAME)
    with tracer.start_as_current_span(
        f"{kind} {name}", attributes={KIND: kind, **(attributes or {})}
    ) as span:
        yield span
