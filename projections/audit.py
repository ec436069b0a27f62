"""The audit view: who did what, in the order it was recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from projections.base import (
    KNOWN_EVENT_TYPES,
    Cursor,
    PostgresView,
    SQLiteView,
    ViewItem,
    ViewRecorder,
    bounds,
)


class AuditLogic(ViewRecorder):
    """One row per event: actor, time, stream and event type."""

    view_name: ClassVar[str] = "audit"
    tables: ClassVar[dict[str, str]] = {
        "audit_events": (
            "(position BIGINT PRIMARY KEY, actor TEXT NOT NULL, occurred_at TEXT NOT NULL,"
            " stream_id TEXT NOT NULL, stream_version BIGINT NOT NULL, event_type TEXT NOT NULL,"
            " trace_id TEXT)"
        ),
    }

    indexes: ClassVar[dict[str, tuple[str, str]]] = {
        "audit_events_actor": ("audit_events", "actor, position"),
        "audit_events_time": ("audit_events", "occurred_at, position"),
    }
    fields: ClassVar[dict[str, tuple[str, ...]]] = dict.fromkeys(
        sorted(KNOWN_EVENT_TYPES), ("actor", "timestamp@time", "trace_id")
    )

    def handle(self, cursor: Cursor, position: int, event_type: str, e: dict[str, Any]) -> None:
        """Record every known event."""
        self.write(cursor, [(position, event_type, e)])

    def write(self, cursor: Cursor, items: Sequence[ViewItem]) -> None:
        """One row per event, written in one statement."""
        cursor.executemany(
            "INSERT INTO {audit_events} VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    position,
                    e.get("actor") or "unknown",
                    e["timestamp"],
                    e["originator_id"],
                    e["originator_version"],
                    event_type,
                    e.get("trace_id"),
                )
                for position, event_type, e in items
                if e is not None
            ],
        )

    def by_actor(self, actor: str, since: str | None, until: str | None) -> list[dict[str, Any]]:
        """Everything one actor did, in position order."""
        clauses, params = bounds("occurred_at", since, until)
        where = " AND ".join(["actor = ?", *clauses])
        return self.rows(
            f"SELECT * FROM {{audit_events}} WHERE {where} ORDER BY position", [actor, *params]
        )


class SQLiteAuditView(AuditLogic, SQLiteView):
    """The audit view in SQLite."""


class PostgresAuditView(AuditLogic, PostgresView):
    """The audit view in PostgreSQL."""
