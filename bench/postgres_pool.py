"""Section 2b: checking pooled PostgreSQL connections, per commit and after a restart.

The ledger's pool (:class:`ledger.postgres_pool.LivenessCheckingPool`, which looks at a
connection's socket and asks the server only when something is waiting there) against the
library's pool with its pre-ping (psycopg_pool's check: an empty query per checkout), side
by side in one process, the same recorder on both:

- **per commit**: three events (one synchronous prediction's) inserted through the
  ledger's insert function, wall-clock and client CPU time per commit, interleaved rounds;
- **after a restart**: every connection in the pool is dropped on the server
  (``pg_terminate_backend``, as a restart or a failover does), then the time until the next
  insert is committed (the event store retries a dropped connection after 0.2 s) and until
  a direct use of the pool, which does not retry (the governance counters, the key store),
  is given a working connection. A direct use that fails is counted and timed to its error.

Measured only where PostgreSQL answers. The quick run times the ledger's pool only after a
restart: the library's takes five to ten seconds there.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from bench.common import Row, backends, fresh_store, interleaved, median, postgres_base_url, row

SECTION = "2b. PostgreSQL: checking pooled connections"
STATE = os.urandom(800)


def drop_connections(url: str, application_name: str) -> None:
    """Drop every server process of the connections named ``application_name``, as a
    restart or a failover would, and return once the server has ended them."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as observer:
        pids = [
            pid
            for (pid,) in observer.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                [application_name],
            )
        ]
    terminate_backends(url, pids)


def terminate_backends(url: str, pids: list[int]) -> None:
    """Drop the server processes ``pids`` and return once the server has ended them."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as observer:
        observer.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
        deadline = time.monotonic() + 10
        while observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]
        ).fetchone() != (0,):
            if time.monotonic() > deadline:
                msg = f"the server did not end processes {pids} in 10 s"
                raise RuntimeError(msg)
            time.sleep(0.02)


def _factory(url: str, *, pre_ping: bool) -> Any:
    from eventsourcing.persistence import InfrastructureFactory
    from eventsourcing.postgres import PostgresFactory
    from eventsourcing.utils import Environment

    from ledger.application import LedgerApplication, ensure_postgres_schema
    from ledger.postgres_recorder import ColumnarApplicationRecorder
    from ledger.storage import parse_url

    class PrePingFactory(PostgresFactory):
        """The library's factory and pool, checking each connection with a query."""

        application_recorder_class = ColumnarApplicationRecorder

    store = parse_url(url)
    ensure_postgres_schema(store)
    env = store.eventsourcing_env()
    env["CREATE_TABLE"] = "y"
    if pre_ping:
        env["POSTGRES_PRE_PING"] = "y"
        factory: Any = PrePingFactory(Environment(LedgerApplication.name, env))
    else:
        factory = InfrastructureFactory.construct(Environment(LedgerApplication.name, env))
    # Named, so that a restart can be played on this pool's connections and no others.
    factory.datastore.pool.kwargs["application_name"] = _application_name(factory)
    return factory


def _application_name(factory: Any) -> str:
    return f"dspy-ledger-bench-{id(factory.datastore.pool)}"


def _three_events() -> list[Any]:
    from eventsourcing.persistence import StoredEvent

    originator = uuid.uuid4()
    return [StoredEvent(originator, version, "t", STATE) for version in (1, 2, 3)]


class _CommitRounds:
    """Rounds of three-event commits through one recorder: each round returns its wall
    time per commit and keeps its client CPU time per commit in ``cpu``."""

    def __init__(self, recorder: Any, count: int) -> None:
        self.recorder = recorder
        self.count = count
        self.cpu: list[float] = []

    def __call__(self) -> float:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(self.count):
            self.recorder.insert_events(_three_events())
        self.cpu.append((time.process_time() - cpu) / self.count * 1e6)
        return (time.perf_counter() - wall) / self.count * 1e6


def _after_restart(factory: Any, recorder: Any, base: str) -> tuple[float, float, bool]:
    """Seconds to the next insert and to a direct use after the pool's connections were
    dropped, and whether the direct use was given a working connection."""
    from eventsourcing.persistence import OperationalError

    datastore = factory.datastore
    name = _application_name(factory)

    def restart() -> None:
        datastore.pool.check()  # the connections a restart before left are replaced
        datastore.pool.wait()
        recorder.insert_events(_three_events())
        drop_connections(base, name)

    restart()
    start = time.perf_counter()
    recorder.insert_events(_three_events())
    insert_seconds = time.perf_counter() - start
    restart()
    start = time.perf_counter()
    try:
        with datastore.transaction(commit=False) as cursor:
            cursor.execute("SELECT 1")
        given = True
    except OperationalError:
        given = False
    return insert_seconds, time.perf_counter() - start, given


def run(quick: bool) -> list[Row]:
    """Time commits and restarts through both pools; report the ledger's against the library's."""
    base = postgres_base_url()
    if "postgres" not in backends() or base is None:
        print("bench: PostgreSQL does not answer; section 2b skipped.")
        return []
    rounds, count = (2, 30) if quick else (7, 300)
    rows: list[Row] = []
    with fresh_store("postgres") as ledger_url, fresh_store("postgres") as library_url:
        ledger_factory = _factory(ledger_url, pre_ping=False)
        library_factory = _factory(library_url, pre_ping=True)
        recorders = {
            "ledger": ledger_factory.application_recorder(),
            "library": library_factory.application_recorder(),
        }
        variants = {name: _CommitRounds(recorder, count) for name, recorder in recorders.items()}
        walls = interleaved(dict(variants), rounds)
        cpus = {name: median(rounds_of.cpu) for name, rounds_of in variants.items()}
        rows.append(
            row(
                SECTION,
                "commit of 3 events, ledger's pool (pre-ping pool is the baseline)",
                median(walls["ledger"]),
                "µs",
                baseline=median(walls["library"]),
            )
        )
        rows.append(
            row(
                SECTION,
                "commit of 3 events, client CPU, ledger's pool (pre-ping pool is the baseline)",
                cpus["ledger"],
                "µs",
                baseline=cpus["library"],
            )
        )
        factories = {"ledger": ledger_factory, "library": library_factory}
        restarts = {
            key: [
                _after_restart(factories[key], recorders[key], base)
                for _ in range(1 if quick else 3)
            ]
            for key in (("ledger",) if quick else ("ledger", "library"))
        }
        rows.extend(_restart_rows(restarts))
        ledger_factory.close()
        library_factory.close()
    return rows


def _restart_rows(restarts: dict[str, list[tuple[float, float, bool]]]) -> list[Row]:
    """Median times after a restart, the ledger's pool against the library's if measured."""
    labels = {"ledger": "ledger's pool", "library": "library's pre-ping pool"}
    rows: list[Row] = []
    for key, measured in restarts.items():
        library = restarts.get("library") if key == "ledger" else None
        given = sum(outcome[2] for outcome in measured)
        for index, what in ((0, "next insert"), (1, "direct use")):
            detail = f" ({given} of {len(measured)} given a connection)" if index else ""
            rows.append(
                row(
                    SECTION,
                    f"after a restart: {what}, {labels[key]}{detail}",
                    median([outcome[index] for outcome in measured]) * 1000,
                    "ms",
                    baseline=median([o[index] for o in library]) * 1000 if library else None,
                )
            )
    return rows
