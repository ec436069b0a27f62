"""Sending the ledger's spans to an OpenTelemetry backend (Jaeger, Tempo, Honeycomb, ...).

``dspy_ledger.open(url, otel=...)`` decides where spans go:

- ``None`` (default): the application's global tracer and meter providers. If none is
  set but ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is, an OTLP/HTTP
  exporter is configured as for ``True``. With neither, tracing costs one check per call.
- ``True``: the global provider if the application set one; otherwise the ledger's own
  provider, batching spans to OTLP/HTTP (``OTEL_EXPORTER_OTLP_*`` settings apply;
  default ``http://localhost:4318``). The provider is the ledger's, not installed
  globally, so the application can still set its own later; ``close()`` flushes it.
- ``False``: no spans, no metrics.
- a :class:`TelemetrySettings`: explicit providers and opt-in message contents.

An unreachable endpoint never slows or breaks predictions: spans wait in a bounded queue
(``OTEL_BSP_MAX_QUEUE_SIZE``, default 2048) that a background thread drains; spans that
could not be delivered are counted (``Ledger.stats().dropped_spans``, ``dspy-ledger
stats``). Ledger events never depend on span delivery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider

from commands.telemetry import Telemetry, TelemetrySettings, run_span

__all__ = ["Telemetry", "TelemetrySettings", "configure", "run_span"]

logger = logging.getLogger("dspy_ledger")

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
FLUSH_SECONDS = 5.0
# Where span delivery counts of finished processes are kept, for ``dspy-ledger stats``.
STATE_DIR_ENV = "DSPY_LEDGER_STATE_DIR"


class SpanDelivery(SpanExporter):
    """Wraps an exporter, counting spans delivered and spans that were dropped."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self.lock = threading.Lock()
        self.exported = 0
        self.failed = 0
        self.queue_full = 0
        self.left_at_close = 0
        self._shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export a batch, counting it as delivered or failed."""
        try:
            result = self._exporter.export(spans)
        except Exception:
            logger.exception("dspy-ledger could not export spans.")
            result = SpanExportResult.FAILURE
        with self.lock:
            if result is SpanExportResult.SUCCESS:
                self.exported += len(spans)
            else:
                self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        """Shut the wrapped exporter down once (it stops retrying at once)."""
        with self.lock:
            if self._shut:
                return
            self._shut = True
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here."""
        return self._exporter.force_flush(timeout_millis)

    @property
    def dropped(self) -> int:
        """Spans that will never reach the backend (failed export, full queue, closing)."""
        with self.lock:
            return self.failed + self.queue_full + self.left_at_close


class _CountingBatchProcessor(BatchSpanProcessor):
    """A BatchSpanProcessor that notices when its bounded queue drops a span.

    The SDK counts such drops only in its opt-in internal metrics, so the queue's
    length is looked at before each span joins it.
    """

    def __init__(self, delivery: SpanDelivery) -> None:
        super().__init__(delivery)
        self.delivery = delivery

    def _queue(self) -> Any:
        return getattr(self._batch_processor, "_queue", None)

    def on_end(self, span: ReadableSpan) -> None:
        """Queue a finished span, counting the one a full queue pushes out."""
        queue = self._queue()
        if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
            with self.delivery.lock:
                self.delivery.queue_full += 1
        super().on_end(span)

    def close(self, timeout: float) -> None:
        """Deliver what is queued within ``timeout`` seconds; count the rest as dropped."""
        flusher = threading.Thread(target=self.force_flush, daemon=True, name="otel-flush")
        flusher.start()
        flusher.join(timeout)
        self.delivery.shutdown()  # an unreachable endpoint: stop retrying now
        self.shutdown()  # type: ignore[no-untyped-call]
        queue = self._queue()
        with self.delivery.lock:
            self.delivery.left_at_close += len(queue) if queue is not None else 0


class OwnedTracing:
    """A tracer provider the ledger made for itself, with its delivery counts."""

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        service = os.environ.get("OTEL_SERVICE_NAME") or "dspy-ledger"
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service}), shutdown_on_exit=False
        )
        self.delivery = SpanDelivery(OTLPSpanExporter())
        self.processor = _CountingBatchProcessor(self.delivery)
        self.provider.add_span_processor(self.processor)

    def close(self, timeout: float = FLUSH_SECONDS) -> None:
        """Flush within ``timeout`` seconds, then shut the provider down."""
        self.processor.close(timeout)
        self.provider.shutdown()


def _global_provider_set() -> bool:
    return not isinstance(trace.get_tracer_provider(), (ProxyTracerProvider, NoOpTracerProvider))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def configure(otel: bool | TelemetrySettings | None) -> tuple[Telemetry, OwnedTracing | None]:
    """The recorder's telemetry for ``open(otel=...)``, and the provider it owns, if any."""
    if isinstance(otel, TelemetrySettings):
        return Telemetry(otel), None
    if otel is False:
        return Telemetry(TelemetrySettings(enabled=False)), None
    capture = _env_flag(CAPTURE_CONTENT_ENV)
    wants_otlp = otel is True or any(os.environ.get(name) for name in ENDPOINT_ENVS)
    if not wants_otlp or _global_provider_set():
        return Telemetry(TelemetrySettings(capture_content=capture)), None
    owned = OwnedTracing()
    settings = TelemetrySettings(tracer_provider=owned.provider, capture_content=capture)
    return Telemetry(settings), owned


def _status_path(ledger_url: str) -> Path:
    base = os.environ.get(STATE_DIR_ENV) or Path.home() / ".local" / "state" / "dspy-ledger"
    digest = hashlib.sha256(ledger_url.encode()).hexdigest()[:16]
    return Path(base) / f"spans-{digest}.json"


def delivery_totals(ledger_url: str) -> dict[str, int]:
    """Spans exported and dropped by earlier processes recording to this ledger."""
    try:
        data = json.loads(_status_path(ledger_url).read_text())
    except (OSError, ValueError):
        return {"exported_spans": 0, "dropped_spans": 0}
    return {key: int(data.get(key, 0)) for key in ("exported_spans", "dropped_spans")}


def save_delivery(ledger_url: str, owned: OwnedTracing) -> None:
    """Add this process's span delivery counts to the ledger's totals on this machine."""
    if not owned.delivery.exported and not owned.delivery.dropped:
        return  # nothing was traced (a read command, say)
    path = _status_path(ledger_url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_suffix(".lock")):
            totals = delivery_totals(ledger_url)
            totals["exported_spans"] += owned.delivery.exported
            totals["dropped_spans"] += owned.delivery.dropped
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"url": ledger_url, **totals}))
            temporary.replace(path)
    except OSError as error:
        logger.warning("dspy-ledger could not save span delivery counts: %s", error)


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (two processes closing add up, not lose)."""
    with lock_path.open("a") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: totals are best effort
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
