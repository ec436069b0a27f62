"""Personal data per data subject: encrypted at rest, erased by forgetting, redacted.

Run on SQLite and PostgreSQL. The erasure tests read the database's bytes themselves:
the SQLite file (after ``forget`` compacts it) and PostgreSQL's heap pages (through
``pageinspect``), looking for the personal text.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import dspy
import psycopg
import pytest
from dspy.utils.dummies import DummyLM

import dspy_ledger
from commands.redaction import CARD, luhn_valid
from dspy_ledger import Ledger
from dspy_ledger.views import update_views
from ledger.errors import (
    InvalidInputError,
    MasterKeyError,
    PrivacyError,
    SubjectAlreadyForgottenError,
    UnknownSubjectError,
)
from ledger.integrity.checkpoint import parse_checkpoint
from ledger.privacy import ERASED, generate_master_key, is_erased
from ledger.storage import parse_url
from projections.runner import open_view
from tests.conftest import POSTGRES_URL
from tests.helpers import events_of, only, questions_asked

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
    assert all(is_erased(e) for e in ledger.app.stream_events(UUID(forgotten)))  # for replay
    assert not any(is_erased(e) for e in ledger.app.stream_events(UUID(kept)))
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
    # Empty personal fields were never sealed: an erased call that had no error still
    # has none, so a cost view rebuilt after erasure counts exactly what it counted before.
    assert mine[1].data["error"] is None
    update_views(ledger, "cost", from_zero=True)
    assert ledger_cost(ledger) == cost_before


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


WRITER = textwrap.dedent(
    """
    import sys, dspy
    from dspy.utils.dummies import DummyLM
    import dspy_ledger
    url, subject, question = sys.argv[1:4]
    with dspy_ledger.open(url, actor="worker") as ledger:
        ledger.instrument()
        with dspy.context(lm=DummyLM([{"answer": "ok"}])), ledger.acting_for(subject):
            for _ in range(3):
                dspy.Predict("question -> answer")(question=question)
    """
)


def run_python(code: str, *args: str, master_key: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DSPY_LEDGER_MASTER_KEY": master_key}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_processes_sharing_postgres_share_one_key_per_subject(
    postgres_url: str, master_key: str
) -> None:
    # The ledger's tables exist first: concurrent CREATE TABLE on a new schema is not
    # what this test is about.
    dspy_ledger.open(postgres_url, master_key=master_key).close()
    writers = [
        run_python(WRITER, postgres_url, "shared-subject", f"q{n}", master_key=master_key)
        for n in range(3)
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    with dspy_ledger.open(postgres_url, master_key=master_key) as ledger:
        status = ledger.subject_status("shared-subject")
        assert status.live_keys == 1 and len(status.streams) == 9
        questions = questions_asked(ledger)
        assert sorted(questions) == sorted(f"q{n}" for n in range(3) for _ in range(3))
        ledger.forget("shared-subject", reason="erasure request")
    reader = subprocess.run(
        [sys.executable, "-m", "dspy_ledger.cli", "export", "--db", postgres_url],
        env={**os.environ, "PYTHONPATH": str(ROOT), "DSPY_LEDGER_MASTER_KEY": master_key},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert reader.returncode == 0, reader.stderr
    assert '"question":"q' not in reader.stdout
    assert reader.stdout.count('"inputs":"[erased]"') == 9


def cli(*args: str, master_key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPY_LEDGER_MASTER")}
    if master_key is not None:
        env["DSPY_LEDGER_MASTER_KEY"] = master_key
    return subprocess.run(
        [sys.executable, "-m", "dspy_ledger.cli", *args],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_sentence(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_bad_input_is_one_sentence_and_changes_nothing(sqlite_url: str, master_key: str) -> None:
    with dspy_ledger.open(sqlite_url, actor="tester", master_key=master_key) as ledger:
        ledger.instrument()
        ask(ledger, "subject-123")
        keys = ledger.app.subject_keys
        with keys.datastore.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT * FROM {keys.table_names[0]}")
            key_rows = [tuple(row) for row in cursor.fetchall()]
        events_before = len(events_of(ledger))
    wrong = generate_master_key()

    with pytest.raises(MasterKeyError, match="not the one"):
        dspy_ledger.open(sqlite_url, master_key=wrong)
    done = cli("export", "--db", sqlite_url, master_key=wrong)
    assert done.returncode == 4 and "not the one" in one_sentence(done)
    done = cli("export", "--db", sqlite_url, master_key=None)
    assert done.returncode == 4 and "master key" in one_sentence(done)
    done = cli("forget", "nobody", "--reason", "x", "--db", sqlite_url, master_key=master_key)
    assert done.returncode == 2 and "No data subject 'nobody'" in one_sentence(done)
    done = cli("forget", "subject-123", "--db", sqlite_url, master_key=master_key)
    assert done.returncode == 2 and "reason" in one_sentence(done)

    with dspy_ledger.open(sqlite_url, master_key=master_key) as ledger:
        # The wrong keys changed nothing: same key rows, same events, still readable.
        keys = ledger.app.subject_keys
        with keys.datastore.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT * FROM {keys.table_names[0]}")
            assert [tuple(row) for row in cursor.fetchall()] == key_rows
        assert len(events_of(ledger)) == events_before
        assert only(events_of(ledger), "PredictionStarted")[0]["inputs"]["question"] == QUESTION
        with pytest.raises(InvalidInputError):
            ledger.forget(" ", reason="x")

    done = cli("subject", "subject-123", "--json", "--db", sqlite_url, master_key=None)
    assert json.loads(done.stdout)["live_keys"] == 1, done.stderr
    forget = ("forget", "subject-123", "--db", sqlite_url, "--reason")
    done = cli(*forget, "request", master_key=None)
    assert done.returncode == 4 and "master key" in one_sentence(done)
    done = cli(*forget, "request", "--json", master_key=master_key)
    assert done.returncode == 0 and json.loads(done.stdout)["keys_destroyed"] == 1, done.stderr
    done = cli(*forget, "again", master_key=master_key)
    assert done.returncode == 2 and "already forgotten" in one_sentence(done)
    with dspy_ledger.open(sqlite_url, master_key=master_key) as ledger:
        with pytest.raises(SubjectAlreadyForgottenError):
            ledger.forget("subject-123", reason="again")
        with pytest.raises(UnknownSubjectError):
            ledger.forget("Subject-123", reason="ids are case-sensitive")


def test_recording_for_a_subject_needs_a_master_key(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DSPY_LEDGER_MASTER_KEY", raising=False)
    monkeypatch.delenv("DSPY_LEDGER_MASTER_KEY_FILE", raising=False)
    with dspy_ledger.open(sqlite_url) as ledger, pytest.raises(MasterKeyError, match="master"):
        ledger.acting_for("subject-123")
    with pytest.raises(MasterKeyError, match="32 bytes"):
        dspy_ledger.open(sqlite_url, master_key="too short")
    key_file = tmp_path / "master.key"
    key_file.write_text(generate_master_key() + "\n")
    monkeypatch.setenv("DSPY_LEDGER_MASTER_KEY_FILE", str(key_file))
    with dspy_ledger.open(sqlite_url) as ledger:
        ledger.instrument()
        ask(ledger, "subject-123")
        assert only(events_of(ledger), "PredictionStarted")[0]["inputs"]["question"] == QUESTION
    monkeypatch.setenv("DSPY_LEDGER_MASTER_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(MasterKeyError, match="Cannot read the master key file"):
        dspy_ledger.open(sqlite_url)


def test_a_forgotten_subject_recorded_again_gets_a_fresh_key(
    ledger: Ledger, master_key: str
) -> None:
    first = ask(ledger, "subject-123")
    ledger.forget("subject-123", reason="first request", compact=False)
    second = ask(ledger, "subject-123")
    started = {e.stream_id: e.data for e in events_of(ledger) if e.type == "PredictionStarted"}
    assert started[first]["inputs"] == ERASED
    assert started[second]["inputs"] == {"question": QUESTION}
    report = ledger.forget("subject-123", reason="second request", compact=False)
    assert report.keys_destroyed == 1 and report.streams == sorted([first, second])
    assert only(events_of(ledger), "PredictionStarted")[-1]["inputs"] == ERASED
    assert ledger.subject_status("subject-123").destroyed_keys == 2


def test_rotating_the_master_key_rewraps_every_subject_key(
    sqlite_url: str, master_key: str, tmp_path: Path
) -> None:
    with dspy_ledger.open(sqlite_url, actor="tester", master_key=master_key) as ledger:
        ledger.instrument()
        ask(ledger, "subject-1")
        ask(ledger, "subject-2")
    new_key = generate_master_key()
    (tmp_path / "new.key").write_text(new_key)
    done = cli(
        "keys",
        "rotate",
        "--new-key-file",
        str(tmp_path / "new.key"),
        "--db",
        sqlite_url,
        master_key=master_key,
    )
    assert done.returncode == 0 and "Rewrapped 2 subject key(s)" in done.stdout, done.stderr
    with pytest.raises(MasterKeyError):
        dspy_ledger.open(sqlite_url, master_key=master_key)
    with dspy_ledger.open(sqlite_url, master_key=new_key) as ledger:
        inputs = [d["inputs"] for d in only(events_of(ledger), "PredictionStarted")]
        assert inputs == [{"question": QUESTION}] * 2


def ask_many(ledger: Ledger, subject: str, count: int) -> None:
    """Record ``count`` predictions for ``subject`` and wait until they are committed."""
    with dspy.context(lm=DummyLM([{"answer": ANSWER}] * count)), ledger.acting_for(subject):
        for _ in range(count):
            dspy.Predict("question -> answer")(question=QUESTION)
    ledger.flush()


def test_async_durability_encrypts_too(ledger_url: str, master_key: str) -> None:
    with dspy_ledger.open(ledger_url, durability="async", master_key=master_key) as ledger:
        ledger.instrument()
        ask_many(ledger, "s-9", 5)
        assert b"Jane Roe" not in stored_states(ledger)
        assert len(ledger.subject_status("s-9").streams) == 5


def redacted_question(ledger: Ledger, question: str) -> dict[str, Any]:
    """Record one prediction without a subject; return its PredictionStarted data."""
    with dspy.context(lm=DummyLM([{"answer": "noted"}])):
        dspy.Predict("question -> answer")(question=question)
    return only(events_of(ledger), "PredictionStarted")[-1]


def test_secrets_are_redacted_before_storage_whatever_the_configuration(
    ledger_url: str,
) -> None:
    with dspy_ledger.open(ledger_url, redactors=[]) as ledger:
        ledger.instrument()
        started = redacted_question(
            ledger,
            "Reach jane@example.com; Authorization: Bearer abcDEF123456789xyz, sk-"
            "proj0123456789abcdefABCDEF",
        )
        raw = stored_states(ledger)
    question = started["inputs"]["question"]
    assert "jane@example.com" in question  # personal-data redactors are off by default
    assert "abcDEF123456789xyz" not in question and "proj0123456789" not in question
    assert question.count("[secret removed]") == 2
    assert started["payload_notes"] == {"$.inputs.question": "redacted: secrets"}
    assert b"abcDEF123456789xyz" not in raw and b"proj0123456789" not in raw


def test_chosen_redactors_rewrite_and_flag_personal_data(ledger_url: str) -> None:
    def employee_ids(text: str) -> str:
        return text.replace("EMP-0042", "[employee]")

    with dspy_ledger.open(ledger_url, redactors=["email", "phone", "card", employee_ids]) as ledger:
        ledger.instrument()
        started = redacted_question(
            ledger,
            "I am EMP-0042, mail jane.roe@example.co.uk or call +44 20 7946 0958; "
            "card 4111 1111 1111 1111, order 4111 1111 1111 1112, on 2024-01-15",
        )
        raw = stored_states(ledger)
    assert started["inputs"]["question"] == (
        "I am [employee], mail [email] or call [phone]; "
        "card [card], order 4111 1111 1111 1112, on 2024-01-15"
    )
    assert started["payload_notes"]["$.inputs.question"] == (
        "redacted: email, card, phone, employee_ids"
    )
    assert b"jane.roe@example.co.uk" not in raw and b"7946 0958" not in raw


def test_an_unknown_redactor_is_a_clear_error(sqlite_url: str) -> None:
    with pytest.raises(InvalidInputError, match="built-in redactors are card, email"):
        dspy_ledger.open(sqlite_url, redactors=["emails"])


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4111 1111 1111 1111", True),
        ("5500-0000-0000-0004", True),
        ("378282246310005", True),
        ("4111 1111 1111 1112", False),
        ("1234567890", False),
    ],
)
def test_card_numbers_must_pass_the_luhn_check(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid
    assert (CARD(f"pay with {number}") == "pay with [card]") is valid


def test_a_sealed_blob_moved_to_another_event_does_not_decrypt(
    sqlite_url: str, master_key: str
) -> None:
    with dspy_ledger.open(sqlite_url, actor="tester", master_key=master_key) as ledger:
        ledger.instrument()
        first = ask(ledger, "subject-123")
        ask(ledger, "subject-123", question="Another question about Jane Roe")
        ledger.checkpoint()
    path = str(parse_url(sqlite_url).sqlite_path)
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        # Give the first prediction's start event the second one's sealed inputs.
        connection.execute(
            "UPDATE stored_events SET state = (SELECT state FROM stored_events "
            "WHERE originator_id != ? AND originator_version = 1 AND topic LIKE '%Started' "
            "ORDER BY rowid DESC LIMIT 1) WHERE originator_id = ? AND originator_version = 1",
            (UUID(first).hex, UUID(first).hex),
        )
        assert connection.total_changes == 1
    with dspy_ledger.open(sqlite_url, master_key=master_key) as ledger:
        with pytest.raises(PrivacyError, match="altered"):
            ledger.stream(first)
        assert not ledger.verify().ok


def test_acting_as_with_a_subject_encrypts_like_acting_for(ledger: Ledger) -> None:
    with (
        dspy.context(lm=DummyLM([{"answer": ANSWER}])),
        ledger.acting_as("agent-7", subject="s-42"),
    ):
        dspy.Predict("question -> answer")(question=QUESTION)
    assert b"Jane Roe" not in stored_states(ledger)
    [started] = [e for e in events_of(ledger) if e.type == "PredictionStarted"]
    assert started.actor == "agent-7"
    assert started.data["inputs"] == {"question": QUESTION}
    assert len(ledger.subject_status("s-42").streams) == 1


def test_redactors_leave_the_call_trees_own_ids_alone_and_rewrite_what_calls_carry(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A random call id holds a Luhn-valid run of 13 to 19 digits about once in 600
    # (32 hex digits); here every one does. The tree must still name its calls, and a
    # card number in what a tool was given must still be redacted.
    ids = [f"4111111111111111a{n:x}".ljust(32, "b") for n in range(1, 100)]
    assert all(CARD(call_id) != call_id for call_id in ids)
    monkeypatch.setattr("commands.hooks.new_call_id", iter(ids).__next__)

    def lookup(account: str) -> str:
        """Look an account up."""
        return f"account {account} is open"

    class Agent(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.answer = dspy.Predict("question -> answer")
            self.tool = dspy.Tool(lookup)

        def forward(self, question: str) -> dspy.Prediction:
            self.tool(account="4111 1111 1111 1111")
            return self.answer(question=question)

    with dspy_ledger.open(ledger_url, redactors=["card"]) as ledger, ledger.instrument():
        with dspy.context(lm=DummyLM([{"answer": "fine"}])):
            Agent()(question="how is my account?")
        ledger.flush()
        completed = only(events_of(ledger), "PredictionCompleted")[-1]
    tree = completed["call_tree"]
    nodes = [tree, *tree["children"]]
    assert [node["kind"] for node in nodes] == ["module", "tool", "module"]
    assert all(node["call_id"].startswith("4111111111111111") for node in nodes)
    tool = tree["children"][0]
    assert tool["arguments"] == {"account": "[card]"}
    assert tool["result"] == "account [card] is open"
    notes = completed["payload_notes"]
    assert notes["$.call_tree.children[0].arguments.account"] == "redacted: card"
    assert not any(path.endswith(".call_id") for path in notes)


DEMO = "dspy_ledger.demo:build_program"
PUBLIC_QUESTION = "What is the capital of France?"


def reasoned(answer: str) -> dict[str, str]:
    """An answer of the demo's ChainOfThought program."""
    return {"reasoning": "Looked it up.", "answer": answer}


def test_a_replay_keeps_a_subjects_data_sealed_and_forgetting_erases_its_copies(
    ledger_url: str, master_key: str
) -> None:
    from dspy_ledger.demo import build_program

    with dspy_ledger.open(ledger_url, actor="tester", master_key=master_key) as ledger:
        ledger.instrument()
        program = build_program()
        with dspy.context(lm=DummyLM([reasoned(ANSWER), reasoned("Paris")])):
            with ledger.acting_for("subject-123"):
                program(question=QUESTION)
            program(question=PUBLIC_QUESTION)
        report = ledger.replay(DEMO)
        assert [r.verdict for r in report.results] == ["identical", "identical"]
        # The replay's own prediction of the subject's, and its verdict, are sealed too.
        raw = stored_states(ledger)
        assert b"Jane Roe" not in raw and PUBLIC_QUESTION.encode() in raw
        context = f"replay:{report.replay_id}"
        copies = [
            s for s in only(events_of(ledger), "PredictionStarted") if s["context"] == context
        ]
        assert [(s["inputs"], s["subject"]) for s in copies] == [
            ({"question": QUESTION}, "subject-123"),
            ({"question": PUBLIC_QUESTION}, None),
        ]
        verdicts = only(events_of(ledger), "PredictionReplayed")
        assert [v["subject"] for v in verdicts] == ["subject-123", None]

        ledger.forget("subject-123", reason="erasure request", by="dpo")
        events = events_of(ledger)
        copies = [s for s in only(events, "PredictionStarted") if s["context"] == context]
        assert copies[0]["inputs"] == ERASED  # the replay's copy is erased with the original
        assert copies[1]["inputs"] == {"question": PUBLIC_QUESTION}
        verdicts = only(events, "PredictionReplayed")
        assert verdicts[0]["diff"] == ERASED and verdicts[1]["diff"] == []

        # An erased prediction has nothing to replay: it says so, and the rest goes on,
        # and the forgotten subject gets no key again.
        again = ledger.replay(DEMO)
        status = ledger.subject_status("subject-123")
    assert status.live_keys == 0
    outcome = {r.verdict: r.error for r in again.results}
    assert set(outcome) == {"failed", "identical"}
    assert "erased" in str(outcome["failed"]) and "forgotten" in str(outcome["failed"])


class DecliningLM(DummyLM):  # type: ignore[misc]
    """An LM whose every call fails with a card number in its message."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("card 4111 1111 1111 1111 was declined")


def test_a_live_replay_compares_and_stores_what_it_saw_as_the_ledger_redacts_it(
    ledger_url: str,
) -> None:
    from dspy_ledger.demo import build_program

    card = "4111 1111 1111 1111"
    with dspy_ledger.open(ledger_url, redactors=["card"]) as ledger:
        ledger.instrument()
        with dspy.context(lm=DummyLM([reasoned(f"Paid with card {card}")])):
            build_program()(question="How did I pay?")
        # The same answer, live: identical to the record, which holds it redacted.
        same = ledger.replay(DEMO, lm=DummyLM([reasoned(f"Paid with card {card}")]))
        # Another answer, live: different, and the diff shows it without the number. (A
        # different card alone would read the same: the record holds "[card]" only.)
        other = ledger.replay(DEMO, lm=DummyLM([reasoned("Refunded to card 5500 0000 0000 0004")]))
        # A failure whose message holds a card number: stored redacted.
        failed = ledger.replay(DEMO, lm=DecliningLM([]))
        raw = stored_states(ledger)
        verdicts = only(events_of(ledger), "PredictionReplayed")
    assert [r.verdict for r in same.results] == ["identical"]
    [changed] = other.results
    assert changed.verdict == "different"
    assert [(d.field, d.recorded, d.replayed) for d in changed.diff] == [
        ("answer", "Paid with card [card]", "Refunded to card [card]")
    ]
    assert verdicts[1]["diff"] == [
        {
            "field": "answer",
            "recorded": "Paid with card [card]",
            "replayed": "Refunded to card [card]",
        }
    ]
    assert [r.verdict for r in failed.results] == ["failed"]
    assert "[card]" in str(verdicts[2]["error"])
    assert b"4111 1111 1111 1111" not in raw and b"5500 0000 0000 0004" not in raw


def test_a_batch_notes_its_subjects_streams_in_one_commit(
    sqlite_url: str, master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer thread builds in this process, where the key store's commits are seen.
    monkeypatch.setenv("DSPY_LEDGER_WRITER", "thread")
    from ledger.privacy.keystore import SubjectKeys

    commits: list[bool] = []
    cursor = SubjectKeys._cursor

    def counted(self: SubjectKeys, *, commit: bool) -> Any:
        commits.append(commit)
        return cursor(self, commit=commit)

    monkeypatch.setattr(SubjectKeys, "_cursor", counted)
    with dspy_ledger.open(sqlite_url, durability="async", master_key=master_key) as ledger:
        ledger.instrument()
        ask_many(ledger, "s-7", 20)
        streams = ledger.subject_status("s-7").streams
        batches = ledger._writer.stats.batches
    assert len(streams) == 20  # every stream the subject's events are sealed in is noted
    # One commit for the subject's key, and one per batch for its streams (not 20).
    assert commits.count(True) <= 1 + batches < 20
