"""The ``Ledger`` facade: open a ledger, instrument DSPy, read the record back."""

from __future__ import annotations

import atexit
import getpass
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

from commands import hooks, scope, strict
from commands.handlers import DraftHandler
from commands.payloads import DEFAULT_MAX_STRING_BYTES
from commands.process_writer import ProcessWriter
from commands.recorder import LedgerRecorder
from commands.redaction import built_in_names
from commands.sync_writer import SyncWriter
from commands.writer import AsyncWriter
from commands.writer_protocol import WriterConfig
from dspy_ledger import telemetry
from dspy_ledger.governance import GovernanceMixin
from dspy_ledger.integrity import IntegrityMixin
from dspy_ledger.privacy import MasterKeyInput, PrivacyMixin, Redactors
from dspy_ledger.replay import ReplayMixin
from ledger.application import LedgerApplication
from ledger.domain import Prediction
from ledger.errors import InvalidInputError, RecordingError, StreamNotFoundError
from ledger.reading import RecordedEvent, read_notification, read_stream, split_topic
from ledger.storage import StoreURL, parse_url, resolve_url

logger = logging.getLogger("dspy_ledger")

Durability = Literal["sync", "async"]
#: ``process`` (the default) builds ``async`` recordings' events in a writer process of
#: their own; ``thread`` keeps that work on a thread of the program's process.
WRITER_ENV_VAR = "DSPY_LEDGER_WRITER"


class LedgerStats(BaseModel):
    """Counts of what the ledger holds, and of this process's recording."""

    url: str
    events: int
    last_position: int
    by_event_type: dict[str, int]
    by_stream_type: dict[str, int]
    streams_by_type: dict[str, int]
    recording_errors: int
    pending_writes: int
    # Spans that never reached the OTLP backend (unreachable endpoint, full queue):
    # this process's, plus those of earlier processes on this machine.
    dropped_spans: int = 0
    exported_spans: int = 0


class Instrumentation(AbstractContextManager["Instrumentation"]):
    """The recorder installed into DSPy; leaving the ``with`` block removes it."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ledger.uninstrument()
        self._ledger.flush()


class Ledger(IntegrityMixin, PrivacyMixin, GovernanceMixin, ReplayMixin):
    """An open ledger. Create one with :func:`dspy_ledger.open`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        actor: str | None = None,
        durability: Durability = "sync",
        max_string_bytes: int = DEFAULT_MAX_STRING_BYTES,
        create: bool = True,
        otel: bool | telemetry.TelemetrySettings | None = None,
        master_key: MasterKeyInput | None = None,
        redactors: Redactors | None = None,
        enforce: bool = False,
    ) -> None:
        if durability not in ("sync", "async"):
            msg = f"durability must be 'sync' or 'async', not {durability!r}."
            raise InvalidInputError(msg)
        self.store: StoreURL = parse_url(resolve_url(url))
        self.actor = actor or os.environ.get("DSPY_LEDGER_ACTOR") or _login_name()
        self.durability: Durability = durability
        self.app = LedgerApplication(self.store, create=create)
        self._handler = DraftHandler(self.app, max_string_bytes=max_string_bytes)
        self._setup_privacy(master_key, redactors)
        self._writer: SyncWriter | AsyncWriter | ProcessWriter = self._make_writer(max_string_bytes)
        self._telemetry, self._owned_tracing = telemetry.configure(otel)
        self._recorder = LedgerRecorder(
            self._submit, default_actor=self.actor, telemetry=self._telemetry
        )
        self._telemetry.metrics.observe_failures(lambda: self.recording_errors)
        self._instrumented = False
        self._closed = False
        self._lock = threading.Lock()
        atexit.register(self._close_at_exit)
        if enforce:  # refuse LM calls the governance rules forbid (docs/governance.md)
            self.enforce()
        self.start_auto_checkpoints()

    # -- recording -------------------------------------------------------------------

    def _make_writer(self, max_string_bytes: int) -> SyncWriter | AsyncWriter | ProcessWriter:
        """The writer ``durability`` and ``DSPY_LEDGER_WRITER`` ask for (docs/design.md)."""
        if self.durability == "sync":
            return SyncWriter(self._handler)
        choice = os.environ.get(WRITER_ENV_VAR, "process").strip().lower()
        if choice not in ("process", "thread"):
            msg = f"{WRITER_ENV_VAR} must be 'process' or 'thread', not {choice!r}."
            raise InvalidInputError(msg)
        names = built_in_names(self._handler.redactors)
        # An in-memory store lives in this process only, and a redactor written in the
        # program's own code cannot run elsewhere: both keep the writer in this process.
        if choice == "thread" or self.store.is_memory or names is None:
            return AsyncWriter(self._handler)
        master = self.app.subject_keys.master
        config = WriterConfig(
            url=self.store.url,
            max_string_bytes=max_string_bytes,
            redactors=names,
            master_key=master.secret if master is not None else None,
        )
        try:
            return ProcessWriter(self._handler, config)
        except OSError as error:  # no interpreter to start (an embedded Python, say)
            logger.warning(
                "dspy-ledger could not start its writer process (%s); writing on a thread.",
                error,
            )
            return AsyncWriter(self._handler)

    @property
    def url(self) -> str:
        """The store's URL, with any password masked."""
        return self.store.masked

    def _submit(self, draft: object) -> None:
        started = time.perf_counter()
        try:
            self._writer.submit(draft)
            if self._telemetry.metrics.enabled():
                elapsed_ms = (time.perf_counter() - started) * 1000
                self._telemetry.metrics.recorded(elapsed_ms, self._writer.pending)
        except RecordingError as error:
            # DSPy swallows callback errors: park it for the top-level call to raise.
            strict.parked_error.set(error)
            logger.error("dspy-ledger: %s", error)

    def instrument(self) -> Instrumentation:
        """Record every DSPy call from now on (usable as a context manager)."""
        with self._lock:
            if not self._instrumented:
                # The hooks first: strict's wrapper must sit outside them, so that a
                # parked write error is raised after the recorder has seen the end.
                hooks.attach(self._recorder)
                if self.durability == "sync":
                    strict.install()
                self._instrumented = True
        return Instrumentation(self)

    def uninstrument(self) -> None:
        """Stop recording DSPy calls (already recorded ones are kept)."""
        with self._lock:
            if not self._instrumented:
                return
            hooks.detach(self._recorder)
            self._instrumented = False

    def acting_as(self, actor: str, *, subject: str | None = None) -> AbstractContextManager[None]:
        """Record everything in the block (and its tasks) as done by ``actor``.

        With ``subject=``, the predictions also concern that data subject, exactly as
        inside :meth:`acting_for` (their personal fields are encrypted under its key).
        """
        if subject is None:
            return scope.acting_as(actor)
        return _both(scope.acting_as(actor), self.acting_for(subject))

    def record_feedback(
        self,
        prediction_id: UUID | str,
        *,
        score: float | None = None,
        label: str | None = None,
        by: str | None = None,
        comment: str | None = None,
    ) -> None:
        """Record a judgement of a past prediction (``FeedbackRecorded``)."""
        if score is None and label is None:
            msg = "Feedback needs a score, a label, or both."
            raise InvalidInputError(msg)
        stream_id = parse_stream_id(prediction_id)
        prediction = self.app.get_aggregate(stream_id)
        if not isinstance(prediction, Prediction):
            raise StreamNotFoundError(stream_id)
        actor = by or scope.current_actor() or self.actor
        prediction.record_feedback(score=score, label=label, by=actor, comment=comment, actor=actor)
        self.app.save_aggregates(prediction)

    @property
    def recording_errors(self) -> int:
        """How many recording failures this process has seen (the program carried on)."""
        return (
            self._recorder.recording_errors
            + self._writer.stats.unbuildable
            + self._telemetry.errors
        )

    @property
    def pending_writes(self) -> int:
        """Recorded calls not yet committed (async durability).

        With the writer process (the default), as of its last report: exact right after
        :meth:`flush`, otherwise up to a second behind."""
        return self._writer.pending

    def flush(self, timeout: float | None = None) -> None:
        """Return once everything recorded so far is committed."""
        self._writer.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop recording, commit what is queued, and release the store.

        Raises RecordingError if anything recorded could not be written in time.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)
        self.uninstrument()
        self.stop_enforcing()
        self.close_merkle_log()
        try:
            self._writer.close(timeout)
        finally:
            self.app.close()
            if self._owned_tracing is not None:
                self._owned_tracing.close()
                telemetry.save_delivery(self.url, self._owned_tracing)

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except RecordingError as error:
            logger.critical("dspy-ledger lost writes at exit: %s", error)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------

    def events(self, start: int = 1, stop: int | None = None) -> Iterator[RecordedEvent]:
        """Every event from position ``start`` (to ``stop``), in order, as plain data."""
        for notification in self.app.notifications(start=start, stop=stop):
            yield read_notification(self.app, notification)

    def stream(self, stream_id: UUID | str) -> list[RecordedEvent]:
        """One stream's whole history, oldest first."""
        events = read_stream(self.app, parse_stream_id(stream_id))
        if not events:
            raise StreamNotFoundError(stream_id)
        return events

    def stats(self) -> LedgerStats:
        """Counts by event type and by stream type."""
        by_event: Counter[str] = Counter()
        by_stream: Counter[str] = Counter()
        streams: Counter[str] = Counter()
        total = 0
        last = 0
        for notification in self.app.notifications():
            stream_type, event_type = split_topic(notification.topic)
            by_event[event_type] += 1
            by_stream[stream_type] += 1
            if notification.originator_version == 1:
                streams[stream_type] += 1
            total += 1
            last = notification.id
        return LedgerStats(
            url=self.url,
            events=total,
            last_position=last,
            by_event_type=dict(by_event.most_common()),
            by_stream_type=dict(by_stream.most_common()),
            streams_by_type=dict(streams.most_common()),
            recording_errors=self.recording_errors,
            pending_writes=self.pending_writes,
            **self.span_delivery(),
        )

    def span_delivery(self) -> dict[str, int]:
        """Spans exported to and dropped on the way to the OTLP backend the ledger set up."""
        totals = telemetry.delivery_totals(self.url)
        if self._owned_tracing is not None and not self._closed:
            totals["exported_spans"] += self._owned_tracing.delivery.exported
            totals["dropped_spans"] += self._owned_tracing.delivery.dropped
        return totals


@contextmanager
def _both(
    first: AbstractContextManager[None], second: AbstractContextManager[None]
) -> Iterator[None]:
    with first, second:
        yield


def parse_stream_id(value: UUID | str) -> UUID:
    """Parse a stream id, raising InvalidInputError with a clear sentence if malformed."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value).strip())
    except ValueError:
        msg = f"{value!r} is not a stream id; ids look like 3f2b8c1e-...-... (a UUID)."
        raise InvalidInputError(msg) from None


def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def open_ledger(
    url: str | None = None,
    *,
    actor: str | None = None,
    durability: Durability = "sync",
    **options: Any,
) -> Ledger:
    """Open (creating if needed) the ledger at ``url``; see :func:`dspy_ledger.open`."""
    return Ledger(url, actor=actor, durability=durability, **options)
