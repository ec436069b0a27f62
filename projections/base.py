"""What every view shares: its tables next to a library tracking recorder.

A view is a :class:`ViewRecorder` mixed into the library's ``SQLiteTrackingRecorder``
or ``PostgresTrackingRecorder``. :meth:`ViewRecorder.process` writes the rows for a
batch of events and then the tracking record (``self._insert_tracking``) on the same
cursor, in one transaction: a view is exactly as far along as its tracking says, so
a crash loses nothing and repeats nothing.

Views live in the ledger's own database (same SQLite file, same PostgreSQL schema).
The SQLite tracking table is shared by every tracking recorder in the file and keyed
by application name, so each view tracks the ledger's sequence under its own name,
``DspyLedger/<view>``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from psycopg.sql import SQL

#: Every event type the views know; anything else is skipped and counted.
KNOWN_EVENT_TYPES = frozenset(
    {
        "ProgramVersionRegistered",
        "DatasetRegistered",
        "PredictionStarted",
        "ModelExecuted",
        "PredictionCompleted",
        "PredictionFailed",
        "FeedbackRecorded",
        "OptimizationStarted",
        "OptimizationCompleted",
        "OptimizationFailed",
        "EvaluationStarted",
        "EvaluationCompleted",
        "EvaluationFailed",
        "PriceTableCreated",
        "PriceSet",
        "SubjectForgotten",
    }
)

#: One event handed to a view: (position, event type, attributes or None if undecodable).
ViewItem = tuple[int, str, dict[str, Any] | None]

#: Reads streams' first events from the ledger: stream ids -> {stream id: view item}.
StreamStartReader = Callable[[Collection[str]], dict[str, ViewItem]]


def utc_text(value: datetime) -> str:
    """A timestamp as fixed-width UTC text, so that text order is time order in SQL."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def id_text(value: Any) -> str | None:
    """A stream id (UUID) as text, keeping None."""
    return None if value is None else str(value)


def context_kind(context: str | None) -> str:
    """``production``, ``evaluation``, ``optimization`` or ``replay`` from a context."""
    return (context or "production").partition(":")[0] or "production"


class Cursor:
    """A database cursor that speaks one SQL text to both backends.

    View SQL is written with ``?`` parameters and ``{table}`` names; this turns them
    into what the backend wants (``%s`` and schema-qualified names for PostgreSQL).
    """

    def __init__(self, raw: Any, view: ViewRecorder) -> None:
        self.raw = raw
        self.view = view

    def execute(self, text: str, params: Sequence[Any] = ()) -> None:
        """Run one statement."""
        self.raw.execute(self.view.sql(text), tuple(params))

    def executemany(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for many rows (nothing if there are none)."""
        if rows:
            self.raw.executemany(self.view.sql(text), rows)

    def rows(self, text: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a query and return its rows as dicts."""
        self.execute(text, params)
        return [dict(row) for row in self.raw.fetchall()]

    def lookup(self, table: str, key: str, columns: str, keys: Iterable[str]) -> dict[str, Any]:
        """Rows of ``table`` whose ``key`` is one of ``keys``, as {key: row dict}."""
        found: dict[str, Any] = {}
        wanted = list(dict.fromkeys(keys))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ", ".join("?" * len(chunk))
            text = f"SELECT {key}, {columns} FROM {{{table}}} WHERE {key} IN ({marks})"
            for row in self.rows(text, chunk):
                found[str(row[key])] = row
        return found


class ViewRecorder:
    """The backend-independent part of a view: its tables, event handling and queries."""

    #: The view's name (``cost``, ``accuracy``, ...); also names its tracking.
    view_name: ClassVar[str] = ""
    #: Table name -> column definitions (portable SQL: TEXT, BIGINT, DOUBLE PRECISION).
    tables: ClassVar[dict[str, str]] = {}
    application_name: ClassVar[str] = "DspyLedger"
    #: Index name -> (table, columns).
    indexes: ClassVar[dict[str, tuple[str, str]]] = {}
    #: Tables earlier versions of the view kept and this one does not: dropped on opening.
    retired_tables: ClassVar[tuple[str, ...]] = ()
    #: Reads streams' first events from the ledger's store, for a view that needs what
    #: a stream said in an earlier batch (set by the projection that runs the view).
    stream_starts: StreamStartReader | None = None

    @property
    def tracking_name(self) -> str:
        """The name this view's tracking record is kept under."""
        return f"{self.application_name}/{self.view_name}"

    @abstractmethod
    def sql(self, text: str) -> str:
        """Translate portable view SQL for this backend."""

    @abstractmethod
    def _view_transaction(self, *, commit: bool) -> Any:
        """A transaction on the view's datastore, yielding a raw cursor."""

    @abstractmethod
    def _tracking_table(self) -> str:
        """The qualified name of the library's tracking table."""

    if TYPE_CHECKING:
        # Provided by the library's tracking recorder this class is mixed into; not
        # declared at run time, where a stub here would shadow it in the MRO.
        def _insert_tracking(self, c: Any, tracking: Tracking) -> None: ...

        def max_tracking_id(self, application_name: str) -> int | None: ...

        def create_table(self) -> None: ...

    #: Event type -> the fields (dotted paths into the stored state) the view reads.
    #: Only these event types reach :meth:`write` (an empty tuple: the type, no fields).
    fields: ClassVar[dict[str, tuple[str, ...]]] = {}

    @abstractmethod
    def handle(self, cursor: Cursor, position: int, event_type: str, e: dict[str, Any]) -> None:
        """Write the rows one known event implies (ignore events the view has no use for)."""

    def write(self, cursor: Cursor, items: Sequence[ViewItem]) -> None:
        """Write the rows a batch of known events implies, in order.

        Views override this to write many rows per statement; the result must be
        what :meth:`handle` gives event by event.
        """
        for position, event_type, attributes in items:
            assert attributes is not None
            self.handle(cursor, position, event_type, attributes)

    def ddl(self) -> list[str]:
        """The CREATE statements of the view's tables (the skip counter too) and indexes."""
        tables = {
            **self.tables,
            f"{self.view_name}_skipped": "(event_type TEXT PRIMARY KEY, events BIGINT NOT NULL)",
        }
        statements = [f"DROP TABLE IF EXISTS {{{n}}}" for n in self.retired_tables]
        statements += [f"CREATE TABLE IF NOT EXISTS {{{n}}} {cols}" for n, cols in tables.items()]
        return statements + self.index_ddl()

    def table_names(self) -> list[str]:
        """Every table name view SQL may write as ``{name}`` (retired ones included)."""
        return [*self.tables, f"{self.view_name}_skipped", *self.retired_tables]

    def index_ddl(self) -> list[str]:
        """The CREATE INDEX statements of the view's secondary indexes."""
        return [
            f"CREATE INDEX IF NOT EXISTS {name} ON {{{table}}} ({columns})"
            for name, (table, columns) in self.indexes.items()
        ]

    @abstractmethod
    def _index_name(self, name: str) -> str:
        """The qualified name of one of the view's indexes."""

    @contextmanager
    def cursor(self, *, commit: bool = False) -> Iterator[Cursor]:
        """A portable cursor inside one transaction (committed only if ``commit``)."""
        with self._view_transaction(commit=commit) as raw:
            yield Cursor(raw, self)

    def read_before_writing(self, items: Sequence[ViewItem]) -> None:
        """Read what writing ``items`` needs from the ledger beyond the batch (nothing here).

        :meth:`process` calls this before the batch's transaction opens: the ledger's
        store may be another connection to the view's own database, which an open write
        transaction would block (an in-memory SQLite database admits one writer or any
        number of readers).
        """

    def process(self, items: Sequence[ViewItem], tracking: Tracking) -> int:
        """Write a batch of events and its tracking record in one transaction.

        Returns how many events were skipped as unknown.
        """
        skipped: dict[str, int] = {}
        known: list[ViewItem] = []
        reads = self.fields
        for item in items:
            if item[2] is None or item[1] not in KNOWN_EVENT_TYPES:
                skipped[item[1]] = skipped.get(item[1], 0) + 1
            elif item[1] in reads:  # known, but of no use to this view: nothing to write
                known.append(item)
        self.read_before_writing(known)
        with self.cursor(commit=True) as c:
            self.write(c, known)
            for event_type, count in skipped.items():
                c.execute(
                    f"INSERT INTO {{{self.view_name}_skipped}} VALUES (?, ?) "
                    "ON CONFLICT (event_type) DO UPDATE "
                    f"SET events = {{{self.view_name}_skipped}}.events + excluded.events",
                    (event_type, count),
                )
            self._insert_tracking(c.raw, tracking)
        return sum(skipped.values())

    def position(self) -> int:
        """The position of the last event this view has processed (0 if none)."""
        return self.max_tracking_id(self.tracking_name) or 0

    def reset(self) -> None:
        """Empty the view and its tracking, in one transaction, ready for a rebuild.

        The secondary indexes go too: filling the tables and then building each index
        in one sorted pass costs less than keeping them up to date row by row.
        :meth:`build_indexes` puts them back (so does opening the view, should the
        rebuild stop half way).
        """
        with self.cursor(commit=True) as c:
            for name in self.indexes:
                c.raw.execute(f"DROP INDEX IF EXISTS {self._index_name(name)}")
            for name in [*self.tables, f"{self.view_name}_skipped"]:
                c.execute(f"DELETE FROM {{{name}}}")
            # The library's tracking only moves forward; a rebuild must start it over.
            c.raw.execute(
                self.sql(f"DELETE FROM {self._tracking_table()} WHERE application_name = ?"),
                (self.tracking_name,),
            )

    def build_indexes(self) -> None:
        """Create the secondary indexes :meth:`reset` dropped (nothing if they exist)."""
        with self.cursor(commit=True) as c:
            for statement in self.index_ddl():
                c.execute(statement)

    def skipped(self) -> dict[str, int]:
        """Unknown event types this view has skipped, with counts."""
        with self.cursor() as c:
            rows = c.rows(f"SELECT event_type, events FROM {{{self.view_name}_skipped}}")
        return {str(r["event_type"]): int(r["events"]) for r in rows}

    def rows(self, text: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read-only query on the view."""
        with self.cursor() as c:
            return c.rows(text, params)


class SQLiteView(ViewRecorder, SQLiteTrackingRecorder):
    """A view stored in SQLite."""

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)

    def construct_create_table_statements(self) -> list[str]:
        """The library's tracking table and the view's tables."""
        return [*super().construct_create_table_statements(), *map(self.sql, self.ddl())]

    def sql(self, text: str) -> str:
        """Table names are plain in SQLite; ``?`` parameters are native."""
        return text.format(**{n: n for n in self.table_names()}, without_rowid="WITHOUT ROWID")

    def _view_transaction(self, *, commit: bool) -> Any:
        return self.datastore.transaction(commit=commit)

    def _tracking_table(self) -> str:
        return "tracking"

    def _index_name(self, name: str) -> str:
        return name


class PostgresView(ViewRecorder, PostgresTrackingRecorder):
    """A view stored in PostgreSQL, in the ledger's schema."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        kwargs.setdefault("tracking_table_name", f"{self.view_name}_view_tracking")
        super().__init__(datastore, **kwargs)
        self.sql_create_statements.extend(SQL(self.sql(s)).format() for s in self.ddl())

    def sql(self, text: str) -> str:
        """Qualify table names with the schema; psycopg wants ``%s`` parameters."""
        schema = self.datastore.schema
        qualified = {n: f'"{schema}"."{n}"' for n in self.table_names()}
        return text.format(**qualified, without_rowid="").replace("?", "%s")

    def _view_transaction(self, *, commit: bool) -> Any:
        return self.datastore.transaction(commit=commit)

    def _tracking_table(self) -> str:
        return f'"{self.datastore.schema}"."{self.tracking_table_name}"'

    def _index_name(self, name: str) -> str:
        return f'"{self.datastore.schema}"."{name}"'


__all__ = [
    "KNOWN_EVENT_TYPES",
    "Cursor",
    "PostgresView",
    "SQLiteView",
    "StreamStartReader",
    "ViewItem",
    "ViewRecorder",
    "context_kind",
    "id_text",
    "utc_text",
]


def bounds(column: str, low: str | None, high: str | None) -> tuple[list[str], list[Any]]:
    """Conditions (and parameters) for ``low <= column < high``, skipping ``None`` ends."""
    clauses: list[str] = []
    params: list[Any] = []
    if low is not None:
        clauses.append(f"{column} >= ?")
        params.append(low)
    if high is not None:
        clauses.append(f"{column} < ?")
        params.append(high)
    return clauses, params


def time_window(since: str | None, until: str | None) -> tuple[str, list[Any]]:
    """A WHERE clause (and its parameters) for rows between ``since`` and ``until``."""
    clauses, params = bounds("occurred_at", since, until)
    return ("WHERE " + " AND ".join(clauses) if clauses else "", params)
