"""Reading the ledger for views: only the fields a view needs, in large batches.

A view needs a handful of an event's fields (a model name, token counts, a time),
while a stored event holds everything (messages, outputs, call trees). Decoding
every event in full through the eventsourcing mapper costs most of a rebuild, so
when the store holds plain JSON (no cipher; no compressor, or the one that stores
plain JSON) the database extracts the fields a view asks for (SQLite
``json_extract``, PostgreSQL ``jsonb``) and Python decodes a short JSON array per
event. Anything else goes through the library mapper, field for field the same: a
ledger with a cipher or zlib compression, a batch holding a row that is not valid
JSON (written compressed), and each event whose personal fields are sealed under a
data subject's key (the mapper opens them, or marks them erased).

A view's fields are dotted paths into the event's state (``usage.prompt_tokens``);
the event's envelope (``originator_id``, ``originator_version``) comes from the
stored columns. Values arrive plain: stream ids as dashed UUID text, times as the
views' UTC text (:func:`projections.base.utc_text`), everything else as JSON.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import DataError, Notification, OperationalError
from eventsourcing.sqlite import SQLiteDatastore
from psycopg.sql import SQL, Identifier, Literal

from ledger.application import LedgerApplication
from ledger.compression import PlainCompressor
from ledger.domain.base import LedgerAggregate
from ledger.errors import PrivacyError
from ledger.privacy.mapper import PERSONAL
from ledger.reading import split_topic
from projections.base import KNOWN_EVENT_TYPES, ViewItem, utc_text

#: The attributes handed over for an event type the view does not read (it skips it).
NOT_READ: dict[str, Any] = {}


def dashed(stream_id: Any) -> str:
    """A stream id (UUID, or the 32 hex digits SQLite stores) as dashed UUID text."""
    if isinstance(stream_id, UUID):
        return str(stream_id)
    h = str(stream_id)
    if len(h) == 32:
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return h


def _iso_to_utc_text(text: str) -> str:
    # The transcoder writes ``datetime.isoformat()``; the usual UTC form with
    # microseconds converts by slicing, anything else through datetime.
    if len(text) == 32 and text.endswith("+00:00"):
        return text[:26] + "Z"
    return utc_text(datetime.fromisoformat(text))


def plain_value(value: Any) -> Any:
    """A transcoded JSON value (or a decoded Python one) as a plain view value."""
    kind = type(value)
    if kind is dict:
        tag = value.get("_type_")
        if tag == "datetime_iso":
            return _iso_to_utc_text(value["_data_"])
        if tag == "uuid_hex":
            return dashed(value["_data_"])
        return {k: plain_value(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [plain_value(v) for v in value]
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, UUID):
        return str(value)
    return value


def personal_fields_by_event_type() -> dict[str, set[str]]:
    """Event type name -> the fields a data subject's key seals (ledger.domain declares them)."""
    found: dict[str, set[str]] = {}
    stack: list[type] = [LedgerAggregate.Event]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        fields = getattr(cls, "personal_fields", ())
        if fields:
            found.setdefault(cls.__name__, set()).update(fields)
    return found


def _parse_field(field: str) -> tuple[str, str | None]:
    # ``path@kind``: ``time`` and ``uuid`` values are stored tagged by the transcoder,
    # ``json`` ones are objects or lists; plain scalars need no kind.
    name, _, kind = field.partition("@")
    return name, kind or None


def _sqlite_path(field: tuple[str, str | None]) -> str:
    name, kind = field
    return f"'$.{name}._data_'" if kind in ("time", "uuid") else f"'$.{name}'"


class FieldReader:
    """Reads batches of events for one view: position, type and the named fields."""

    def __init__(self, app: LedgerApplication, fields: Mapping[str, Sequence[str]]) -> None:
        self.app = app
        #: Event type -> [(attribute name, kind)] the view reads from it.
        self.fields = {
            event_type: [_parse_field(field) for field in paths]
            for event_type, paths in fields.items()
        }
        self._types: dict[str, str] = {}
        #: Event type -> (field names, indexes of its time fields, of its UUID fields).
        self._plans = {
            event_type: (
                [name for name, _ in paths],
                [i for i, (_, kind) in enumerate(paths) if kind == "time"],
                [i for i, (_, kind) in enumerate(paths) if kind == "uuid"],
            )
            for event_type, paths in self.fields.items()
        }
        mapper = app.mapper
        datastore = app.factory.datastore  # type: ignore[attr-defined]
        self.sqlite = isinstance(datastore, SQLiteDatastore)
        #: False when states are not plain JSON (encrypted or compressed).
        self.fast = mapper.cipher is None and (
            mapper.compressor is None or isinstance(mapper.compressor, PlainCompressor)
        )
        self._statement = self._fast_statement(datastore) if self.fast else None

    def _fast_statement(self, datastore: Any) -> Any:
        recorder: Any = self.app.recorder
        table = recorder.events_table_name
        # Only the events the view reads from are parsed, and only for their fields:
        # one JSON array per event (NULL for the others).
        chosen = {event_type: paths for event_type, paths in self.fields.items() if paths}
        if self.sqlite:
            # One json_extract per event with every path at once: SQLite (before 3.45)
            # parses a state once per call, and with two or more paths it returns one
            # JSON array. The last path says whether a data subject's key sealed fields
            # the view reads.
            personal = set(self._reads_personal(chosen))
            extracts: dict[str, str] = {}
            for event_type, paths in chosen.items():
                parts = [_sqlite_path(field) for field in paths]
                seal = f"'$.\"{PERSONAL}\".key'" if event_type in personal else "'$.__none__'"
                parts.append(seal)
                extracts[event_type] = f"json_extract(CAST(state AS TEXT), {', '.join(parts)})"
            cases = "".join(f" WHEN topic LIKE '%.{t}' THEN {x}" for t, x in extracts.items())
            extract = f"CASE{cases} END" if cases else "NULL"
            if len(set(extracts.values())) == 1 and extracts.keys() >= KNOWN_EVENT_TYPES:
                # Every event type the view knows takes the same fields (the audit view):
                # testing the topic costs more than extracting from an unknown event.
                [extract] = set(extracts.values())
            return (
                f"SELECT rowid, topic, originator_id, originator_version, {extract} "
                f"FROM {table} WHERE rowid >= ? AND rowid <= ? ORDER BY rowid LIMIT ?"
            )
        personal_pg = set(self._reads_personal(chosen))
        pg_cases = [
            # A suffix test, not LIKE: a literal '%' would be read as a query placeholder.
            SQL("WHEN right(topic, {0}) = {1} THEN jsonb_build_array({2})::text").format(
                Literal(len(event_type) + 1),
                Literal(f".{event_type}"),
                SQL(", ").join(
                    SQL("convert_from(state, 'UTF8')::jsonb #> {0}").format(Literal(path))
                    for path in [
                        *("{" + name.replace(".", ",") + "}" for name, _ in paths),
                        *(['{"' + PERSONAL + '",key}'] if event_type in personal_pg else []),
                    ]
                )
                + (SQL("") if event_type in personal_pg else SQL(", NULL")),
            )
            for event_type, paths in chosen.items()
        ]
        extract_pg = (
            SQL("CASE ") + SQL(" ").join(pg_cases) + SQL(" END") if pg_cases else SQL("NULL")
        )
        return SQL(
            "SELECT notification_id, topic, originator_id, originator_version, {extract} AS x "
            "FROM {schema}.{table} WHERE notification_id >= %s AND notification_id <= %s "
            "ORDER BY notification_id LIMIT %s"
        ).format(
            extract=extract_pg,
            schema=Identifier(datastore.schema),
            table=Identifier(table),
        )

    def read(self, start: int, stop: int | None, limit: int) -> list[ViewItem]:
        """Up to ``limit`` events from position ``start`` to ``stop`` (inclusive)."""
        last = stop if stop is not None else 2**62
        if self.fast:
            try:
                rows = self._fetch(start, last, limit)
            except (sqlite3.OperationalError, psycopg.DataError, DataError, OperationalError):
                # A batch holding a state that is not plain JSON (written compressed):
                # the database cannot extract from it; the mapper reads it below.
                rows = None
            if rows is not None:
                return self.items(rows)
        batch = self.app.recorder.select_notifications(start=start, limit=limit, stop=stop)
        return [self.decode(n) for n in batch]

    def _fetch(self, start: int, stop: int, limit: int) -> list[Any]:
        datastore: Any = self.app.factory.datastore  # type: ignore[attr-defined]
        params = (start, stop, limit)
        if self.sqlite:
            with datastore.transaction(commit=False) as c:
                c.row_factory = None  # plain tuples: no Row object per event
                c.execute(self._statement, params)
                return list(c.fetchall())
        with datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._statement, params, prepare=True)
            return [
                (
                    r["notification_id"],
                    r["topic"],
                    r["originator_id"],
                    r["originator_version"],
                    r["x"],
                )
                for r in curs.fetchall()
            ]

    @staticmethod
    def _reads_personal(chosen: Mapping[str, Sequence[tuple[str, str | None]]]) -> list[str]:
        """The event types of which the view reads a personal (sealable) field."""
        personal = personal_fields_by_event_type()
        return [
            event_type
            for event_type, paths in chosen.items()
            if {name.split(".")[0] for name, _ in paths} & personal.get(event_type, set())
        ]

    def _decode_sealed(self, items: list[ViewItem], indexes: list[int]) -> None:
        """Decode the batch's rows sealed under a data subject's key, in place.

        The mapper opens each (or marks it erased). They are read again in one query over
        the batch's range rather than one each: a query per sealed event made a ledger of
        subjects' predictions about ten times slower to read than one without.
        """
        wanted = {items[index][0]: index for index in indexes}
        first, last = items[indexes[0]][0], items[indexes[-1]][0]
        notifications = self.app.recorder.select_notifications(
            start=first, limit=last - first + 1, stop=last
        )
        for notification in notifications:
            index = wanted.get(notification.id)
            if index is not None:
                items[index] = self.decode(notification)

    def event_type(self, topic: str) -> str:
        """The event type named by a topic (cached: a ledger has few topics)."""
        found = self._types.get(topic)
        if found is None:
            found = self._types[topic] = split_topic(topic)[1]
        return found

    def items(self, rows: Sequence[Any]) -> list[ViewItem]:
        """The view items of rows read by the fast statement (see :meth:`read`)."""
        texts = [row[4] for row in rows if row[4] is not None]
        # One parse for the whole batch: a json.loads call per event costs about as
        # much as the parsing itself.
        parsed = iter(json.loads(f"[{','.join(texts)}]") if texts else ())
        plans = self._plans
        streams: dict[Any, str] = {}  # UUIDs as dashed text: a batch repeats most
        items: list[ViewItem] = []
        sealed: list[int] = []  # where the batch's sealed rows go, decoded at the end
        for position, topic, stream_id, version, text in rows:
            found = None if text is None else next(parsed)
            event_type = self._types.get(topic) or self.event_type(topic)
            plan = plans.get(event_type)
            if plan is None:
                items.append((position, event_type, NOT_READ))
                continue
            stream = streams.get(stream_id)
            if stream is None:
                stream = streams[stream_id] = dashed(stream_id)
            attributes: dict[str, Any] = {"originator_id": stream, "originator_version": version}
            if found:
                if found[-1] is not None:
                    # Sealed under a data subject's key: decoded with the batch's others.
                    sealed.append(len(items))
                    items.append((position, event_type, NOT_READ))
                    continue
                names, times, uuids = plan
                attributes.update(zip(names, found, strict=False))
                for i in times:
                    if type(found[i]) is str:  # SQLite read the tag's data
                        attributes[names[i]] = _iso_to_utc_text(found[i])
                for i in uuids:
                    if type(found[i]) is str:  # a few program versions, many predictions
                        uuid = streams.get(found[i])
                        if uuid is None:
                            uuid = streams[found[i]] = dashed(found[i])
                        attributes[names[i]] = uuid
                if '"_type_"' in text:
                    # Some value holds a tagged time or UUID (read whole); values with
                    # no tag in their text are plain JSON already (messages, outputs).
                    for name, value in zip(names, found, strict=False):
                        if type(value) is dict or type(value) is list:
                            attributes[name] = plain_value(value)
            items.append((position, event_type, attributes))
        if sealed:
            self._decode_sealed(items, sealed)
        return items

    def decode(self, notification: Notification) -> ViewItem:
        """One stored event through the library mapper (``None`` if it cannot be read)."""
        event_type = self.event_type(notification.topic)
        if event_type not in self.fields:
            # The view reads nothing from it: no need to decode it at all.
            return (
                notification.id,
                event_type,
                {
                    "originator_id": dashed(notification.originator_id),
                    "originator_version": notification.originator_version,
                },
            )
        try:
            event = self.app.decode(notification)
        except PrivacyError:
            raise  # a missing or wrong master key must stop the view, not thin it out
        except Exception:
            # An event this code cannot read (a newer version wrote it): skip and count.
            return notification.id, event_type, None
        return notification.id, event_type, self.pick(event_type, vars(event))

    def pick(self, event_type: str, decoded: dict[str, Any]) -> dict[str, Any]:
        """The view's fields of a fully decoded event, as plain values."""
        attributes: dict[str, Any] = {
            "originator_id": dashed(decoded["originator_id"]),
            "originator_version": int(decoded["originator_version"]),
        }
        for name, _ in self.fields.get(event_type, ()):
            value: Any = decoded
            for part in name.split("."):
                value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
                if value is None:
                    break
            attributes[name] = plain_value(value)
        return attributes


__all__ = ["NOT_READ", "FieldReader", "dashed", "plain_value"]
