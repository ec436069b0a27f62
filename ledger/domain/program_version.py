"""ProgramVersion: one content-addressed state of a DSPy program."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.domain.base import LedgerAggregate, provenance
from ledger.hashing import content_id


class ProgramVersion(LedgerAggregate):
    """A program's dumped state, identified by the SHA-256 of that state.

    The same state always maps to the same stream id, so registering a version twice
    (in one process or in many) names one stream.
    """

    class ProgramVersionRegistered(LedgerAggregate.Created):
        """A program state was seen for the first time."""

        program_name: str
        module_path: str
        state: dict[str, Any]
        state_hash: str
        parent_version_id: UUID | None
        produced_by: UUID | None

    def __init__(
        self,
        program_name: str,
        module_path: str,
        state_hash: str,
        parent_version_id: UUID | None,
        produced_by: UUID | None,
    ) -> None:
        self.program_name = program_name
        self.module_path = module_path
        self.state_hash = state_hash
        self.parent_version_id = parent_version_id
        self.produced_by = produced_by

    @staticmethod
    def id_for(state_hash: str) -> UUID:
        """Return the stream id of the version whose state has this hash."""
        return content_id("program-version", state_hash)

    @classmethod
    def register(
        cls,
        *,
        program_name: str,
        module_path: str,
        state: dict[str, Any],
        state_hash: str,
        parent_version_id: UUID | None = None,
        produced_by: UUID | None = None,
        actor: str,
        trace_id: str | None = None,
        span_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> ProgramVersion:
        """Register a program state (``ProgramVersionRegistered``)."""
        extra: dict[str, Any] = {} if occurred_at is None else {"timestamp": occurred_at}
        return cls._create(
            cls.ProgramVersionRegistered,
            id=cls.id_for(state_hash),
            program_name=program_name,
            module_path=module_path,
            state=state,
            state_hash=state_hash,
            parent_version_id=parent_version_id,
            produced_by=produced_by,
            **provenance(actor, trace_id, span_id),
            **extra,
        )
