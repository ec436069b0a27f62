"""Section 2c: a prediction's events written as stored rows, by JSON encoder.

The writer's work per draft includes mapping each event to a stored row, and most of that
is encoding the event's state as JSON (docs/performance.md, items 25 and 26). This section
times, on the events of real recorded predictions (a ``ChainOfThought`` through
``DummyLM``, three events each, the program's version registered once):

- **encoding** the event states: the library's ``JSONTranscoder.encode`` (the standard
  ``json`` module) against :meth:`ledger.transcoding.LedgerTranscoder.encode_event_state`
  (orjson, in the library's format);
- **mapping** the events to stored rows, the ledger's mapper with each encoder: the step
  as the writer calls it.

Both in this process's CPU time with the collector paused (as the writer pauses it),
alternating round by round so the machine's drift falls on both. What each encoder
returns is kept until the round ends, as the writer keeps a batch's rows until it inserts
them: thrown away at once, each result's memory is reused for the next, which flatters
orjson (about 0.4x of the library's time instead of about 0.6x; item 26). It also reports the share
of states the ledger's encoder wrote itself rather than handing to the library's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.common import Row, interleaved, median, row

SECTION = "2c. Writing a prediction's events as stored rows"


def _events(count: int) -> tuple[Any, list[Any]]:
    """A ledger application in memory and the events of ``count`` recorded predictions."""
    from eventsourcing.domain import Aggregate

    from bench.throughput import capture_drafts
    from commands.handlers import DraftHandler
    from ledger.application import LedgerApplication
    from ledger.storage import parse_url

    drafts = capture_drafts(count + 1)
    app = LedgerApplication(parse_url("sqlite:///:memory:"))
    handler = DraftHandler(app, max_string_bytes=1_000_000)
    handler.mark_written(handler.build(drafts[0], set()))  # the program's version, once
    events = [
        event
        for draft in drafts[1:]
        for record in handler.build(draft, set())
        for event in (record.collect_events() if isinstance(record, Aggregate) else [record])
    ]
    return app, events


def _per_prediction(count: int, work: Callable[[], object]) -> float:
    """CPU µs per prediction that ``work`` (over ``count`` predictions) takes."""
    from ledger.collector import collector_paused

    with collector_paused():
        started = time.thread_time()
        work()
        return (time.thread_time() - started) / count * 1e6


def run(quick: bool) -> list[Row]:
    """Encode and map the same events with each encoder, alternating."""
    from eventsourcing.persistence import JSONTranscoder

    from ledger.transcoding import LedgerTranscoder

    count, rounds = (40, 3) if quick else (1000, 30)
    app, events = _events(count)
    mapper = app.mapper
    ledger_encoder = mapper.transcoder
    assert isinstance(ledger_encoder, LedgerTranscoder)
    library_encoder = JSONTranscoder()
    app.register_transcodings(library_encoder)

    def states() -> list[tuple[dict[str, Any], frozenset[str]]]:
        # The mapper's copy of each state, as it hands it to the encoder.
        out = []
        for event in events:
            state = dict(vars(event))
            del state["originator_id"], state["originator_version"]
            out.append((state, type(event).converted_fields))
        return out

    def encode_with_library() -> float:
        todo = states()
        return _per_prediction(count, lambda: [library_encoder.encode(s) for s, _ in todo])

    def encode_with_ledger() -> float:
        todo = states()
        return _per_prediction(
            count, lambda: [ledger_encoder.encode_event_state(s, c) for s, c in todo]
        )

    def map_with(encoder: JSONTranscoder) -> Callable[[], float]:
        def measure() -> float:
            mapper.transcoder = encoder
            try:
                return _per_prediction(count, lambda: [mapper.to_stored_event(e) for e in events])
            finally:
                mapper.transcoder = ledger_encoder

        return measure

    timed = interleaved(
        {
            "encode, library": encode_with_library,
            "encode, ledger": encode_with_ledger,
            "map, library": map_with(library_encoder),
            "map, ledger": map_with(ledger_encoder),
        },
        rounds,
    )
    fallbacks = _fallbacks(ledger_encoder, states())
    encode_library = median(timed["encode, library"])
    map_library = median(timed["map, library"])
    return [
        row(
            SECTION,
            "encoding a prediction's event states: library's JSON encoder",
            encode_library,
            "µs CPU/prediction",
        ),
        row(
            SECTION,
            "encoding a prediction's event states: ledger's (orjson, library's format)",
            median(timed["encode, ledger"]),
            "µs CPU/prediction",
            baseline=encode_library,
        ),
        row(
            SECTION,
            "mapping a prediction's events to stored rows: library's JSON encoder",
            map_library,
            "µs CPU/prediction",
        ),
        row(
            SECTION,
            "mapping a prediction's events to stored rows: ledger's encoder",
            median(timed["map, ledger"]),
            "µs CPU/prediction",
            baseline=map_library,
        ),
        row(
            SECTION,
            "event states the ledger's encoder wrote itself (not handed to the library's)",
            1 - fallbacks / len(events),
            "fraction",
            target="1.0",
        ),
    ]


def _fallbacks(encoder: Any, states: list[tuple[dict[str, Any], frozenset[str]]]) -> int:
    """How many of ``states`` the ledger's encoder hands to the library's encoder."""
    handed: list[object] = []
    library_encode = encoder.encode

    def counted(obj: Any) -> bytes:
        handed.append(obj)
        return bytes(library_encode(obj))

    encoder.encode = counted
    try:
        for state, converted in states:
            encoder.encode_event_state(state, converted)
    finally:
        del encoder.encode
    return len(handed)
