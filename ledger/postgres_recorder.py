"""The PostgreSQL event store: the library's, with a cheaper way to send a batch.

eventsourcing's :class:`~eventsourcing.postgres.PostgresApplicationRecorder` sends a batch
as one array of composite values (``%s::stored_event_uuid[]``). psycopg dumps composites
field by field in Python, in text format (bytea as hex), and the server parses that text
back: for a batch of 1,500 events of about 800 bytes that took four times the wall-clock
time and ten times the client CPU of the same ``INSERT`` given one binary array per column
(docs/performance.md, "PostgreSQL insertion").

:class:`ColumnarApplicationRecorder` changes only that: its ``INSERT ... SELECT FROM
unnest(ids, versions, topics, states) RETURNING notification_id`` is the library's
statement with four binary arrays in place of one composite array. Everything around it is
the library's own code, unchanged: the pipelined transaction, the ``EXCLUSIVE`` table lock
that makes notification ids visible in commit order across writers, the ``NOTIFY`` for
subscribers, the early sync that turns a ``(originator_id, originator_version)`` conflict
into the library's ``IntegrityError`` with nothing of the batch kept, and the returned ids.
The table, the composite type and the reading queries are the library's too, so a ledger
written this way is read by the plain library recorder and vice versa.

A transaction of a few events (one prediction under ``durability="sync"``) pays mostly for
the pipelined transaction's client-side machinery: six statements composed, converted and
pipelined by psycopg in Python cost 1.4 ms of client CPU per commit here. So the recorder
also keeps one function in the ledger's schema that takes the same steps in the same order
(the ``lock_timeout``, the ``EXCLUSIVE`` lock, the ``NOTIFY``, the same ``INSERT ...
RETURNING``) and calls it in one autocommitted statement: half the client CPU and 0.57x
of the wall time per commit (docs/performance.md, item 22). The function is created once
per schema when the ledger opens (any role that can open a ledger may: the library's own
tables and function need the same rights); where it is missing, or was dropped since, the
recorder takes the pipelined transaction above, which is always correct.
(The library's own ``POSTGRES_ENABLE_DB_FUNCTIONS`` function is not used: it does not take
the table lock, so ids could become visible out of order.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from eventsourcing.persistence import (
    InterfaceError,
    OperationalError,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
)
from eventsourcing.utils import Environment, EnvType, retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier, Literal

from ledger.postgres_pool import LivenessCheckingPool
from ledger.storage import postgres_application_name

logger = logging.getLogger("dspy_ledger")

#: The insert function's version: a function with a changed body gets a new name, so
#: processes running older code keep calling the body they were written for.
INSERT_FUNCTION_VERSION = 1


class _InsertFunctionGoneError(Exception):
    """The insert function was dropped after the recorder found it."""


class ColumnarApplicationRecorder(PostgresApplicationRecorder):
    """The library's application recorder, inserting a batch as one binary array per column."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        # %b: binary parameters, dumped by psycopg's C adapters (no text escaping, no hex).
        self.insert_columns_statement = SQL(
            "INSERT INTO {schema}.{table} AS t ("
            "originator_id, originator_version, topic, state) "
            "SELECT originator_id, originator_version, topic, state "
            "FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[]) "
            "AS e(originator_id, originator_version, topic, state) "
            "RETURNING notification_id"
        ).format(
            schema=Identifier(datastore.schema),
            table=Identifier(events_table_name),
            id_type=Identifier(datastore.originator_id_type),
        )
        function = Identifier(
            datastore.schema, f"{events_table_name}_insert_v{INSERT_FUNCTION_VERSION}"
        )
        id_type = Identifier(datastore.originator_id_type)
        self.insert_function_signature = SQL(
            "{function}({id_type}[], bigint[], text[], bytea[], text)"
        ).format(function=function, id_type=id_type)
        # The same steps as the pipelined transaction, in the same order (see the module
        # docstring); the lock timeout is an argument, so every process keeps its own.
        self.create_insert_function_statement = SQL(
            "CREATE FUNCTION {function}("
            "ids {id_type}[], versions bigint[], topics text[], states bytea[], "
            "lock_timeout text) "
            "RETURNS TABLE (notification_id bigint) LANGUAGE plpgsql AS $body$ "
            "BEGIN "
            "PERFORM set_config('lock_timeout', lock_timeout, true); "
            "LOCK TABLE {table} IN EXCLUSIVE MODE; "
            "NOTIFY {channel}; "
            "RETURN QUERY INSERT INTO {table} AS t ("
            "originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(ids, versions, topics, states) "
            "RETURNING t.notification_id; "
            "END $body$"
        ).format(
            function=function,
            id_type=id_type,
            table=Identifier(datastore.schema, events_table_name),
            channel=Identifier(self.channel_name),
        )
        self.call_insert_function_statement = SQL(
            "SELECT notification_id FROM {function}("
            "%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[], {lock_timeout})"
        ).format(
            function=function,
            id_type=id_type,
            lock_timeout=Literal(f"{datastore.lock_timeout}s"),
        )
        #: Whether the insert function is there to call; None until first asked.
        self.insert_function_ready: bool | None = None

    def create_table(self) -> None:
        """The library's tables, then the insert function if the schema lacks it."""
        super().create_table()
        if self._insert_function_exists():
            self.insert_function_ready = True
            return
        try:
            with self.datastore.transaction(commit=True) as curs:
                curs.execute(self.create_insert_function_statement)
        except PersistenceError as error:
            # Another process created it first (checked below), or it could not be made:
            # then the pipelined transaction remains, and is always correct.
            logger.debug("dspy-ledger did not create its insert function: %s", error)
        self.insert_function_ready = self._insert_function_exists()

    def _insert_function_exists(self) -> bool:
        query = SQL("SELECT to_regprocedure({0}) IS NOT NULL AS present").format(
            Literal(self.insert_function_signature.as_string())
        )
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query)
            row = curs.fetchone()
        return bool(row and row["present"])

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert ``stored_events`` in one transaction and return their notification ids."""
        if self.insert_function_ready is None:
            self.insert_function_ready = self._insert_function_exists()
        if self.insert_function_ready and stored_events:
            try:
                ids: list[int] = self._call_insert_function(stored_events)
            except _InsertFunctionGoneError:
                self.insert_function_ready = False
            else:
                return ids
        pipelined: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
        return pipelined

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _call_insert_function(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        arrays = (
            [event.originator_id for event in stored_events],
            [event.originator_version for event in stored_events],
            [event.topic for event in stored_events],
            [event.state for event in stored_events],
        )
        with self.datastore.get_connection() as conn:
            # One statement is its own transaction: no BEGIN and COMMIT round trips. The
            # library's pool makes every connection autocommit; one that is not (changed
            # by other code) is switched for this statement and given back as it came,
            # because the pool's other users rely on the mode they find.
            switched = not conn.autocommit
            if switched:
                conn.autocommit = True
            try:
                rows = conn.execute(self.call_insert_function_statement, arrays).fetchall()
            except psycopg.errors.UndefinedFunction:
                raise _InsertFunctionGoneError from None  # nothing was written
            finally:
                if switched:
                    with contextlib.suppress(psycopg.Error):  # a broken one is dropped
                        conn.autocommit = False
        return [row["notification_id"] for row in rows]

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **_: Any,
    ) -> None:
        # The same steps as the library's, in the same order, within its transaction;
        # unnest() over several arrays yields their rows in array order, so RETURNING
        # gives the ids in the order of ``stored_events`` as the library's statement does.
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            self.insert_columns_statement,
            (
                [event.originator_id for event in stored_events],
                [event.originator_version for event in stored_events],
                [event.topic for event in stored_events],
                [event.state for event in stored_events],
            ),
            prepare=True,
        )


class LedgerPostgresFactory(PostgresFactory):
    """The library's PostgreSQL factory with :class:`ColumnarApplicationRecorder`.

    Tracking and process recorders (views, the Merkle log) stay the library's. The
    datastore's pool is a :class:`~ledger.postgres_pool.LivenessCheckingPool`, whose
    connections name themselves ``dspy-ledger`` to the server unless ``PGAPPNAME`` is set.
    """

    application_recorder_class = ColumnarApplicationRecorder

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        LivenessCheckingPool.replacing_pool_of(
            self.datastore, application_name=postgres_application_name()
        )
