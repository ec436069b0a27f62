"""Fixtures shared by the suite: ledgers on SQLite and on PostgreSQL.

PostgreSQL is found at ``DSPY_LEDGER_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Each test gets a schema of its own,
dropped afterwards. Without a server the PostgreSQL variants skip with the reason,
except under ``CI=true``, where a missing server fails the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dspy_ledger.simulated_model import SimulatedModelServer, register_simulated_prices
from ledger.application import ensure_postgres_schema
from ledger.storage import parse_url
from tests.helpers import open_factory

POSTGRES_URL = os.environ.get(
    "DSPY_LEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_unavailable_reason() -> str | None:
    """None if the test server answers, else why not."""
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except psycopg.Error as error:
        return f"PostgreSQL at {POSTGRES_URL} is unavailable: {error}"


def require_postgres() -> None:
    """Skip (fail under CI=true) when the PostgreSQL test server is unavailable."""
    reason = postgres_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL ledger URL in a fresh schema, dropped after the test."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{POSTGRES_URL}?schema={schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


@pytest.fixture
def postgres_factory(postgres_url: str) -> Iterator[Any]:
    """The eventsourcing factory of a PostgreSQL ledger in a fresh schema, closed after."""
    ensure_postgres_schema(parse_url(postgres_url))
    opened = open_factory(postgres_url)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A SQLite ledger URL in the test's temporary folder."""
    return f"sqlite:///{tmp_path}/ledger.db"


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """The same test on each backend: the backend-independent suite."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedModelServer]:
    """The simulated OpenAI-compatible model server on loopback, with its prices known."""
    register_simulated_prices(include_litellm=False)
    with SimulatedModelServer() as running:
        yield running
