"""Trace and span ids in the hex form the ledger stores and OTLP backends show."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from opentelemetry import trace

P = TypeVar("P")
T = TypeVar("T")
RECHECK_SECONDS = 1.0


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


class FromProvider(Generic[P, T]):
    """Something built from an OpenTelemetry provider, or None while there is none.

    With no explicit provider the application's global one is looked up, at most once
    a second: the lookup reads the environment, which would otherwise dominate the
    recorder's no-op fast path. A provider set later is picked up within that second.
    """

    def __init__(
        self,
        explicit: P | None,
        global_provider: Callable[[], P],
        placeholders: tuple[type, ...],
        build: Callable[[P], T],
    ) -> None:
        self._explicit = explicit
        self._global_provider = global_provider
        self._placeholders = placeholders
        self._build = build
        self._built: T | None = None
        self._built_from: object = None
        self._recheck_at = 0.0
        self._lock = threading.Lock()

    def get(self) -> T | None:
        """The built object for the current provider, or None if there is no real one."""
        now = time.monotonic()
        if now < self._recheck_at:
            return self._built
        with self._lock:  # built once per provider (a metrics callback must not double)
            provider = self._explicit or self._global_provider()
            if isinstance(provider, self._placeholders):
                self._built = None
            elif self._built is None or self._built_from is not provider:
                self._built = self._build(provider)
                self._built_from = provider
            self._recheck_at = now + RECHECK_SECONDS
            return self._built
