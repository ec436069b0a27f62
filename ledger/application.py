"""The eventsourcing application that stores the ledger's aggregates."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate, EventSourcingError
from eventsourcing.persistence import (
    IntegrityError,
    Mapper,
    Notification,
    PersistenceError,
    Transcoder,
)

from ledger.errors import LedgerNotFoundError, RecordingError, StoreUnavailableError
from ledger.privacy import PrivacyMapper, SubjectKeys, load_master_key
from ledger.storage import StoreURL, postgres_application_name
from ledger.transcoding import LedgerTranscoder

if TYPE_CHECKING:
    import psycopg

    from ledger.domain import LedgerEvent


class DuplicateStreamError(RecordingError):
    """A stream that already exists was created again (content-addressed races)."""


class LedgerApplication(Application[UUID]):
    """Stores and reads the ledger's aggregates through the eventsourcing library.

    The library does the storing: event tables, optimistic concurrency, pooling (psycopg
    3 for PostgreSQL) and the notification log, whose ids are the ledger's positions.
    """

    name = "DspyLedger"

    def __init__(self, store: StoreURL, *, create: bool = True) -> None:
        self.store = store
        env = store.eventsourcing_env()
        if store.backend == "sqlite" and not store.is_memory:
            assert store.sqlite_path is not None
            path = Path(store.sqlite_path)
            if not create and not path.exists():
                msg = (
                    f"No ledger exists at {store.masked}; record something first "
                    "(e.g. dspy-ledger demo) or point --db / DSPY_LEDGER_URL at your ledger."
                )
                raise LedgerNotFoundError(msg)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                msg = f"Cannot create the folder for the ledger at {store.masked}: {error}."
                raise StoreUnavailableError(msg) from error
        try:
            with setup_lock(store):
                if store.backend == "postgres" and store.schema and create:
                    ensure_postgres_schema(store)
                super().__init__(env)
        except (EventSourcingError, OSError, Exception) as error:
            raise store_error(store, error) from error
        # Subject keys live beside the events; the mapper encrypts personal fields with them.
        self.subject_keys = SubjectKeys(self.factory.datastore, load_master_key())  # type: ignore[attr-defined]
        assert isinstance(self.mapper, PrivacyMapper)
        self.mapper.keys = self.subject_keys

    def construct_transcoder(self) -> Transcoder:
        """The library's JSON transcoding, written with orjson (ledger.transcoding)."""
        transcoder = LedgerTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def construct_mapper(self) -> Mapper[UUID]:
        """The library's mapper, extended to encrypt personal data per data subject."""
        # The factory passes the configured compressor and cipher along with the class.
        mapper = self.factory.mapper(
            transcoder=self.construct_transcoder(), mapper_class=PrivacyMapper
        )
        assert isinstance(mapper, PrivacyMapper)
        return mapper

    def save_aggregates(self, *records: Aggregate | LedgerEvent) -> int | None:
        """Commit the pending events of the given aggregates, and the given events, in
        one transaction.

        Returns the position (notification id) of the last event written.
        """
        # What Application.save does, minus its two runtime Protocol isinstance checks
        # per object (each walks the protocol's attributes: 7% of the writer's CPU).
        # These are the library's own steps of save() in 9.5 (pinned <9.6 for this);
        # tests/test_durability.py and test_group_commit.py cover conflicts and ids.
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for record in records:
            if isinstance(record, Aggregate):
                processing_event.events.extend(record.collect_events())
                processing_event.aggregates[record.id] = record
            else:  # an event saved as it is, like the library's save() does
                processing_event.events.append(record)
        try:
            if self.subject_keys.master is not None:
                # The streams a batch seals under subjects' keys are noted in one commit
                # before it (instead of one commit per new stream as each is sealed).
                self.subject_keys.note_streams(
                    PrivacyMapper.sealed_streams(processing_event.events)
                )
            recordings = self._record(processing_event)
            self._take_snapshots(processing_event)
            self._notify(recordings)
        except IntegrityError as error:
            msg = f"A stream written to {self.store.masked} already exists: {error}."
            raise DuplicateStreamError(msg) from error
        except (PersistenceError, OSError) as error:
            raise store_error(self.store, error) from error
        if not recordings:
            return None
        return max(r.notification.id for r in recordings)

    def stream_exists(self, stream_id: UUID) -> bool:
        """True if a stream with this id has at least one event."""
        try:
            return bool(self.recorder.select_events(stream_id, limit=1))
        except (PersistenceError, OSError) as error:
            raise store_error(self.store, error) from error

    def get_aggregate(self, stream_id: UUID) -> Aggregate | None:
        """Return the aggregate with this id, or None if there is none."""
        try:
            aggregate: Aggregate = self.repository.get(stream_id)
        except AggregateNotFoundError:
            return None
        return aggregate

    def stream_events(self, stream_id: UUID) -> list[Any]:
        """Return every event of one stream, in version order."""
        try:
            return list(self.events.get(stream_id))
        except (PersistenceError, OSError) as error:
            raise store_error(self.store, error) from error

    def last_position(self) -> int:
        """Return the position of the newest event (0 for an empty ledger)."""
        try:
            return self.recorder.max_notification_id() or 0
        except (PersistenceError, OSError) as error:
            raise store_error(self.store, error) from error

    def notifications(
        self, start: int = 1, stop: int | None = None, batch_size: int = 1000
    ) -> Iterator[Notification]:
        """Yield stored events in position order, from ``start`` to ``stop`` inclusive."""
        position = start
        while True:
            try:
                batch: Sequence[Notification] = self.recorder.select_notifications(
                    start=position, limit=batch_size, stop=stop
                )
            except (PersistenceError, OSError) as error:
                raise store_error(self.store, error) from error
            yield from batch
            if len(batch) < batch_size:
                return
            position = batch[-1].id + 1

    def decode(self, notification: Notification) -> Any:
        """Turn a stored event into its domain event object."""
        return self.mapper.to_domain_event(notification)


def postgres_connection(store: StoreURL) -> psycopg.Connection[Any]:
    """A fresh autocommit connection to the URL's PostgreSQL database (for DDL, VACUUM)."""
    import psycopg

    return psycopg.connect(
        host=store.host,
        port=store.port or 5432,
        user=store.user,
        password=store.password,
        dbname=store.dbname,
        connect_timeout=5,
        autocommit=True,
        application_name=postgres_application_name(),
    )


@contextmanager
def postgres_setup_lock(store: StoreURL) -> Iterator[None]:
    """Hold a server-wide advisory lock while this process creates or checks the tables.

    The event store re-runs its ``CREATE ... IF NOT EXISTS`` and ``CREATE OR REPLACE
    FUNCTION`` statements on every open; two processes doing so at the same moment can
    fail with "tuple concurrently updated". Taking turns costs one short connection.
    """
    with postgres_connection(store) as connection:
        key = f"dspy-ledger setup {store.schema or 'public'}"
        connection.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        try:
            yield
        finally:
            connection.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


def setup_lock(store: StoreURL) -> AbstractContextManager[None]:
    """What creating the store's tables takes turns under: :func:`postgres_setup_lock`
    on PostgreSQL; nothing on SQLite, whose own write lock serializes table creation."""
    return postgres_setup_lock(store) if store.backend == "postgres" else nullcontext()


def ensure_postgres_schema(store: StoreURL) -> None:
    """Create the URL's PostgreSQL schema if it does not exist yet."""
    from psycopg import sql

    with postgres_connection(store) as connection:
        connection.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(str(store.schema)))
        )


def error_reason(store: StoreURL, error: BaseException) -> str:
    """A driver or library error's text on one line, shortened, with the URL's password
    masked: to quote in a sentence."""
    reason = " ".join(str(error).split()) or type(error).__name__
    if len(reason) > 300:
        reason = reason[:300] + "..."
    if store.password:
        reason = reason.replace(store.password, "***")
    return reason


def store_error(store: StoreURL, error: BaseException) -> StoreUnavailableError:
    """Translate a driver or library error into one clear sentence naming the store."""
    reason = error_reason(store, error)
    if store.backend == "postgres":
        hint = (
            "check that the server is running and that the URL's user, password "
            "and database are right"
        )
    else:
        hint = "check that the file is a dspy-ledger database and that you may write to it"
    msg = f"Cannot use the ledger at {store.masked} ({reason}); {hint}."
    return StoreUnavailableError(msg)
