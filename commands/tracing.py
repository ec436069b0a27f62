"""The OpenTelemetry trace and span a recorded call ran under, if any."""

from __future__ import annotations

from opentelemetry import trace


def current_trace_ids() -> tuple[str | None, str | None]:
    """Return (trace id, span id) in hex of the active span, or (None, None)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
