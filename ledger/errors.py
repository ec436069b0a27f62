"""Errors raised by dspy-ledger.

Every error the ledger raises on purpose derives from :class:`LedgerError`, so one
``except LedgerError`` catches them all::

    LedgerError
    ├── StorageURLError         the store URL cannot be understood
    ├── StoreUnavailableError   the store cannot be reached, opened or written
    │   └── LedgerNotFoundError a read was asked of a ledger that does not exist yet
    ├── RecordingError          events could not be committed (sync durability, or at close)
    ├── StreamNotFoundError     no stream has the given id
    ├── InvalidInputError       a value given by the user is malformed
    ├── PrivacyError            personal data cannot be encrypted, read or forgotten
    │   ├── MasterKeyError          no master key, or not the one the keys were wrapped with
    │   ├── UnknownSubjectError     no data subject with this id has anything recorded
    │   └── SubjectAlreadyForgottenError  the subject was forgotten and nothing new was recorded
    └── GovernanceError         an LM call was refused before it was made
        ├── PolicyViolation     no policy lets this actor use this model
        ├── BudgetExceeded      the actor's or program's USD budget is spent
        └── RateLimited         the actor made too many calls to this model this minute

Every message is one sentence that says what was wrong and what to do.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error dspy-ledger raises on purpose."""


class StorageURLError(LedgerError, ValueError):
    """The store URL is malformed or names an unsupported scheme."""


class StoreUnavailableError(LedgerError):
    """The store cannot be reached, opened or written (server down, bad credentials, ...)."""


class LedgerNotFoundError(StoreUnavailableError):
    """A read command was pointed at a ledger that has not been created yet."""


class RecordingError(LedgerError):
    """Recorded events could not be committed to the store.

    ``pending`` counts the records that were not written when the error was raised.
    """

    def __init__(self, message: str, *, pending: int = 0) -> None:
        super().__init__(message)
        self.pending = pending


class StreamNotFoundError(LedgerError, KeyError):
    """No stream (aggregate) with the given id exists in the ledger."""

    def __init__(self, stream_id: object) -> None:
        super().__init__(f"No stream with id {stream_id} exists in this ledger.")
        self.stream_id = stream_id

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidInputError(LedgerError, ValueError):
    """A value given by the user (an id, a date, an option) is malformed."""


class PrivacyError(LedgerError):
    """Personal data could not be encrypted, read or forgotten (see docs/privacy.md)."""


class MasterKeyError(PrivacyError):
    """The master key is missing, malformed, or not the one the subject keys were wrapped with.

    Raised before anything is decrypted or written, so a wrong key changes nothing.
    """


class UnknownSubjectError(PrivacyError, KeyError):
    """No data subject with the given id has anything recorded in this ledger."""

    def __str__(self) -> str:
        return str(self.args[0])


class SubjectAlreadyForgottenError(PrivacyError):
    """The subject was already forgotten and nothing was recorded for it since."""


class GovernanceError(LedgerError):
    """An LM call was refused by the ledger's governance before any request was sent.

    ``actor``, ``model`` and ``reason`` (``policy``, ``budget`` or ``rate_limit``) say
    who was refused what and why; the refusal is recorded as ``ExecutionDenied``.
    """

    reason = "governance"

    def __init__(self, message: str, *, actor: str, model: str) -> None:
        super().__init__(message)
        self.actor = actor
        self.model = model


class PolicyViolation(GovernanceError):  # noqa: N818 - the name users asked for
    """No policy allows this actor to use this model, or a policy denies it."""

    reason = "policy"


class BudgetExceeded(GovernanceError):  # noqa: N818 - the name users asked for
    """The USD budget of the actor or program for the current day or month is spent."""

    reason = "budget"


class RateLimited(GovernanceError):  # noqa: N818 - the name users asked for
    """The actor has made as many calls to this model this minute as its limit allows."""

    reason = "rate_limit"
