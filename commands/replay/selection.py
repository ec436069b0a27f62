"""Which recorded predictions a replay covers, read back from the ledger."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from commands.drafts import PredictionDraft
from commands.handlers import billed_usd
from ledger.application import LedgerApplication
from ledger.domain import Prediction, ProgramVersion
from ledger.errors import PrivacyError
from ledger.reading import plain
from projections.base import ViewItem
from projections.feed import FieldReader


@dataclass
class RecordedPrediction:
    """One recorded prediction with everything a replay needs from it.

    Its ids are kept as the text the record and the report both use: a replay named
    each of them several times per prediction, and parsing and printing ``UUID`` objects
    cost a fiftieth of a replayed prediction.
    """

    prediction_id: str
    program_name: str
    program_version_id: str | None
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
    #: The data subject it concerned (its personal fields are sealed under its key).
    subject: str | None = None

    @property
    def cost_usd(self) -> float:
        """What the recorded LM calls billed."""
        return calls_cost(self.model_calls)


def calls_cost(model_calls: list[dict[str, Any]]) -> float:
    """What these recorded LM calls billed."""
    return sum(float(call.get("cost_usd") or 0.0) for call in model_calls)


@dataclass
class MadePrediction:
    """A prediction the replay made, as recorded: its id, latency and priced LM calls."""

    prediction_id: str
    latency_ms: float | None
    model_calls: list[dict[str, Any]]

    @property
    def cost_usd(self) -> float:
        """What its LM calls billed."""
        return calls_cost(self.model_calls)


def made_prediction(draft: PredictionDraft) -> MadePrediction:
    """What the events of a prediction recorded from ``draft`` will say of it: its id,
    latency and LM calls priced as the writer prices them (no need to read them back)."""
    return MadePrediction(
        prediction_id=str(draft.prediction_id),
        latency_ms=draft.latency_ms,
        model_calls=[
            {"model": call.model, "cost_usd": billed_usd(call), "latency_ms": call.latency_ms}
            for call in draft.model_calls
        ],
    )


class StartedView:
    """A ``PredictionStarted`` as the selection filters read it (from its read fields).

    Only what a filter asks for is converted, so the starts a selection skips cost
    little.
    """

    __slots__ = ("_attributes",)

    def __init__(self, attributes: dict[str, Any]) -> None:
        self._attributes = attributes

    @property
    def program_name(self) -> str:
        """The recorded program's class name (``lm:<model>`` for a bare LM call)."""
        return str(self._attributes.get("program_name"))

    @property
    def context(self) -> str:
        """``production``, ``replay:<id>``, ``evaluation:<id>``, ..."""
        return str(self._attributes.get("context"))

    @property
    def actor(self) -> str:
        """Who made the prediction."""
        return str(self._attributes.get("actor"))

    @property
    def program_version_id(self) -> str | None:
        """The recorded program version id, as dashed UUID text."""
        version = self._attributes.get("program_version_id")
        return None if version is None else str(version)

    @property
    def timestamp(self) -> datetime:
        """When the prediction started (UTC)."""
        return datetime.fromisoformat(self._attributes["timestamp"])


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
        """True if a prediction (as its ``PredictionStarted`` recorded it) passes the filters."""
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


#: The event that starts a Prediction stream (and carries what the filters test).
STARTED = "PredictionStarted"
_STARTED_FIELDS = [
    "program_name",
    "program_version_id@uuid",
    "context",
    "actor",
    "timestamp@time",
    "subject",
]

#: What a replay reads of a recorded prediction it replays (:class:`FieldReader` paths).
RECORD_FIELDS: dict[str, list[str]] = {
    STARTED: [*_STARTED_FIELDS, "inputs@json"],
    "ModelExecuted": [
        "model",
        "response_model",
        "messages@json",
        "outputs@json",
        "error@json",
        "cost_usd",
        "latency_ms",
    ],
    "PredictionCompleted": ["outputs@json", "call_tree@json", "latency_ms"],
    "PredictionFailed": ["error_type", "message", "call_tree@json", "latency_ms"],
}

#: What a replay reads back of the predictions it made: the DSPy call that made each
#: (named by the call tree on the stream's last event), its latency, and its model calls
#: as the writer priced them. Their starts are not read at all.
MADE_FIELDS: dict[str, list[str]] = {
    "ModelExecuted": ["model", "cost_usd", "latency_ms"],
    "PredictionCompleted": ["call_tree.call_id", "latency_ms"],
    "PredictionFailed": ["call_tree.call_id", "latency_ms"],
}

#: Events read per query.
BATCH = 1000
#: Positions of chosen streams this close together are read in one range: reading a
#: few events of other streams costs less than another query.
WINDOW_GAP = 64
#: While at least this share of the events read belongs to chosen predictions, every
#: field of every event is read in one pass (see :func:`fold_predictions`).
ONE_PASS_SHARE = 0.5


def _started(attributes: dict[str, Any]) -> RecordedPrediction:
    version = attributes.get("program_version_id")
    return RecordedPrediction(
        prediction_id=str(attributes["originator_id"]),
        program_name=str(attributes.get("program_name")),
        program_version_id=str(version) if version else None,
        inputs={},  # filled in by _apply: the first pass does not read them
        context=str(attributes.get("context")),
        actor=str(attributes.get("actor")),
        timestamp=datetime.fromisoformat(attributes["timestamp"]),
        subject=attributes.get("subject"),
    )


def _apply(out: RecordedPrediction, event_type: str, attributes: dict[str, Any]) -> None:
    if event_type == STARTED:
        if "inputs" in attributes:
            out.inputs = attributes["inputs"]
    elif event_type == "ModelExecuted":
        out.model_calls.append(attributes)
    elif event_type in ("PredictionCompleted", "PredictionFailed"):
        if event_type == "PredictionCompleted":
            out.status, out.outputs = "completed", attributes.get("outputs")
        else:
            out.status = "failed"
            out.error_type = attributes.get("error_type")
            out.error_message = attributes.get("message")
        tree = attributes.get("call_tree")
        out.call_tree = tree if isinstance(tree, dict) else {}
        out.latency_ms = attributes.get("latency_ms")


def recorded_prediction(app: LedgerApplication, events: list[Any]) -> RecordedPrediction | None:
    """Fold one Prediction stream's decoded events into a RecordedPrediction (None if not one)."""
    if not events or not isinstance(events[0], Prediction.PredictionStarted):
        return None
    reader = FieldReader(app, RECORD_FIELDS)
    out: RecordedPrediction | None = None
    for event in events:
        event_type = type(event).__name__
        if event_type not in RECORD_FIELDS:
            continue
        attributes = reader.pick(event_type, vars(event))
        if out is None:
            out = _started(attributes)
        _apply(out, event_type, attributes)
    return out


def field_reader(app: LedgerApplication, fields: dict[str, list[str]]) -> FieldReader:
    """A field reader that has the database extract the fields only where that pays.

    SQLite extracts a replay's fields from plain JSON rows for less than decoding them
    costs. PostgreSQL first turns each stored state into ``jsonb``, which for the
    messages, outputs and call trees a replay reads costs more than fetching the states
    and decoding the events in Python, so there the reader decodes.
    """
    reader = FieldReader(app, fields)
    if not reader.sqlite:
        reader.fast = False
    return reader


def _items(reader: FieldReader, start: int, stop: int | None) -> Iterator[ViewItem]:
    """Every event from ``start`` to ``stop`` (inclusive; None: the newest), in batches."""
    while True:
        batch = reader.read(start, stop, BATCH)
        yield from batch
        if len(batch) < BATCH:
            return
        start = batch[-1][0] + 1


def _windows(positions: list[int]) -> Iterator[tuple[int, int]]:
    """Ascending positions as (first, last) ranges, joining those within WINDOW_GAP."""
    if not positions:
        return
    first = previous = positions[0]
    for position in positions[1:]:
        if position - previous > WINDOW_GAP:
            yield first, previous
            first = position
        previous = position
    yield first, previous


def fold_predictions(
    app: LedgerApplication, accept: Callable[[Any], bool], *, start: int = 1
) -> list[RecordedPrediction]:
    """Every prediction from position ``start`` on whose start is accepted, oldest first.

    ``accept`` is called with a :class:`StartedView` of each ``PredictionStarted``.
    When SQLite holds plain JSON (:func:`field_reader`), what :data:`RECORD_FIELDS`
    names is read straight from the stored rows (:class:`projections.feed.FieldReader`):
    in one pass while most events read belong to accepted predictions (a replay of all
    of a context, typically), and as soon as a batch shows otherwise, in two passes over
    the rest: who started which stream first, then the accepted streams' events only.
    Otherwise (PostgreSQL, or compressed or encrypted rows) the starts and the accepted
    streams' events are decoded, in one pass.
    """
    reader = field_reader(app, RECORD_FIELDS)
    if not reader.fast:
        return _fold_decoding(app, reader, accept, start)
    chosen: dict[str, RecordedPrediction] = {}
    rest = _fold_while_most_are_chosen(reader, accept, chosen, start)
    if rest is not None:
        _fold_chosen_only(app, reader, accept, chosen, rest)
    return list(chosen.values())


def _fold_while_most_are_chosen(
    reader: FieldReader,
    accept: Callable[[Any], bool],
    chosen: dict[str, RecordedPrediction],
    start: int,
) -> int | None:
    """Fold every field of every event, batch by batch, while at least
    :data:`ONE_PASS_SHARE` of a batch belongs to accepted predictions.

    Returns the position to go on from in two passes, or None at the end of the store.
    Reading the fields of events that are not wanted costs less than a second pass over
    the wanted ones, as long as they are few.
    """
    while True:
        batch = reader.read(start, None, BATCH)
        used = 0
        for _, event_type, attributes in batch:
            if not attributes or event_type not in RECORD_FIELDS:
                continue  # not a prediction's event, or one this code cannot read
            stream = attributes["originator_id"]
            if event_type == STARTED:
                if not accept(StartedView(attributes)):
                    continue
                chosen[stream] = _started(attributes)
            elif stream not in chosen:
                continue
            _apply(chosen[stream], event_type, attributes)
            used += 1
        if len(batch) < BATCH:
            return None
        start = batch[-1][0] + 1
        if used < ONE_PASS_SHARE * len(batch):
            return start


def _fold_chosen_only(
    app: LedgerApplication,
    reader: FieldReader,
    accept: Callable[[Any], bool],
    chosen: dict[str, RecordedPrediction],
    start: int,
) -> None:
    """Fold from ``start`` on in two passes: the starts and stream ids of every event,
    then the fields of the accepted streams' events only (``chosen`` may already hold
    streams whose later events come here)."""
    index = FieldReader(
        app, {name: _STARTED_FIELDS if name == STARTED else [] for name in RECORD_FIELDS}
    )
    positions: list[int] = []
    for position, event_type, attributes in _items(index, start, None):
        if not attributes or event_type not in RECORD_FIELDS:
            continue  # not a prediction's event, or one this code cannot read
        stream = attributes["originator_id"]
        if event_type == STARTED:
            if accept(StartedView(attributes)):
                chosen[stream] = _started(attributes)
                positions.append(position)
        elif stream in chosen:
            positions.append(position)
    wanted = set(positions)
    for first, last in _windows(positions):
        for position, event_type, attributes in _items(reader, first, last):
            if position in wanted and attributes:
                _apply(chosen[attributes["originator_id"]], event_type, attributes)


def _fold_decoding(
    app: LedgerApplication,
    reader: FieldReader,
    accept: Callable[[Any], bool],
    start: int,
) -> list[RecordedPrediction]:
    """The fold that decodes events in Python (PostgreSQL; compressed or encrypted rows).

    One pass: a stream's first event precedes its others, so only the starts and the
    events of accepted streams are decoded, and a start is tested as decoded.
    """
    chosen: dict[Any, RecordedPrediction] = {}
    for notification in app.notifications(start=start):
        event_type = reader.event_type(notification.topic)
        stream = notification.originator_id
        if event_type not in RECORD_FIELDS or (event_type != STARTED and stream not in chosen):
            continue
        try:
            event = app.decode(notification)
        except PrivacyError:
            raise  # a missing or wrong master key must stop the replay, not thin it out
        except Exception:
            continue  # an event this code cannot read (a newer version wrote it)
        if event_type == STARTED and not accept(event):
            continue
        attributes = reader.pick(event_type, vars(event))
        if event_type == STARTED:
            chosen[stream] = _started(attributes)
        _apply(chosen[stream], event_type, attributes)
    return list(chosen.values())


def predictions_made(
    app: LedgerApplication, call_ids: Collection[str], *, start: int
) -> dict[str, MadePrediction]:
    """The predictions recorded from position ``start`` on for these DSPy calls, by call id.

    A stream is matched on its last event, whose call tree names the call that made it;
    its model calls precede that event, and its start is not read at all
    (:data:`MADE_FIELDS`).
    """
    reader = field_reader(app, MADE_FIELDS)
    calls: dict[str, list[dict[str, Any]]] = {}
    made: dict[str, MadePrediction] = {}
    for _, event_type, attributes in _items(reader, start, None):
        if not attributes or event_type not in MADE_FIELDS:
            continue
        stream = attributes["originator_id"]
        if event_type == "ModelExecuted":
            calls.setdefault(stream, []).append(attributes)
            continue
        model_calls = calls.pop(stream, [])
        call_id = attributes.get("call_tree.call_id")
        if isinstance(call_id, str) and call_id in call_ids:
            made[call_id] = MadePrediction(
                prediction_id=stream,
                latency_ms=attributes.get("latency_ms"),
                model_calls=model_calls,
            )
    return made


def load_prediction(app: LedgerApplication, prediction_id: UUID) -> RecordedPrediction | None:
    """The recorded prediction with this id, or None if there is none."""
    return recorded_prediction(app, app.stream_events(prediction_id))


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
