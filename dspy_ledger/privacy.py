"""``PrivacyMixin``: data subjects on the :class:`~dspy_ledger.ledger.Ledger` facade.

``ledger.acting_for(subject)`` marks predictions as concerning a data subject (their
personal fields are encrypted under the subject's key); ``ledger.forget(subject,
reason=...)`` destroys the subject's keys, records ``SubjectForgotten``, purges the
views' copies and compacts the store. See docs/privacy.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path

from pydantic import BaseModel

from commands import scope
from commands.handlers import DraftHandler
from commands.redaction import TextRedactor, build_redactors
from ledger.application import LedgerApplication
from ledger.domain import DataSubject
from ledger.errors import (
    InvalidInputError,
    SubjectAlreadyForgottenError,
    UnknownSubjectError,
)
from ledger.privacy import MasterKey, SubjectStatus, load_master_key
from ledger.privacy.compaction import compact_store
from ledger.storage import StoreURL

MasterKeyInput = str | bytes | Path | MasterKey
Redactors = Iterable[str | TextRedactor]
ViewProgress = Callable[[str, int], None]


class ErasureReport(BaseModel):
    """What :meth:`PrivacyMixin.forget` did."""

    subject: str
    reason: str
    by: str
    position: int | None
    keys_destroyed: int
    streams: list[str]
    views_updated: dict[str, int]
    store_compacted: bool


class PrivacyMixin:
    """Adds data subjects, erasure and redaction to the facade."""

    app: LedgerApplication
    store: StoreURL
    actor: str
    _handler: DraftHandler

    def _setup_privacy(
        self, master_key: MasterKeyInput | None, redactors: Redactors | None
    ) -> None:
        """Install the master key (checked against the stored keys) and the redactors."""
        keys = self.app.subject_keys
        if master_key is not None:
            keys.master = (
                master_key if isinstance(master_key, MasterKey) else load_master_key(master_key)
            )
        keys.check_master()
        try:
            self._handler.redactors = build_redactors(redactors)
        except ValueError as error:
            raise InvalidInputError(str(error)) from None

    def acting_for(self, subject: str) -> AbstractContextManager[None]:
        """Record predictions in the block as concerning the data subject ``subject``.

        Raises MasterKeyError at once if no master key is configured, rather than
        failing later in the background.
        """
        self.app.subject_keys.require_master()
        try:
            return scope.acting_for(subject)
        except ValueError as error:
            raise InvalidInputError(str(error)) from None

    def subject_status(self, subject: str) -> SubjectStatus:
        """How many live and destroyed keys a subject has, and the streams it appears in."""
        return self.app.subject_keys.status(subject)

    def forget(
        self,
        subject: str,
        *,
        reason: str,
        by: str | None = None,
        compact: bool = True,
        progress: ViewProgress | None = None,
    ) -> ErasureReport:
        """Erase a data subject: destroy its keys, record it, purge copies, compact.

        The subject's events stay (and the Merkle log still verifies), but their
        personal fields read as ``[erased]`` from now on. Raises UnknownSubjectError
        if nothing was recorded for the subject, SubjectAlreadyForgottenError if it
        was forgotten and nothing was recorded since.
        """
        if not subject or not subject.strip():
            msg = "Give the id of the data subject to forget, such as 'customer-123'."
            raise InvalidInputError(msg)
        if not reason or not reason.strip():
            msg = "Give a reason for the erasure (for example 'GDPR art. 17 request')."
            raise InvalidInputError(msg)
        keys = self.app.subject_keys
        # The views are caught up afterwards, which reads other subjects' events: check
        # for the master key before anything changes.
        keys.require_master()
        status = keys.status(subject)
        if status.live_keys == 0:
            if status.destroyed_keys:
                msg = (
                    f"Subject {subject!r} was already forgotten at {status.last_destroyed_at}, "
                    "and nothing has been recorded for it since."
                )
                raise SubjectAlreadyForgottenError(msg)
            msg = (
                f"No data subject {subject!r} has anything recorded in this ledger; "
                "check the id (ids are case-sensitive)."
            )
            raise UnknownSubjectError(msg)
        actor = by or scope.current_actor() or self.actor
        aggregate = self.app.get_aggregate(DataSubject.id_for(subject))
        if not isinstance(aggregate, DataSubject):
            aggregate = DataSubject.register(subject_id=subject, actor=actor)
        aggregate.forgotten(
            reason=reason, keys_destroyed=status.live_keys, streams=status.streams, actor=actor
        )
        # The record of the erasure is committed before the keys go: a crash in between
        # leaves the keys live, and forgetting again finishes the job.
        position = self.app.save_aggregates(aggregate)
        destroyed = keys.destroy(subject)
        views = _purge_view_copies(self, progress)
        compacted = compact and compact_store(self.store, self._personal_tables())
        return ErasureReport(
            subject=subject,
            reason=reason,
            by=actor,
            position=position,
            keys_destroyed=destroyed,
            streams=status.streams,
            views_updated=views,
            store_compacted=compacted,
        )

    def rotate_master_key(self, new_key: MasterKeyInput) -> int:
        """Wrap every live subject key under ``new_key``; return how many were rewrapped."""
        new = new_key if isinstance(new_key, MasterKey) else load_master_key(new_key)
        assert new is not None
        return self.app.subject_keys.rewrap(new)

    def _personal_tables(self) -> list[str]:
        """Qualified PostgreSQL tables that held personal data (rewritten on erasure)."""
        from projections.runner import VIEW_CLASSES

        schema = self.store.schema or "public"
        tables = list(self.app.subject_keys.table_names)
        for _, postgres_class in VIEW_CLASSES.values():
            tables += [f'"{schema}"."{t}"' for t in getattr(postgres_class, "personal_tables", ())]
        return tables


def _purge_view_copies(ledger: object, progress: ViewProgress | None) -> dict[str, int]:
    """Catch every view up, so that it has processed the erasure and purged its copies."""
    from dspy_ledger.ledger import Ledger
    from dspy_ledger.views import update_views

    assert isinstance(ledger, Ledger)
    return update_views(ledger, progress=progress)
