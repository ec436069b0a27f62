"""The record read back as plain data: what export, show and stats print."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from pydantic import BaseModel

from ledger.application import LedgerApplication

#: Event attributes that are envelope, not data.
_ENVELOPE = {
    "originator_id",
    "originator_version",
    "originator_topic",
    "timestamp",
    "actor",
    "trace_id",
    "span_id",
}


class RecordedEvent(BaseModel):
    """One stored event as plain JSON-able data (the ``export`` line format)."""

    position: int | None
    stream_id: str
    stream_type: str
    version: int
    type: str
    timestamp: str
    actor: str | None
    trace_id: str | None
    span_id: str | None
    data: dict[str, Any]


def split_topic(topic: str) -> tuple[str, str]:
    """Return (stream type, event type) from an event topic like ``mod:Agg.Event``."""
    qualname = topic.rpartition(":")[2]
    stream_type, _, event_type = qualname.rpartition(".")
    return stream_type or qualname, event_type


def plain(value: Any) -> Any:
    """Convert the values eventsourcing decodes (UUID, datetime) back to JSON-able ones."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def to_recorded_event(position: int | None, topic: str, event: Any) -> RecordedEvent:
    """Build the plain form of a decoded domain event stored at ``position``."""
    attributes = vars(event)
    stream_type, event_type = split_topic(topic)
    return RecordedEvent(
        position=position,
        stream_id=str(attributes["originator_id"]),
        stream_type=stream_type,
        version=attributes["originator_version"],
        type=event_type,
        timestamp=attributes["timestamp"].isoformat(),
        actor=attributes.get("actor"),
        trace_id=attributes.get("trace_id"),
        span_id=attributes.get("span_id"),
        data={k: plain(v) for k, v in attributes.items() if k not in _ENVELOPE},
    )


def read_notification(app: LedgerApplication, notification: Notification) -> RecordedEvent:
    """Decode one stored event into its plain form."""
    return to_recorded_event(notification.id, notification.topic, app.decode(notification))


def read_stream(app: LedgerApplication, stream_id: UUID) -> list[RecordedEvent]:
    """Return one stream's history in its plain form (positions: only the log has them)."""
    out = []
    for event in app.stream_events(stream_id):
        topic = f"{type(event).__module__}:{type(event).__qualname__}"
        out.append(to_recorded_event(None, topic, event))
    return out
