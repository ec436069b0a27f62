"""Projection runners killed at any moment, and followers on PostgreSQL, lose nothing.

A real subprocess catches the views up in small batches and is SIGKILLed at random
moments, then restarted; at the end every view equals a rebuild from zero. On
PostgreSQL, ``dspy-ledger projections run`` follows the ledger live through the
library's LISTEN/NOTIFY subscription while this test records more, and goes on following
when the server drops its connections.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import dspy_ledger
from bench.postgres_pool import drop_connections
from bench.synthetic import generate
from dspy_ledger import views
from projections.runner import VIEW_NAMES, open_memory_view, open_view, rebuild
from tests.conftest import POSTGRES_URL
from tests.test_views import view_rows

ROOT = Path(__file__).resolve().parent.parent
CATCH_UP = """
import sys
from dspy_ledger.ledger import Ledger
from projections.runner import VIEW_NAMES, catch_up, open_view
ledger = Ledger(sys.argv[1], create=False)
projections = [open_view(ledger.app, name) for name in VIEW_NAMES]
for projection in projections:
    catch_up(projection, batch_size=40, progress=lambda n: print("batch", flush=True))
ledger.close()
"""


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "DSPY_LEDGER_CHECKPOINT_EVERY": "0"}


def _assert_views_equal_a_rebuild(url: str) -> None:
    with dspy_ledger.open(url, actor="tester") as ledger:
        last = ledger.app.last_position()
        for name in VIEW_NAMES:
            kept = open_view(ledger.app, name)
            assert kept.view.position() == last, name
            fresh = open_memory_view(ledger.app, name)
            rebuild(fresh)
            assert view_rows(kept) == view_rows(fresh), name


def test_a_runner_killed_at_random_moments_ends_equal_to_a_rebuild(ledger_url: str) -> None:
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        generate(ledger, 1_500, days=5)
        views.set_price(ledger, "openai/gpt-4o", input_usd_per_1m=2.5, output_usd_per_1m=10)
        last = ledger.app.last_position()
    rng = random.Random(1234)
    seen: list[tuple[int, ...]] = []
    for _ in range(8):
        runner = subprocess.Popen(
            [sys.executable, "-c", CATCH_UP, ledger_url],
            env=_environment(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert runner.stdout is not None
        # Let it commit a random number of batches, then kill it at a random moment
        # (often inside the next batch's transaction).
        for _ in range(rng.randint(1, 60)):
            if not runner.stdout.readline():
                break
        time.sleep(rng.uniform(0.0, 0.05))
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        runner.stdout.close()
        with dspy_ledger.open(ledger_url, actor="tester") as ledger:
            seen.append(tuple(open_view(ledger.app, n).view.position() for n in VIEW_NAMES))
    # Kills landed while views were part way through the ledger.
    assert sum(any(0 < p < last for p in positions) for positions in seen) >= 3, seen
    final = subprocess.run(
        [sys.executable, "-c", CATCH_UP, ledger_url], env=_environment(), cwd=ROOT, check=False
    )
    assert final.returncode == 0
    _assert_views_equal_a_rebuild(ledger_url)


def test_projections_run_follows_postgresql_live(postgres_url: str) -> None:
    with dspy_ledger.open(postgres_url, actor="tester") as ledger:
        generate(ledger, 100, days=2)
    with _follower(postgres_url) as follower, dspy_ledger.open(postgres_url) as ledger:
        for _ in range(3):
            time.sleep(1.0)
            generate(ledger, 50, days=2, seed=random.randrange(10**6))
        _wait_until_the_views_reach(ledger.app.last_position(), ledger, follower)
    _assert_views_equal_a_rebuild(postgres_url)


def test_projections_run_follows_sqlite_by_polling(sqlite_url: str) -> None:
    with dspy_ledger.open(sqlite_url, actor="tester") as ledger:
        generate(ledger, 50, days=2)
    with _follower(sqlite_url) as follower, dspy_ledger.open(sqlite_url) as ledger:
        _wait_until_the_views_reach(ledger.app.last_position(), ledger, follower)
        generate(ledger, 50, days=2, seed=11)
        _wait_until_the_views_reach(ledger.app.last_position(), ledger, follower)
    _assert_views_equal_a_rebuild(sqlite_url)


def test_projections_run_keeps_following_when_postgresql_drops_its_connections(
    postgres_url: str,
) -> None:
    # As a restart or a failover does: the follower's listening connection and every
    # pooled one are dropped on the server, while events go on being written.
    with dspy_ledger.open(postgres_url, actor="tester") as ledger:
        generate(ledger, 50, days=2)
    name = f"dspy-ledger-follower-{uuid.uuid4().hex[:8]}"
    with _follower(postgres_url, name) as follower, dspy_ledger.open(postgres_url) as ledger:
        _wait_until_the_views_reach(ledger.app.last_position(), ledger, follower)
        _wait_until_listening(name, follower)
        drop_connections(POSTGRES_URL, name)
        generate(ledger, 50, days=2, seed=7)
        _wait_until_the_views_reach(ledger.app.last_position(), ledger, follower)
    assert follower.stderr is not None
    said = follower.stderr.read()
    assert "dspy-ledger: lost the ledger's database (" in said
    assert "dspy-ledger: the ledger's database answers again; following." in said
    assert "Traceback" not in said
    _assert_views_equal_a_rebuild(postgres_url)


@contextlib.contextmanager
def _follower(url: str, application_name: str = "") -> Iterator[subprocess.Popen[str]]:
    """``dspy-ledger projections run`` following ``url`` (its connections named
    ``application_name`` on the server), stopped with Ctrl-C at the end."""
    environment = _environment()
    if application_name:
        environment["PGAPPNAME"] = application_name
    follower = subprocess.Popen(
        [sys.executable, "-m", "dspy_ledger.cli", "projections", "run", "--db", url],
        env=environment,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield follower
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            follower.wait(timeout=20)
        except subprocess.TimeoutExpired:
            follower.kill()
            follower.wait()


def _wait_until_the_views_reach(
    last: int, ledger: dspy_ledger.Ledger, follower: subprocess.Popen[str]
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        positions = {s.view: s.position for s in _status(ledger)}
        if all(p == last for p in positions.values()):
            return
        assert follower.poll() is None, follower.stderr.read() if follower.stderr else ""
        time.sleep(0.2)
    raise AssertionError(positions)


def _wait_until_listening(application_name: str, follower: subprocess.Popen[str]) -> None:
    """Wait until the follower's subscription has its LISTEN in place on the server."""
    deadline = time.monotonic() + 30
    with psycopg.connect(POSTGRES_URL, autocommit=True) as observer:
        while not observer.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN%%'",
            [application_name],
        ).fetchone():
            assert time.monotonic() < deadline, "the follower never listened"
            assert follower.poll() is None, follower.stderr.read() if follower.stderr else ""
            time.sleep(0.1)


def _status(ledger: dspy_ledger.Ledger) -> list[views.ViewStatus]:
    # Read the tracking records only: views_status would catch the views up itself.
    return [
        views.ViewStatus(
            view=name,
            position=open_view(ledger.app, name).view.position(),
            ledger_position=0,
            behind=0,
            skipped_events={},
        )
        for name in VIEW_NAMES
    ]


@pytest.fixture(autouse=True)
def _no_auto_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """No automatic checkpoints in this module's ledgers, nor (through ``_environment``)
    in its subprocesses': the tests compare views, not logs."""
    monkeypatch.setenv("DSPY_LEDGER_CHECKPOINT_EVERY", "0")
