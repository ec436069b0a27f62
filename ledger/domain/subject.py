"""DataSubject: a person the ledger holds personal data about, and their erasure."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from ledger.domain.base import LedgerAggregate, provenance
from ledger.hashing import content_id


class DataSubject(LedgerAggregate):
    """The record of what was done about one data subject's personal data.

    The stream is created when the subject is first forgotten and receives one
    ``SubjectForgotten`` per erasure (a subject can come back, be recorded under a
    fresh key, and be forgotten again). Its id is derived from the subject id, so every
    process finds the same stream.
    """

    class SubjectRegistered(LedgerAggregate.Created):
        """The ledger started keeping a record of requests about this subject."""

        subject_id: str

    class SubjectForgotten(LedgerAggregate.Event):
        """The subject's keys were destroyed: their personal data can never be read again."""

        subject_id: str
        reason: str
        keys_destroyed: int
        streams: list[str]

        def apply(self, aggregate: DataSubject) -> None:
            """Count the erasure."""
            aggregate.erasures += 1

    def __init__(self, subject_id: str) -> None:
        self.subject_id = subject_id
        self.erasures = 0

    @staticmethod
    def id_for(subject_id: str) -> UUID:
        """Return the stream id of the subject with this id."""
        return content_id("subject", subject_id)

    @classmethod
    def register(cls, *, subject_id: str, actor: str) -> DataSubject:
        """Start the subject's stream (``SubjectRegistered``)."""
        return cls._create(
            cls.SubjectRegistered,
            id=cls.id_for(subject_id),
            subject_id=subject_id,
            **provenance(actor, None, None),
        )

    def forgotten(
        self, *, reason: str, keys_destroyed: int, streams: list[str], actor: str
    ) -> None:
        """Record that the subject's keys were destroyed (``SubjectForgotten``)."""
        fields: dict[str, Any] = {
            "subject_id": self.subject_id,
            "reason": reason,
            "keys_destroyed": keys_destroyed,
            "streams": streams,
        }
        self.record(self.SubjectForgotten, None, **fields, **provenance(actor, None, None))
