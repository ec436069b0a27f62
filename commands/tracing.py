"""Trace and span ids in the hex form the ledger stores and OTLP backends show."""

from __future__ import annotations

from opentelemetry import trace


def span_ids(span: trace.Span) -> tuple[str | None, str | None]:
    """Return (trace id, span id) of ``span`` in hex, or (None, None) if it is not valid."""
    context = span.get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def current_trace_ids() -> tuple[str | None, str | None]:
    """Return (trace id, span id) in hex of the active span, or (None, None).

    A recorded call made under an application's span (a web request) carries that
    span's ids until the recorder's own span, if tracing is on, replaces them.
    """
    return span_ids(trace.get_current_span())
