"""The base aggregate: every event says who, when and under which trace."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from eventsourcing.domain import Aggregate

from ledger.errors import LedgerError


class DomainRuleError(LedgerError):
    """A command was refused because it would break a rule of the domain."""


class LedgerAggregate(Aggregate):
    """Base of every aggregate in the ledger.

    Events are declared as explicit nested classes and triggered with the time the
    thing *happened* (``occurred_at``), not the time it was written: the asynchronous
    writer commits in the background, and the record must still say when each
    prediction ran.
    """

    class Event(Aggregate.Event):
        """Cross-cutting fields carried by every ledger event."""

        actor: str
        trace_id: str | None
        span_id: str | None
        subject: str | None

        #: Names of the fields that hold personal data about the event's ``subject``.
        #: Plain data: the store (ledger.privacy) encrypts them under the subject's key.
        personal_fields: ClassVar[tuple[str, ...]] = ()
        #: Names of the fields the recorder fills only with payloads it has converted to
        #: plain JSON (commands.payloads). The store writes them without walking them in
        #: Python (ledger.transcoding), so nothing else may ever be put in them.
        converted_fields: ClassVar[frozenset[str]] = frozenset()

    class Created(Event, Aggregate.Created):
        """Base of the events that start a stream."""

    def record(self, event_class: type[Any], occurred_at: datetime | None, **fields: Any) -> None:
        """Trigger ``event_class`` on this aggregate, dated ``occurred_at`` when given."""
        if occurred_at is not None:
            fields["timestamp"] = occurred_at
        fields.setdefault("subject", None)
        self.trigger_event(event_class, **fields)


def provenance(
    actor: str, trace_id: str | None, span_id: str | None, subject: str | None = None
) -> dict[str, Any]:
    """Return the cross-cutting event fields as keyword arguments."""
    return {"actor": actor, "trace_id": trace_id, "span_id": span_id, "subject": subject}


#: Public alias for type hints on "any ledger event".
LedgerEvent = LedgerAggregate.Event
