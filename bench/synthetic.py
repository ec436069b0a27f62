"""A synthetic ledger of any size, written fast: events straight into large transactions.

Each prediction is three events, as the recorder writes them: ``PredictionStarted``,
one ``ModelExecuted`` (a short chat, usage, cost) and ``PredictionCompleted``. States
are encoded exactly as the library's JSON transcoder encodes them (tagged datetimes
and UUIDs), and inserted through the library recorder (``insert_events``) in batches
of many thousand events per transaction, so a ledger of 1,000,000 predictions takes
a minute or two rather than hours of recording through DSPy.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from eventsourcing.persistence import StoredEvent

from dspy_ledger.ledger import Ledger

MODELS = ("openai/gpt-4o-mini", "openai/gpt-4o", "anthropic/claude-3-5-haiku", "local/llama-3-8b")
ACTORS = ("alice", "bob", "carol", "dave", "ci")
CONTEXTS = ("production", "production", "production", "evaluation:bench")
START = datetime(2025, 1, 1, tzinfo=UTC)
_TOPIC = "ledger.domain.prediction:Prediction"
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _time(value: datetime) -> dict[str, str]:
    return {"_type_": "datetime_iso", "_data_": value.isoformat()}


def _uuid(value: uuid.UUID) -> dict[str, str]:
    return {"_type_": "uuid_hex", "_data_": value.hex}


def _envelope(at: datetime, actor: str) -> dict[str, object]:
    return {"timestamp": _time(at), "actor": actor, "trace_id": None, "span_id": None}


def prediction_events(
    rng: random.Random, versions: list[uuid.UUID], days: int
) -> list[StoredEvent]:
    """The three stored events of one synthetic prediction."""
    pid = uuid.uuid4()
    at = START + timedelta(seconds=rng.randrange(days * 86_400), microseconds=rng.randrange(10**6))
    actor = rng.choice(ACTORS)
    model = rng.choice(MODELS)
    version = rng.choice(versions)
    question = f"What is {rng.randrange(1000)} plus {rng.randrange(1000)}?"
    prompt, completion = rng.randrange(80, 400), rng.randrange(5, 60)
    started = {
        **_envelope(at, actor),
        "originator_topic": _TOPIC,
        "program_version_id": _uuid(version),
        "program_name": "Predict",
        "inputs": {"question": question},
        "context": rng.choice(CONTEXTS),
        "payload_notes": {},
    }
    executed = {
        **_envelope(at + timedelta(milliseconds=1), actor),
        "call_id": uuid.uuid4().hex,
        "parent_call_id": None,
        "model": model,
        "provider": model.partition("/")[0],
        "request": {"temperature": 0.0, "max_tokens": 256},
        "messages": [
            {"role": "system", "content": "Answer the question with a number."},
            {"role": "user", "content": question},
        ],
        "outputs": ["[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
        "cost_usd": (prompt * 0.15 + completion * 0.6) / 1e6,
        "cached_cost_usd": None,
        "latency_ms": 250.0,
        "cache_hit": rng.random() < 0.05,
        "response_model": model,
        "error": None,
        "payload_notes": {},
    }
    completed = {
        **_envelope(at + timedelta(milliseconds=260), actor),
        "outputs": {"answer": "42"},
        "call_tree": {"kind": "module", "name": "Predict", "children": []},
        "latency_ms": 260.0,
        "payload_notes": {},
    }
    return [
        StoredEvent(pid, 1, f"{_TOPIC}.PredictionStarted", _encode(started).encode()),
        StoredEvent(pid, 2, f"{_TOPIC}.ModelExecuted", _encode(executed).encode()),
        StoredEvent(pid, 3, f"{_TOPIC}.PredictionCompleted", _encode(completed).encode()),
    ]


def generate(
    ledger: Ledger,
    predictions: int,
    *,
    days: int = 90,
    seed: int = 7,
    batch: int = 20_000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append ``predictions`` synthetic predictions to ``ledger``; returns events written."""
    rng = random.Random(seed)
    versions = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(6)]
    written = 0
    pending: list[StoredEvent] = []
    for i in range(predictions):
        pending.extend(prediction_events(rng, versions, days))
        if len(pending) >= batch or i == predictions - 1:
            ledger.app.recorder.insert_events(pending)
            written += len(pending)
            if progress is not None:
                progress(len(pending))
            pending = []
    return written
