"""Personal data per data subject: encrypted at rest, erased by forgetting, redacted.

Run on SQLite and PostgreSQL. The erasure tests read the database's bytes themselves:
the SQLite file (after ``forget`` compacts it) and PostgreSQL's heap pages (through
``pageinspect``), looking for the personal text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import psycopg
import pytest
from dspy.utils.dummies import DummyLM

import dspy_ledger
from dspy_ledger import Ledger
from dspy_ledger.views import update_views
from ledger.integrity.checkpoint import parse_checkpoint
from ledger.privacy import ERASED, generate_master_key
from ledger.storage import parse_url
from projections.runner import open_view
from tests.conftest import POSTGRES_URL
from tests.helpers import events_of, only

QUESTION = "Where does Jane Roe live?"
ANSWER = "Jane Roe lives at 12 Elm Street"
LABEL = "Jane Roe confirmed by phone"
ROOT = Path(__file__).parents[1]


@pytest.fixture
def master_key() -> str:
    return generate_master_key()


@pytest.fixture
def ledger(ledger_url: str, master_key: str) -> Iterator[Ledger]:
    opened = dspy_ledger.open(ledger_url, actor="tester", master_key=master_key)
    opened.instrument()
    yield opened
    opened.close()


def ask(ledger: Ledger, subject: str | None, question: str = QUESTION, answer: str = ANSWER) -> str:
    """Record one prediction (for ``subject``, if given); return its stream id."""
    before = {e.stream_id for e in events_of(ledger) if e.type == "PredictionStarted"}
    with dspy.context(lm=DummyLM([{"answer": answer}])):
        if subject is None:
            dspy.Predict("question -> answer")(question=question)
        else:
            with ledger.acting_for(subject):
                dspy.Predict("question -> answer")(question=question)
    after = {e.stream_id for e in events_of(ledger) if e.type == "PredictionStarted"}
    (new,) = after - before
    return new


def stored_states(ledger: Ledger) -> bytes:
    """Every stored event's state, as the store holds it, joined."""
    return b"\n".join(bytes(n.state) for n in ledger.app.notifications())


def test_a_subjects_personal_fields_are_ciphertext_at_rest_and_plain_when_read(
    ledger: Ledger,
) -> None:
    ask(ledger, "subject-123")
    ask(ledger, None, question="What is the capital of France?", answer="Paris")
    raw = stored_states(ledger)
    assert b"Jane Roe" not in raw  # neither inputs, messages nor outputs
    assert b"What is the capital of France?" in raw  # no subject: stored as before
    assert b'"model":"dummy"' in raw.replace(b" ", b"")  # facts stay readable at rest

    events = events_of(ledger)
    started = only(events, "PredictionStarted")
    assert started[0]["inputs"] == {"question": QUESTION}
    assert started[0]["subject"] == "subject-123" and started[1]["subject"] is None
    assert only(events, "PredictionCompleted")[0]["outputs"] == {"answer": ANSWER}
    executed = only(events, "ModelExecuted")[0]
    assert QUESTION in str(executed["messages"]) and ANSWER in str(executed["outputs"])
    assert "erased" not in executed


def test_forgetting_erases_every_read_but_keeps_facts_views_and_the_merkle_log(
    ledger: Ledger,
) -> None:
    forgotten = ask(ledger, "subject-123")
    kept = ask(ledger, "subject-456")
    ledger.record_feedback(forgotten, score=1.0, label=LABEL)
    ledger.record_feedback(kept, score=0.0, label="Other person's label")
    trusted = parse_checkpoint(ledger.checkpoint().text)
    leaves_before = [leaf.hash for leaf in ledger.merkle_log.iter_leaves()]
    update_views(ledger)
    cost_before = ledger_cost(ledger)

    report = ledger.forget("subject-123", reason="GDPR art. 17 request", by="dpo")

    assert report.keys_destroyed == 1 and report.streams == [forgotten]
    events = events_of(ledger)
    mine = [e for e in events if e.stream_id == forgotten]
    assert [e.type for e in mine] == [
        "PredictionStarted",
        "ModelExecuted",
        "PredictionCompleted",
        "FeedbackRecorded",
    ]
    assert all(e.data["erased"] is True for e in mine)
    assert mine[0].data["inputs"] == ERASED
    assert mine[1].data["messages"] == ERASED == mine[1].data["outputs"]
    assert mine[2].data["outputs"] == ERASED and mine[3].data["label"] == ERASED
    # Non-personal facts still read: model, tokens, cost, latency, the score.
    assert mine[1].data["model"] == "dummy" and "usage" in mine[1].data
    assert mine[3].data["score"] == 1.0 and mine[2].data["latency_ms"] >= 0
    # The other subject is untouched.
    other = [e for e in events if e.stream_id == kept and e.type == "PredictionStarted"]
    assert other[0].data["inputs"] == {"question": QUESTION}
    (erasure,) = only(events, "SubjectForgotten")
    assert erasure["subject_id"] == "subject-123"
    assert erasure["reason"] == "GDPR art. 17 request" and erasure["streams"] == [forgotten]
    assert [e.actor for e in events if e.type == "SubjectForgotten"] == ["dpo"]

    # The Merkle log hashes ciphertext: erasure changed no leaf, and the log extends
    # the checkpoint taken before it.
    assert [leaf.hash for leaf in ledger.merkle_log.iter_leaves()][: len(leaves_before)] == (
        leaves_before
    )
    assert ledger.verify(against=trusted).ok
    # Views: the label copy is purged, cost still counts the erased prediction.
    labels = open_view(ledger.app, "accuracy").view.rows("SELECT label FROM {acc_feedback}")
    assert sorted(r["label"] for r in labels) == sorted([ERASED, "Other person's label"])
    assert ledger_cost(ledger) == cost_before
    rebuilt = update_views(ledger, "accuracy", from_zero=True)
    assert rebuilt["accuracy"] == len(events)
    labels = open_view(ledger.app, "accuracy").view.rows("SELECT label FROM {acc_feedback}")
    assert LABEL not in {r["label"] for r in labels}


def ledger_cost(ledger: Ledger) -> list[tuple[Any, ...]]:
    rows = open_view(ledger.app, "cost").view.rows("SELECT * FROM {cost_calls} ORDER BY position")
    return [tuple(sorted(r.items())) for r in rows]


def test_erased_text_is_gone_from_the_sqlite_files_bytes(sqlite_url: str, master_key: str) -> None:
    path = Path(str(parse_url(sqlite_url).sqlite_path))
    with dspy_ledger.open(sqlite_url, actor="tester", master_key=master_key) as ledger:
        ledger.instrument()
        prediction = ask(ledger, "subject-123")
        ledger.record_feedback(prediction, score=1.0, label=LABEL)
        update_views(ledger)  # the accuracy view keeps a plaintext copy of the label
        keys_table = ledger.app.subject_keys.table_names[0]
        with ledger.app.subject_keys.datastore.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT wrapped FROM {keys_table}")
            wrapped_key = bytes(cursor.fetchone()[0])
        assert LABEL.encode() in file_bytes(path)  # the test can see plaintext if it is there
        assert wrapped_key in file_bytes(path)

        report = ledger.forget("subject-123", reason="erasure request")

    assert report.store_compacted
    data = file_bytes(path)
    assert LABEL.encode() not in data
    assert b"Jane Roe" not in data and wrapped_key not in data
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    with dspy_ledger.open(sqlite_url, master_key=master_key) as reopened:
        assert reopened.verify().ok


def file_bytes(path: Path) -> bytes:
    """The database file and its write-ahead log, as bytes on disk."""
    wal = Path(f"{path}-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_erased_text_is_gone_from_postgres_pages(postgres_url: str, master_key: str) -> None:
    schema = parse_url(postgres_url).schema
    # Another test may create the extension at the same moment.
    with (
        psycopg.connect(POSTGRES_URL, autocommit=True) as admin,
        contextlib.suppress(psycopg.errors.UniqueViolation),
    ):
        admin.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
    with dspy_ledger.open(postgres_url, actor="tester", master_key=master_key) as ledger:
        ledger.instrument()
        prediction = ask(ledger, "subject-123")
        ledger.record_feedback(prediction, score=1.0, label=LABEL)
        update_views(ledger)
        assert LABEL.encode() in postgres_pages(str(schema))

        ledger.forget("subject-123", reason="erasure request")

        pages = postgres_pages(str(schema))
        assert LABEL.encode() not in pages and b"Jane Roe" not in pages
        assert ledger.verify().ok


def postgres_pages(schema: str) -> bytes:
    """The raw heap pages (dead rows included) of every table in the schema and TOAST."""
    out = []
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        relations = connection.execute(
            "SELECT c.oid::regclass::text, pg_relation_size(c.oid) / 8192 FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r' "
            "UNION SELECT t.oid::regclass::text, pg_relation_size(t.oid) / 8192 FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_class t "
            "ON t.oid = c.reltoastrelid WHERE n.nspname = %s",
            (schema, schema),
        ).fetchall()
        assert len(relations) > 10  # events, keys, views, Merkle log and their TOAST tables
        for name, blocks in relations:
            for block in range(int(blocks)):
                page = connection.execute("SELECT get_raw_page(%s, %s)", (name, block)).fetchone()
                out.append(bytes(page[0]) if page else b"")
    return b"".join(out)
