"""The PostgreSQL recorder that inserts batches as binary arrays keeps the library's
semantics: the same rows and ids, the same conflict error with nothing kept, and ids that
writers in different processes make visible in order, without gaps."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import uuid
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import sql

from ledger.application import LedgerApplication
from ledger.postgres_recorder import ColumnarApplicationRecorder
from ledger.storage import parse_url
from tests.helpers import open_factory


def awkward_events(originator_id: uuid.UUID, count: int) -> list[StoredEvent]:
    """Events whose topics and states need escaping in the library's text format."""
    states = [
        b"",
        b"\x00\x01\xff",
        b'{"a": "b,c", "q": "\\"(x)\\""}',
        "caf\u00e9 \u2603".encode(),
        bytes(range(256)) * 40,
    ]
    topics = ["ledger.domain:Prediction.Started", 'a,b "c" (d) \\e', "", "caf\u00e9 \u2603"]
    return [
        StoredEvent(
            originator_id=originator_id,
            originator_version=version,
            topic=topics[version % len(topics)],
            state=states[version % len(states)],
        )
        for version in range(1, count + 1)
    ]


def test_the_ledger_opens_postgres_with_the_columnar_recorder(postgres_url: str) -> None:
    app = LedgerApplication(parse_url(postgres_url))
    try:
        assert isinstance(app.recorder, ColumnarApplicationRecorder)
    finally:
        app.close()


def test_events_round_trip_as_the_library_recorder_stores_them(postgres_factory: Any) -> None:
    columnar = postgres_factory.application_recorder()
    library = PostgresApplicationRecorder(
        postgres_factory.datastore, events_table_name="library_events"
    )
    library.create_table()
    batches = [awkward_events(uuid.uuid4(), 12), awkward_events(uuid.uuid4(), 1)]
    batches.append(awkward_events(uuid.uuid4(), 3) + awkward_events(uuid.uuid4(), 4))

    for batch in batches:
        assert columnar.insert_events(batch) == library.insert_events(batch)
    assert columnar.insert_function_ready  # the inserts above went through the function

    def everything(recorder: PostgresApplicationRecorder) -> list[Notification]:
        return list(recorder.select_notifications(start=1, limit=1000))

    stored = everything(columnar)
    assert stored == everything(library)
    assert [n.id for n in stored] == list(range(1, 21))
    expected = [event for batch in batches for event in batch]
    assert [(n.originator_id, n.originator_version, n.topic, n.state) for n in stored] == [
        (e.originator_id, e.originator_version, e.topic, e.state) for e in expected
    ]
    first = batches[0][0].originator_id
    assert list(columnar.select_events(first)) == list(library.select_events(first))
    assert list(columnar.select_events(first)) == batches[0]


def test_a_version_conflict_raises_the_library_error_and_keeps_nothing_of_the_batch(
    postgres_factory: Any,
) -> None:
    recorder = postgres_factory.application_recorder()
    taken = uuid.uuid4()
    kept = awkward_events(taken, 2)
    assert recorder.insert_events(kept) == [1, 2]
    fresh = awkward_events(uuid.uuid4(), 5)
    clash = StoredEvent(originator_id=taken, originator_version=2, topic="t", state=b"x")

    with pytest.raises(IntegrityError):
        recorder.insert_events([*fresh, clash])

    assert recorder.max_notification_id() == 2
    assert recorder.select_events(fresh[0].originator_id) == []
    assert list(recorder.select_events(taken)) == kept
    # The recorder goes on working after the refused batch.
    assert len(recorder.insert_events(fresh)) == 5
    assert recorder.insert_function_ready  # all of it through the insert function


def write_batches(url: str, batches: int, size: int, queue: Any) -> None:
    """In a separate process: insert ``batches`` batches, report the ids each got."""
    factory = open_factory(url, create_table=False)
    try:
        recorder = factory.application_recorder()
        for _ in range(batches):
            queue.put(list(recorder.insert_events(awkward_events(uuid.uuid4(), size))))
        assert recorder.insert_function_ready  # found in the schema, and written through
    finally:
        factory.close()
        queue.put(None)


def test_writers_in_two_processes_make_ids_visible_in_order_without_gaps(
    postgres_factory: Any, postgres_url: str
) -> None:
    recorder = postgres_factory.application_recorder()
    batches, size = 40, 25
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    writers = [
        context.Process(target=write_batches, args=(postgres_url, batches, size, queue))
        for _ in range(2)
    ]
    # A reader tails the log as subscriptions and the Merkle log do: whatever it has
    # seen, it asks only for ids after the last one. An id that became visible after a
    # higher one would be skipped for good.
    tailed: list[int] = []
    writing = threading.Event()
    writing.set()

    def tail() -> None:
        while True:
            more = writing.is_set()
            start = tailed[-1] + 1 if tailed else 1
            tailed.extend(n.id for n in recorder.select_notifications(start=start, limit=500))
            if not more:
                return

    reader = threading.Thread(target=tail)
    reader.start()
    for writer in writers:
        writer.start()
    reported: list[list[int]] = []
    finished = 0
    while finished < len(writers):
        ids = queue.get(timeout=120)
        if ids is None:
            finished += 1
        else:
            reported.append(ids)
    for writer in writers:
        writer.join(timeout=30)
        assert writer.exitcode == 0
    writing.clear()
    reader.join(timeout=30)

    total = 2 * batches * size
    assert tailed == list(range(1, total + 1))
    assert len(reported) == 2 * batches
    for ids in reported:  # each batch's ids are one run, in the order of its events
        assert ids == list(range(ids[0], ids[0] + size))
    assert sorted(i for ids in reported for i in ids) == tailed


def _insert_functions(url: str) -> list[str]:
    """The ledger's own functions in the schema (the library adds one it never calls)."""
    schema = str(parse_url(url).schema)
    with psycopg.connect(url.split("?", maxsplit=1)[0]) as connection:
        rows = connection.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s AND p.proname LIKE 'dspyledger%%' ORDER BY p.proname",
            (schema,),
        ).fetchall()
    return [row[0] for row in rows]


def test_the_insert_function_is_made_once_and_writing_goes_on_without_it(
    postgres_factory: Any, postgres_url: str
) -> None:
    recorder = postgres_factory.application_recorder()
    assert recorder.insert_function_ready
    assert _insert_functions(postgres_url) == ["dspyledger_events_insert_v1"]
    again = open_factory(postgres_url)  # another process opening the same ledger
    try:
        assert again.application_recorder().insert_function_ready
    finally:
        again.close()
    assert _insert_functions(postgres_url) == ["dspyledger_events_insert_v1"]
    assert recorder.insert_events(awkward_events(uuid.uuid4(), 3)) == [1, 2, 3]

    # A ledger whose function was dropped (or could not be made) writes as before.
    schema = str(parse_url(postgres_url).schema)
    with psycopg.connect(postgres_url.split("?", maxsplit=1)[0], autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP FUNCTION {}.dspyledger_events_insert_v1").format(sql.Identifier(schema))
        )
    later = awkward_events(uuid.uuid4(), 4)
    assert recorder.insert_events(later) == [4, 5, 6, 7]
    assert not recorder.insert_function_ready
    assert list(recorder.select_events(later[0].originator_id)) == later
    assert recorder.insert_events(awkward_events(uuid.uuid4(), 1)) == [8]


def test_an_insert_waits_for_the_table_lock_and_notifies_listeners(
    postgres_factory: Any, postgres_url: str
) -> None:
    recorder = postgres_factory.application_recorder()
    assert recorder.insert_function_ready
    schema = str(parse_url(postgres_url).schema)
    server = postgres_url.split("?", maxsplit=1)[0]
    inserted: list[list[int]] = []
    with psycopg.connect(server, autocommit=True) as listener, psycopg.connect(server) as holder:
        listener.execute("LISTEN dspyledger_events")
        # A transaction that has inserted and not yet committed holds ROW EXCLUSIVE: a
        # writer that takes the ordering lock (EXCLUSIVE) waits for it to end, so ids
        # never become visible out of order; a bare INSERT would not wait.
        holder.execute(
            sql.SQL("LOCK TABLE {}.dspyledger_events IN ROW EXCLUSIVE MODE").format(
                sql.Identifier(schema)
            )
        )
        writer = threading.Thread(
            target=lambda: inserted.append(
                list(recorder.insert_events(awkward_events(uuid.uuid4(), 2)))
            )
        )
        writer.start()
        writer.join(timeout=0.5)
        assert writer.is_alive() and not inserted  # it waits for the lock's holder
        holder.commit()
        writer.join(timeout=30)
        assert inserted == [[1, 2]]
        notices = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in notices] == ["dspyledger_events"]


def test_inserting_leaves_every_pooled_connection_in_the_mode_the_pool_gave_it(
    postgres_factory: Any,
) -> None:
    # The library's pool makes its connections autocommit, and code that reads through
    # the pool without a transaction block (the views' feed, verify's scan) relies on
    # it: on a connection that is not, a read opens a transaction that is left open.
    recorder = postgres_factory.application_recorder()
    assert recorder.insert_function_ready
    for _ in range(3):
        recorder.insert_events(awkward_events(uuid.uuid4(), 2))
    pool = postgres_factory.datastore.pool
    with contextlib.ExitStack() as held:
        # Hold every connection the pool has at once, so that each is looked at.
        connections = [
            held.enter_context(postgres_factory.datastore.get_connection())
            for _ in range(pool.get_stats()["pool_size"])
        ]
        assert all(conn.autocommit for conn in connections)
        for conn in connections:
            conn.execute("SELECT 1").fetchall()
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
