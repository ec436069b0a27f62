"""``ReplayMixin``: ``ledger.replay(...)`` on the :class:`~dspy_ledger.ledger.Ledger` facade.

The work is done in :mod:`commands.replay`; see docs/replay.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from commands import scope
from commands.handlers import DraftHandler
from commands.replay import ReplayOptions, ReplayReport, Selection, run_replay
from ledger.application import LedgerApplication


class ReplayMixin:
    """Re-runs recorded predictions; the replay is recorded as a run of its own."""

    app: LedgerApplication
    actor: str
    _instrumented: bool
    _handler: DraftHandler

    def instrument(self) -> Any:  # provided by Ledger
        """Record every DSPy call from now on."""
        raise NotImplementedError

    def uninstrument(self) -> None:  # provided by Ledger
        """Stop recording DSPy calls."""
        raise NotImplementedError

    def flush(self, timeout: float | None = None) -> None:  # provided by Ledger
        """Return once everything recorded so far is committed."""
        raise NotImplementedError

    @property
    def recording_errors(self) -> int:  # provided by Ledger
        """How many recording failures this process has seen."""
        raise NotImplementedError

    def replay(
        self,
        program: str | None = None,
        *,
        prediction_ids: Iterable[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        version: str | None = None,
        context: str | None = "production",
        recorded: bool = True,
        lm: Any = None,
        program_version: str = "recorded",
        metric: str | Callable[..., Any] | None = None,
        threads: int = 1,
        asynchronous: bool | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReplayReport:
        """Replay recorded predictions and return the report (see docs/replay.md).

        ``program`` is ``module:attr`` of a factory returning a fresh DSPy module.
        The predictions are ``prediction_ids``, else those matching ``since``,
        ``until``, ``actor``, ``version`` (recorded program version id) and
        ``context`` (``None`` for any). With ``recorded=True`` (the default and
        only when ``lm`` is None) every LM call and tool result is served from the
        record; otherwise the replay is live, against ``lm`` (a model name or a
        ``dspy.BaseLM``) or the program's own LM. ``program_version`` is
        ``recorded``, ``current`` or a version id. The replay's predictions carry
        the context ``replay:<replay id>``.
        """
        mode: Literal["recorded", "live"] = "recorded" if recorded and lm is None else "live"
        options = ReplayOptions(
            program=program,
            selection=Selection(
                prediction_ids=tuple(str(i) for i in prediction_ids),
                since=_aware(since),
                until=_aware(until),
                actor=actor,
                version=version,
                context=context,
            ),
            mode=mode,
            lm=lm,
            program_version=program_version,
            metric=metric,
            threads=threads,
            asynchronous=asynchronous,
        )
        was_instrumented = self._instrumented
        self.instrument()
        try:
            return run_replay(
                self.app,
                options,
                actor=scope.current_actor() or self.actor,
                flush=self.flush,
                progress=progress,
                recording_errors=lambda: self.recording_errors,
                convert=self._handler.as_stored,
            )
        finally:
            if not was_instrumented:
                self.uninstrument()


def _aware(moment: datetime | None) -> datetime | None:
    """Recorded times are UTC; a time given without a zone is taken as UTC too."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
