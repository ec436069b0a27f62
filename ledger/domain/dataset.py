"""Dataset: a content-addressed list of examples (a trainset, valset or devset)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.domain.base import LedgerAggregate, provenance
from ledger.hashing import content_id


class Dataset(LedgerAggregate):
    """An ordered list of examples, identified by the digest of its example digests."""

    class DatasetRegistered(LedgerAggregate.Created):
        """A dataset was used for the first time (by an optimization or evaluation)."""

        digest: str
        size: int
        example_digests: list[str]
        examples: list[dict[str, Any]]

    def __init__(self, digest: str, size: int, example_digests: list[str]) -> None:
        self.digest = digest
        self.size = size
        self.example_digests = example_digests

    @staticmethod
    def id_for(digest: str) -> UUID:
        """Return the stream id of the dataset with this digest."""
        return content_id("dataset", digest)

    @classmethod
    def register(
        cls,
        *,
        digest: str,
        example_digests: list[str],
        examples: list[dict[str, Any]],
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Dataset:
        """Register a dataset (``DatasetRegistered``)."""
        extra: dict[str, Any] = {} if occurred_at is None else {"timestamp": occurred_at}
        return cls._create(
            cls.DatasetRegistered,
            id=cls.id_for(digest),
            digest=digest,
            size=len(examples),
            example_digests=example_digests,
            examples=examples,
            **provenance(actor, trace_id, span_id),
            **extra,
        )
