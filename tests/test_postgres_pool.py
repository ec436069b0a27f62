"""The ledger's PostgreSQL pool hands out only working connections, without asking the
server about each one: a healthy connection goes out with no query sent, and connections
the server dropped are replaced before any caller, retrying or not, is given one."""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from bench.postgres_pool import terminate_backends
from ledger.application import ensure_postgres_schema, postgres_connection
from ledger.postgres_pool import LivenessCheckingPool, connection_is_usable
from ledger.storage import parse_url
from tests.conftest import POSTGRES_URL
from tests.helpers import open_factory


@contextlib.contextmanager
def every_pooled_connection(datastore: Any) -> Iterator[list[Any]]:
    """Hold each of the connections the pool keeps open, all at once."""
    pool = datastore.pool
    pool.open(wait=True)
    with contextlib.ExitStack() as held:
        yield [held.enter_context(datastore.get_connection()) for _ in range(pool.min_size)]


def last_queries(pids: list[int]) -> dict[int, str]:
    """The last statement each server process ran, as the server reports it."""
    with psycopg.connect(POSTGRES_URL) as observer:
        rows = observer.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]
        ).fetchall()
    return dict(rows)


def test_the_ledger_pool_hands_out_a_healthy_connection_without_a_query_to_the_server(
    postgres_factory: Any,
) -> None:
    datastore = postgres_factory.datastore
    assert isinstance(datastore.pool, LivenessCheckingPool)
    # Configured as the library's pool was, from the ledger's settings.
    pool = datastore.pool
    assert (pool.min_size, pool.max_size, pool.timeout) == (5, 15, 5.0)
    marks = {}
    with every_pooled_connection(datastore) as connections:
        for conn in connections:
            marks[conn.info.backend_pid] = f"SELECT 'marked {conn.info.backend_pid}'"
            conn.execute(marks[conn.info.backend_pid])
    with every_pooled_connection(datastore) as connections:
        handed_out = sorted(conn.info.backend_pid for conn in connections)
    assert handed_out == sorted(marks)
    # A check by query (an empty one, as psycopg_pool's) would have replaced each mark.
    assert last_queries(handed_out) == marks


def test_connections_the_server_dropped_are_replaced_before_a_caller_that_does_not_retry_gets_one(
    postgres_factory: Any,
) -> None:
    datastore = postgres_factory.datastore
    with every_pooled_connection(datastore) as connections:
        dropped = [conn.info.backend_pid for conn in connections]
    terminate_backends(POSTGRES_URL, dropped)
    # A direct use of the pool, as the governance counters and the key store make, has
    # no retry of its own: the first connection it is given must work.
    with datastore.transaction(commit=False) as cursor:
        cursor.execute("SELECT pg_backend_pid() AS pid")
        row = cursor.fetchone()
    assert row is not None
    assert row["pid"] not in dropped


def test_a_connection_with_news_on_its_socket_is_asked_and_kept_if_it_answers() -> None:
    with (
        psycopg.connect(POSTGRES_URL, autocommit=True) as listener,
        psycopg.connect(POSTGRES_URL, autocommit=True) as notifier,
    ):
        listener.execute("LISTEN ledger_pool_test")
        notifier.execute("NOTIFY ledger_pool_test")
        deadline = time.monotonic() + 10
        while not select.select([listener.fileno()], [], [], 0.05)[0]:
            assert time.monotonic() < deadline, "the notification never arrived"
        assert connection_is_usable(listener)
        # The check asked the server, which read the waiting notification too.
        assert not select.select([listener.fileno()], [], [], 0)[0]
        assert listener.execute("SELECT 1").fetchone() == (1,)


def test_a_closed_or_dropped_connection_is_not_usable() -> None:
    closed = psycopg.connect(POSTGRES_URL)
    closed.close()
    assert not connection_is_usable(closed)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as dropped:
        terminate_backends(POSTGRES_URL, [dropped.info.backend_pid])
        assert not connection_is_usable(dropped)


def test_the_ledgers_connections_name_themselves_to_the_server(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # So that an operator finds them in pg_stat_activity; PGAPPNAME, libpq's own
    # setting, names them otherwise.
    monkeypatch.delenv("PGAPPNAME", raising=False)
    named = {}
    for setting in (None, "billing-service"):
        if setting is not None:
            monkeypatch.setenv("PGAPPNAME", setting)
        ensure_postgres_schema(parse_url(postgres_url))
        factory = open_factory(postgres_url)
        try:
            with every_pooled_connection(factory.datastore) as connections:
                named[setting] = {c.info.parameter_status("application_name") for c in connections}
        finally:
            factory.close()
        with postgres_connection(parse_url(postgres_url)) as direct:
            named[setting].add(direct.info.parameter_status("application_name"))
    assert named == {None: {"dspy-ledger"}, "billing-service": {"billing-service"}}
