"""The mapper that encrypts a data subject's personal fields under the subject's key.

Events declare their personal fields (``personal_fields`` on the event class, see
:mod:`ledger.domain.base`). When an event concerns a subject (its ``subject`` is set),
:meth:`PrivacyMapper.to_stored_event` moves those fields into one AES-GCM blob under
the subject's key, stored as the ``$personal`` attribute::

    {"$personal": {"key": "<key id>", "nonce": "<base64>", "data": "<base64>"}}

Everything else (model, tokens, cost, latency, versions) stays readable, so cost and
accuracy views keep working after an erasure. The blob's associated data binds it to
its stream, version and topic: it cannot be moved to another event.

:meth:`PrivacyMapper.to_domain_event` restores the fields, or, when the key was
destroyed, puts :data:`ERASED` in each of them and sets ``erased`` to True. The Merkle
log hashes the stored bytes (the ciphertext), which forgetting does not touch.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from typing import Any, Final
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic

from ledger.errors import PrivacyError
from ledger.privacy.keystore import SubjectKeys
from ledger.privacy.master import NONCE_BYTES
from ledger.transcoding import LedgerTranscoder

#: What an erased personal field reads as.
ERASED: Final = "[erased]"
#: The stored attribute holding the encrypted personal fields.
PERSONAL: Final = "$personal"


def is_erased(event: object) -> bool:
    """True if the event's personal fields were erased (its subject was forgotten)."""
    return bool(getattr(event, "erased", False))


class PrivacyMapper(Mapper[UUID]):
    """A Mapper that keeps personal fields of a subject's events encrypted at rest."""

    keys: SubjectKeys | None = None

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        """Seal the event's personal fields under its subject's key, then store it."""
        cls = type(domain_event)
        topic = get_topic(cls)
        state = dict(vars(domain_event))
        converted: frozenset[str] = getattr(cls, "converted_fields", frozenset())
        names = _sealed_names(domain_event)
        if names:
            if self.keys is None:  # pragma: no cover - LedgerApplication always attaches keys
                msg = "Personal data cannot be stored: this ledger has no key store."
                raise PrivacyError(msg)
            subject: str = domain_event.subject  # type: ignore[attr-defined]
            personal = {name: state.pop(name) for name in names}
            key_id, key = self.keys.key_for_writing(subject, str(domain_event.originator_id))
            nonce = secrets.token_bytes(NONCE_BYTES)
            sealed = AESGCM(key).encrypt(
                nonce, self._encode(personal, converted), _binding(domain_event, topic)
            )
            state[PERSONAL] = {
                "key": key_id,
                "nonce": base64.b64encode(nonce).decode("ascii"),
                "data": base64.b64encode(sealed).decode("ascii"),
                "fields": sorted(personal),
            }
        # The library's Mapper.to_stored_event (9.5), with the state encoded knowing which
        # of its fields are converted payloads (ledger.transcoding).
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(cls, "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        stored_state = self._encode(state, converted)
        if self.compressor:
            stored_state = self.compressor.compress(stored_state)
        if self.cipher:
            stored_state = self.cipher.encrypt(stored_state)
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=topic,
            state=stored_state,
        )

    def _encode(self, state: dict[str, Any], converted: frozenset[str]) -> bytes:
        if isinstance(self.transcoder, LedgerTranscoder):
            return self.transcoder.encode_event_state(state, converted)
        return self.transcoder.encode(state)

    @staticmethod
    def sealed_streams(events: Iterable[DomainEventProtocol[UUID]]) -> list[tuple[str, str]]:
        """The ``(subject, stream id)`` of each event :meth:`to_stored_event` will seal."""
        return [
            (event.subject, str(event.originator_id))  # type: ignore[attr-defined]
            for event in events
            if _sealed_names(event)
        ]

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        """Decode the event, opening its personal fields or marking them erased."""
        event = super().to_domain_event(stored_event)
        state = vars(event)
        sealed = state.pop(PERSONAL, None)
        if sealed is None:
            return event
        fields: tuple[str, ...] = getattr(type(event), "personal_fields", ())
        key = self.keys.key_by_id(sealed["key"]) if self.keys is not None else None
        if key is None:
            state.update(dict.fromkeys(sealed.get("fields", fields), ERASED))
            state["erased"] = True
            return event
        try:
            opened = AESGCM(key).decrypt(
                base64.b64decode(sealed["nonce"]),
                base64.b64decode(sealed["data"]),
                _binding(event, stored_event.topic),
            )
        except InvalidTag:
            msg = (
                f"The personal data of event {stored_event.originator_version} of stream "
                f"{stored_event.originator_id} does not decrypt: the stored event was altered "
                "(run dspy-ledger verify)."
            )
            raise PrivacyError(msg) from None
        state.update(self.transcoder.decode(opened))
        return event


def _sealed_names(event: Any) -> list[str]:
    """The personal fields :meth:`PrivacyMapper.to_stored_event` seals in ``event``: none
    unless it concerns a subject. An empty field (no error, no comment) holds nothing
    personal: it stays plain, so after erasure it still reads as empty, not "[erased]"."""
    if getattr(event, "subject", None) is None:
        return []
    fields: tuple[str, ...] = getattr(type(event), "personal_fields", ())
    state = vars(event)
    return [name for name in fields if state.get(name) is not None]


def _binding(event: Any, topic: str) -> bytes:
    """Associated data tying a sealed blob to one event of one stream."""
    return f"{event.originator_id}\x00{event.originator_version}\x00{topic}".encode()
