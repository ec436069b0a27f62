"""Which recorded predictions a replay covers, read back from the ledger."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.application import LedgerApplication
from ledger.domain import Prediction, ProgramVersion
from ledger.reading import plain


@dataclass
class RecordedPrediction:
    """One recorded prediction with everything a replay needs from it."""

    prediction_id: UUID
    program_name: str
    program_version_id: UUID | None
    inputs: dict[str, Any]
    context: str
    actor: str
    timestamp: datetime
    model_calls: list[dict[str, Any]] = field(default_factory=list)
    status: str = "started"
    outputs: dict[str, Any] | None = None
    error_type: str | None = None
    error_message: str | None = None
    call_tree: dict[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None

    @property
    def cost_usd(self) -> float:
        """What the recorded LM calls billed."""
        return sum(float(call.get("cost_usd") or 0.0) for call in self.model_calls)


@dataclass
class RecordedVersion:
    """A registered program version: where its code lives and its dumped state."""

    version_id: UUID
    program_name: str
    module_path: str
    state: dict[str, Any]


@dataclass(frozen=True)
class Selection:
    """The filters that choose predictions (all optional; ids win over filters).

    ``context=None`` chooses every context except earlier replays (``replay:<id>``);
    name a replay's context to replay what it made.
    """

    prediction_ids: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    version: str | None = None
    context: str | None = "production"

    def describe(self) -> dict[str, Any]:
        """The selection as JSON (recorded in ``ReplayStarted``)."""
        return {
            "prediction_ids": list(self.prediction_ids),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "actor": self.actor,
            "version": self.version,
            "context": self.context,
        }

    def matches(self, started: Any) -> bool:
        """True if a ``PredictionStarted`` event passes the filters."""
        if started.program_name.startswith("lm:"):
            return False  # a bare LM call has no program to re-run
        if self.context is None and started.context.startswith("replay:"):
            return False  # "any context" means any recorded work, not earlier replays
        if self.context is not None and started.context != self.context:
            return False
        if self.actor is not None and started.actor != self.actor:
            return False
        if self.version is not None and str(started.program_version_id) != self.version:
            return False
        if self.since is not None and started.timestamp < self.since:
            return False
        return self.until is None or started.timestamp <= self.until


def _started(started: Any) -> RecordedPrediction:
    return RecordedPrediction(
        prediction_id=started.originator_id,
        program_name=started.program_name,
        program_version_id=started.program_version_id,
        inputs=plain(started.inputs),
        context=started.context,
        actor=started.actor,
        timestamp=started.timestamp,
    )


def _apply(out: RecordedPrediction, event: Any) -> None:
    if isinstance(event, Prediction.ModelExecuted):
        out.model_calls.append(plain(vars(event)))
    elif isinstance(event, Prediction.PredictionCompleted):
        out.status, out.outputs = "completed", plain(event.outputs)
        out.call_tree, out.latency_ms = plain(event.call_tree), event.latency_ms
    elif isinstance(event, Prediction.PredictionFailed):
        out.status = "failed"
        out.error_type, out.error_message = event.error_type, event.message
        out.call_tree, out.latency_ms = plain(event.call_tree), event.latency_ms


def recorded_prediction(events: list[Any]) -> RecordedPrediction | None:
    """Fold one Prediction stream's events into a RecordedPrediction (None if not one)."""
    if not events or not isinstance(events[0], Prediction.PredictionStarted):
        return None
    out = _started(events[0])
    for event in events[1:]:
        _apply(out, event)
    return out


def fold_predictions(
    app: LedgerApplication, accept: Callable[[Any], bool], *, start: int = 1
) -> list[RecordedPrediction]:
    """Every prediction whose ``PredictionStarted`` (from position ``start``) is accepted.

    One pass over the log: a stream's first event precedes its others, so only the
    events of accepted streams are decoded.
    """
    found: dict[UUID | str, RecordedPrediction] = {}
    for notification in app.notifications(start=start):
        topic = notification.topic
        if ":Prediction." not in topic:
            continue
        if topic.endswith(".PredictionStarted"):
            started = app.decode(notification)
            if accept(started):
                found[notification.originator_id] = _started(started)
            continue
        prediction = found.get(notification.originator_id)
        if prediction is not None:
            _apply(prediction, app.decode(notification))
    return list(found.values())


def load_prediction(app: LedgerApplication, prediction_id: UUID) -> RecordedPrediction | None:
    """The recorded prediction with this id, or None if there is none."""
    return recorded_prediction(app.stream_events(prediction_id))


def select_predictions(app: LedgerApplication, selection: Selection) -> list[RecordedPrediction]:
    """The recorded, finished predictions the filters choose, oldest first."""
    chosen = fold_predictions(app, selection.matches)
    return [prediction for prediction in chosen if prediction.status != "started"]


def load_version(app: LedgerApplication, version_id: UUID) -> RecordedVersion | None:
    """The registered program version with this id, or None if there is none."""
    events = app.stream_events(version_id)
    if not events or not isinstance(events[0], ProgramVersion.ProgramVersionRegistered):
        return None
    registered = events[0]
    return RecordedVersion(
        version_id=version_id,
        program_name=registered.program_name,
        module_path=registered.module_path,
        state=plain(registered.state),
    )
