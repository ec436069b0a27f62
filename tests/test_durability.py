"""Nothing acknowledged is lost; secrets never reach storage; failures are loud."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import dspy
import psycopg
import pytest
from dspy.utils.dummies import DummyLM
from psycopg import sql

import dspy_ledger
from commands.writer_process import LINGER_ENV_VAR
from dspy_ledger import RecordingError
from dspy_ledger.simulated_model import SimulatedModelServer
from ledger.storage import parse_url
from tests.helpers import events_of, only, questions_asked, run_script, whole_predictions

SECRET = "sk-test-" + "7f3a9c" * 6


def simulated_lm(server: SimulatedModelServer, *, cache: bool) -> dspy.LM:
    return dspy.LM(
        "openai/sim-qa-small",
        api_base=server.api_base,
        api_key=SECRET,
        cache=cache,
        num_retries=0,
    )


def raw_store_bytes(url: str) -> bytes:
    """Everything the store holds, as raw bytes (file or table dump)."""
    store = parse_url(url)
    if store.backend == "sqlite":
        assert store.sqlite_path
        return b"".join(
            Path(p).read_bytes()
            for p in (store.sqlite_path, store.sqlite_path + "-wal")
            if Path(p).exists()
        )
    with psycopg.connect(url.split("?", maxsplit=1)[0]) as connection:
        rows = connection.execute(
            sql.SQL("SELECT topic, state FROM {}.dspyledger_events").format(
                sql.Identifier(str(store.schema))
            )
        ).fetchall()
    return b"".join(topic.encode() + bytes(state) for topic, state in rows)


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_api_keys_never_reach_storage(
    ledger_url: str, server: SimulatedModelServer, durability: str
) -> None:
    ledger = dspy_ledger.open(ledger_url, durability=durability)  # type: ignore[arg-type]
    ledger.instrument()
    lm = simulated_lm(server, cache=False)
    with dspy.context(lm=lm):
        dspy.ChainOfThought("question -> answer")(question="What is the capital of France?")
        lm("a direct call outside any module")
    ledger.close()
    raw = raw_store_bytes(ledger_url)
    assert b"sim-qa-small" in raw  # the store is readable as raw bytes...
    assert SECRET.encode() not in raw  # ...and the key is nowhere in it
    reopened = dspy_ledger.open(ledger_url)
    executed = only(events_of(reopened), "ModelExecuted")
    reopened.close()
    assert len(executed) == 2
    assert all(e["payload_notes"]["secrets_removed"] == ["api_key"] for e in executed)


def test_cache_hits_are_recorded_with_zero_cost(
    sqlite_url: str, server: SimulatedModelServer
) -> None:
    ledger = dspy_ledger.open(sqlite_url)
    ledger.instrument()
    question = f"What is the capital of France? ({uuid.uuid4().hex})"  # unseen by the cache
    lm = simulated_lm(server, cache=True)
    with dspy.context(lm=lm):
        program = dspy.Predict("question -> answer")
        first = program(question=question)
        second = program(question=question)
    ledger.close()
    assert first.answer == second.answer
    reopened = dspy_ledger.open(sqlite_url)
    miss, hit = only(events_of(reopened), "ModelExecuted")
    reopened.close()
    assert miss["cache_hit"] is False and miss["cost_usd"] > 0
    assert miss["usage"]["prompt_tokens"] > 0
    assert hit["cache_hit"] is True and hit["cost_usd"] == 0.0
    assert hit["cached_cost_usd"] == miss["cost_usd"]  # what the hit saved
    assert hit["outputs"] == miss["outputs"]


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_concurrent_writers_lose_nothing(ledger_url: str, durability: str) -> None:
    ledger = dspy_ledger.open(ledger_url, durability=durability)  # type: ignore[arg-type]
    ledger.instrument()
    lm = DummyLM([{"answer": "ok"}] * 200)
    errors: list[BaseException] = []
    # Parsed once, here: CPython 3.11's ast.parse is not safe to call from several
    # threads at once ("AST constructor recursion depth mismatch"), and DSPy parses a
    # signature string with it.
    signature = dspy.Signature("question -> answer")

    def worker(n: int) -> None:
        try:
            with dspy.context(lm=lm), ledger.acting_as(f"user-{n}"):
                program = dspy.Predict(signature)
                for i in range(25):
                    program(question=f"{n}-{i}")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ledger.close()
    assert not errors
    reopened = dspy_ledger.open(ledger_url)
    events = events_of(reopened)
    reopened.close()
    started = only(events, "PredictionStarted")
    assert sorted(d["inputs"]["question"] for d in started) == sorted(
        f"{n}-{i}" for n in range(4) for i in range(25)
    )
    assert len(only(events, "PredictionCompleted")) == 100
    # Four threads raced to register the one program version: it exists once.
    assert len(only(events, "ProgramVersionRegistered")) == 1
    # Positions only grow (PostgreSQL may skip ids of rolled-back inserts).
    positions = [e.position for e in events]
    assert positions == sorted(set(positions))


def _rename_events_table(url: str, *, away: bool) -> None:
    schema = str(parse_url(url).schema)
    old, new = ("dspyledger_events", "dspyledger_events_away")
    if not away:
        old, new = new, old
    with psycopg.connect(url.split("?", maxsplit=1)[0], autocommit=True) as connection:
        connection.execute(
            sql.SQL("ALTER TABLE {}.{} RENAME TO {}").format(
                sql.Identifier(schema), sql.Identifier(old), sql.Identifier(new)
            )
        )


def test_async_keeps_retrying_while_the_store_is_away(postgres_url: str) -> None:
    ledger = dspy_ledger.open(postgres_url, durability="async")
    ledger.instrument()
    program = dspy.Predict("question -> answer")
    with dspy.context(lm=DummyLM([{"answer": "ok"}] * 20)):
        program(question="before")
        ledger.flush()
        _rename_events_table(postgres_url, away=True)
        for i in range(5):
            program(question=f"while away {i}")  # the program never notices
        with pytest.raises(RecordingError) as not_yet:
            ledger.flush(timeout=1.0)
        assert not_yet.value.pending == 5
        _rename_events_table(postgres_url, away=False)
        ledger.flush(timeout=30)
    ledger.close()
    reopened = dspy_ledger.open(postgres_url)
    questions = questions_asked(reopened)
    reopened.close()
    assert questions == ["before"] + [f"while away {i}" for i in range(5)]


def test_sync_raises_a_clear_error_when_the_store_is_away(postgres_url: str) -> None:
    ledger = dspy_ledger.open(postgres_url)
    ledger.instrument()
    program = dspy.Predict("question -> answer")
    with dspy.context(lm=DummyLM([{"answer": "ok"}] * 5)):
        program(question="before")
        _rename_events_table(postgres_url, away=True)
        try:
            with pytest.raises(RecordingError, match="was not recorded"):
                program(question="while away")
        finally:
            _rename_events_table(postgres_url, away=False)
        program(question="after")
    ledger.close()
    reopened = dspy_ledger.open(postgres_url)
    questions = questions_asked(reopened)
    reopened.close()
    assert questions == ["before", "after"]


#: The start of a script that records asynchronously into the ledger at ``sys.argv[1]``.
RECORDING_ASYNC = """
import os, signal, sys
import dspy, dspy_ledger
from dspy.utils.dummies import DummyLM
ledger = dspy_ledger.open(sys.argv[1], durability="async")
ledger.instrument()
program = dspy.Predict("question -> answer")
"""

KILLED_WRITER = (
    RECORDING_ASYNC
    + """
with dspy.context(lm=DummyLM([{"answer": "ok"}] * 400)):
    for i in range(300):
        program(question=str(i))
    ledger.flush()
    print("flushed", flush=True)
    for i in range(300, 400):
        program(question=str(i))  # not flushed: may or may not survive
os.kill(os.getpid(), signal.SIGKILL)
"""
)


def test_kill_9_after_flush_loses_nothing_that_flush_acknowledged(ledger_url: str) -> None:
    done = run_script(KILLED_WRITER, ledger_url)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == "flushed"
    assert set(range(300)) <= set(whole_predictions(ledger_url))


KILLED_BEFORE_FLUSH = (
    RECORDING_ASYNC
    + """
with dspy.context(lm=DummyLM([{"answer": "ok"}] * 200)):
    for i in range(200):
        program(question=str(i))
reader = dspy_ledger.open(sys.argv[1])
stored = reader.stats().by_event_type.get("PredictionCompleted", 0)
print("answered; stored before the kill:", stored, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no flush, no close
"""
)


def test_a_program_killed_without_flush_loses_nothing_its_writer_process_received(
    ledger_url: str,
) -> None:
    # An async call returns once its draft is in the pipe to the writer process, which
    # runs in a session of its own: when the program dies, the writer reads the pipe to
    # its end and commits everything in it. Its linger is set to five seconds, so that it
    # commits nothing before the program dies: what is stored, it stored after.
    done = run_script(KILLED_BEFORE_FLUSH, ledger_url, **{LINGER_ENV_VAR: "5000"})
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == "answered; stored before the kill: 0"
    deadline = time.monotonic() + 60
    questions = whole_predictions(ledger_url)
    while len(questions) < 200 and time.monotonic() < deadline:
        time.sleep(0.2)  # the orphaned writer process commits on its own time
        questions = whole_predictions(ledger_url)
    assert questions == list(range(200))


def test_closing_reports_writes_that_could_not_be_made(postgres_url: str) -> None:
    ledger = dspy_ledger.open(postgres_url, durability="async")
    ledger.instrument()
    with dspy.context(lm=DummyLM([{"answer": "ok"}] * 3)):
        dspy.Predict("question -> answer")(question="first")
        ledger.flush()
        _rename_events_table(postgres_url, away=True)
        dspy.Predict("question -> answer")(question="lost")
    try:
        with pytest.raises(RecordingError) as lost:
            ledger.close(timeout=1.0)
        assert lost.value.pending == 1
        assert "not yet written" in str(lost.value)
    finally:
        _rename_events_table(postgres_url, away=False)


def test_export_lines_have_the_documented_fields(sqlite_url: str) -> None:
    ledger = dspy_ledger.open(sqlite_url, actor="exporter")
    ledger.instrument()
    with dspy.context(lm=DummyLM([{"answer": "ok"}])):
        dspy.Predict("question -> answer")(question="q")
    ledger.close()
    out = subprocess.run(
        [sys.executable, "-m", "dspy_ledger.cli", "export", "--db", sqlite_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["position"] for line in lines] == [1, 2, 3, 4]
    assert set(lines[0]) == {
        "position",
        "stream_id",
        "stream_type",
        "version",
        "type",
        "timestamp",
        "actor",
        "trace_id",
        "span_id",
        "data",
    }
    assert lines[1]["type"] == "PredictionStarted" and lines[1]["actor"] == "exporter"


OPEN_AND_RECORD = """
import sys, dspy, dspy_ledger
from dspy.utils.dummies import DummyLM
ledger = dspy_ledger.open(sys.argv[1], actor=sys.argv[2])
with ledger.instrument(), dspy.context(lm=DummyLM([{"answer": sys.argv[2]}])):
    dspy.Predict("question -> answer")(question="who?")
ledger.close()
"""


def test_many_processes_can_open_one_new_postgres_ledger_at_once(postgres_url: str) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_RECORD, postgres_url, f"process-{n}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]
    failures = [p.communicate(timeout=120)[1] for p in processes if p.wait(timeout=120) != 0]
    assert failures == []
    with dspy_ledger.open(postgres_url) as ledger:
        completed = [e for e in ledger.events() if e.type == "PredictionCompleted"]
    assert sorted(e.actor for e in completed) == [f"process-{n}" for n in range(6)]
