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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
)
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier


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

    Tracking and process recorders (views, the Merkle log) stay the library's.
    """

    application_recorder_class = ColumnarApplicationRecorder
