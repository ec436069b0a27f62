"""The first event of a few streams, read from the ledger's store by stream id.

A view that needs, for an event, something its stream said first (the cost view: a
``ModelExecuted`` needs its ``PredictionStarted``'s program and context) finds it in
the same batch almost always. For the few events whose stream began in an earlier
batch, it reads the stream's first event here, through the store's own primary key
on (stream id, version), instead of keeping a copy of every stream's first event in
a table of its own.

The events are decoded through the library mapper and reduced to the view's fields by
:meth:`projections.feed.FieldReader.decode`, exactly as when a batch is read, so a
ledger with a cipher or compression, sealed personal fields and events this code
cannot read (``None``: left out) all come out as the batch reader gives them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from psycopg.sql import SQL, Identifier

from projections.base import ViewItem
from projections.feed import FieldReader

#: Stream ids per query (SQLite allows 32,766 parameters; a batch needs a handful).
_CHUNK = 500


class StreamStarts:
    """Reads streams' first events (version 1) for one view, through its field reader."""

    def __init__(self, reader: FieldReader) -> None:
        self.reader = reader
        recorder: Any = reader.app.recorder
        datastore: Any = reader.app.factory.datastore  # type: ignore[attr-defined]
        self._datastore = datastore
        table = recorder.events_table_name
        columns = "originator_id, originator_version, topic, state"
        if reader.sqlite:
            # The library's SQLite tables store UUID stream ids as 32 hex digits.
            self._statement: Any = (
                f"SELECT rowid, {columns} FROM {table} "
                "WHERE originator_id IN ({marks}) AND originator_version = 1"
            )
        else:
            self._statement = SQL(
                "SELECT notification_id, " + columns + " FROM {schema}.{table} "
                "WHERE originator_id = ANY(CAST(%s AS {id_type}[])) AND originator_version = 1"
            ).format(
                schema=Identifier(datastore.schema),
                table=Identifier(table),
                id_type=Identifier(datastore.originator_id_type),
            )

    def __call__(self, stream_ids: Collection[str]) -> dict[str, ViewItem]:
        """Stream id (dashed text) -> its first event as a view item, for those found.

        A stream whose first event is not stored, or is of a type the view does not
        read, is left out; one this code cannot decode comes with ``None`` attributes.
        """
        found: dict[str, ViewItem] = {}
        wanted = list(stream_ids)
        for i in range(0, len(wanted), _CHUNK):
            for row in self._rows(wanted[i : i + _CHUNK]):
                position, stream_id, version, topic, state = row
                if self.reader.event_type(topic) not in self.reader.fields:
                    continue
                notification = Notification(
                    id=position,
                    originator_id=stream_id if isinstance(stream_id, UUID) else UUID(stream_id),
                    originator_version=version,
                    topic=topic,
                    state=bytes(state),
                )
                item = self.reader.decode(notification)
                found[str(notification.originator_id)] = item
        return found

    def _rows(self, stream_ids: list[str]) -> list[Any]:
        if self.reader.sqlite:
            marks = ", ".join("?" * len(stream_ids))
            with self._datastore.transaction(commit=False) as c:
                c.row_factory = None
                c.execute(self._statement.format(marks=marks), [UUID(s).hex for s in stream_ids])
                return list(c.fetchall())
        with self._datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._statement, (stream_ids,))
            return [
                (
                    r["notification_id"],
                    r["originator_id"],
                    r["originator_version"],
                    r["topic"],
                    r["state"],
                )
                for r in curs.fetchall()
            ]


__all__ = ["StreamStarts"]
