"""What the benchmark sections share: the row format, the workload, timing and stores."""

from __future__ import annotations

import functools
import itertools
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypedDict


class Row(TypedDict):
    """One measured figure, as every section module returns it."""

    section: str
    name: str
    value: float
    unit: str
    baseline: float | None
    ratio: float | None
    target: str | None


def row(
    section: str,
    name: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    target: str | None = None,
) -> Row:
    """A result row; the ratio is value / baseline when there is a baseline."""
    ratio = value / baseline if baseline else None
    return Row(
        section=section,
        name=name,
        value=value,
        unit=unit,
        baseline=baseline,
        ratio=ratio,
        target=target,
    )


ANSWER = {"reasoning": "Two and two make four.", "answer": "4"}


def configure_dspy() -> Any:
    """Configure DSPy with a ``DummyLM`` that answers forever; return the LM."""
    import dspy
    from dspy.utils.dummies import DummyLM

    lm = DummyLM([ANSWER])
    lm.answers = itertools.repeat(ANSWER)  # never runs out, and is safe across threads
    dspy.configure(lm=lm)
    return lm


class NoOpRecorder:
    """Receives every hook and does nothing: what the hooks alone cost."""

    def on_module_start(self, *_: Any) -> None:
        """Do nothing."""

    def on_module_end(self, *_: Any) -> None:
        """Do nothing."""

    def on_lm_start(self, *_: Any) -> None:
        """Do nothing."""

    def on_lm_end(self, *_: Any) -> None:
        """Do nothing."""


def _discard(draft: object) -> None:
    """Throw a draft away."""


def bench_recorder(sink: Callable[[object], None] = _discard) -> Any:
    """The ledger's recorder with no writer behind it: every finished draft goes to
    ``sink`` (thrown away by default), so it measures what recording costs before
    anything is stored."""
    from commands.recorder import LedgerRecorder

    return LedgerRecorder(sink, default_actor="bench")


def make_program() -> Any:
    """The workload every section measures: a ``ChainOfThought`` answering a question."""
    import dspy

    return dspy.ChainOfThought("question -> answer")


def predict_many(program: Any, count: int, offset: int = 0) -> float:
    """Run ``count`` predictions; return the seconds they took."""
    started = time.perf_counter()
    for i in range(offset, offset + count):
        program(question=f"What is 2 + 2? (#{i})")
    return time.perf_counter() - started


def print_rows(rows: list[Row], value_format: str) -> None:
    """Print a section's rows, one per line: name, value (``value_format``), ratio."""
    width = max((len(item["name"]) for item in rows), default=0)
    for item in rows:
        ratio = f"  {item['ratio']:.3f}x" if item["ratio"] is not None else ""
        print(f"{item['name']:{width}s} {item['value']:{value_format}} {item['unit']}{ratio}")


def usable_cpus() -> int:
    """How many CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def median(values: list[float]) -> float:
    """The median (robust to the noise of a shared machine)."""
    return float(statistics.median(values))


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every variant once per round, in turn, and collect what each returns.

    Interleaving spreads the machine's drift (other processes, CPU frequency) evenly
    over all variants, so their ratios stay meaningful on a noisy machine.
    """
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, measure in variants.items():
            results[name].append(measure())
    return results


POSTGRES_ENV = "DSPY_LEDGER_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES = os.environ.get(
    "DSPY_LEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_url() -> str:
    """The PostgreSQL server the run would measure against (answering or not)."""
    return os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)


def postgres_base_url() -> str | None:
    """The PostgreSQL server to measure against, or None if none answers."""
    url = postgres_url()
    return url if postgres_refusal(url) is None else None


@functools.cache
def postgres_refusal(url: str) -> str | None:
    """Why the server at ``url`` cannot be measured, or None if it answers.

    Asked once per URL and process: every section asks, and a server that does not
    answer would otherwise cost each of them the connect timeout.
    """
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3):
            pass
    except Exception as error:  # any reason at all: the run measures SQLite only
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


@contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """Set one environment variable for the block, then put it back as it was."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def compression(setting: str) -> AbstractContextManager[None]:
    """Store the events of ledgers opened in the block compressed (``zlib``) or not."""
    from ledger.compression import COMPRESSION_ENV_VAR

    return environment(COMPRESSION_ENV_VAR, setting)


#: How a ledger's drafts are written: ``async`` through the writer process (the default),
#: ``async, writer thread`` in the program's process (``DSPY_LEDGER_WRITER=thread``).
WRITERS = ("async", "async, writer thread", "sync")


def writer_name(mode: str, backend: str) -> str:
    """The figure's name for a writer mode on a store: ``async/sqlite, writer thread``."""
    durability, _, rest = mode.partition(",")
    return f"{durability}/{backend}{',' + rest if rest else ''}"


def writer_choice(mode: str) -> AbstractContextManager[None]:
    """Open ledgers in the block with the writer ``mode`` names: ``..., writer thread``
    keeps async writing in the program's process (``DSPY_LEDGER_WRITER=thread``)."""
    return environment("DSPY_LEDGER_WRITER", "thread" if "writer thread" in mode else "process")


def writer_ready(ledger: Any, timeout: float = 30.0) -> None:
    """Wait until an async ledger's writer process is up: its start-up (about half a
    second, once per ledger) is measured on its own, not inside a throughput figure."""
    wait = getattr(ledger._writer, "wait_ready", None)
    if wait is not None:
        wait(timeout)


def backends() -> list[str]:
    """The stores to measure: SQLite always, PostgreSQL when a server answers."""
    return ["sqlite", "postgres"] if postgres_base_url() is not None else ["sqlite"]


def memory_folder() -> str | None:
    """A folder on a memory file system (Linux's ``/dev/shm``), or None where there is
    none: a SQLite file there commits with the same code but no disk under its sync."""
    try:
        mounts = Path("/proc/mounts").read_text().split("\n")
    except OSError:  # not Linux
        return None
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "/dev/shm" and fields[2] == "tmpfs":
            return "/dev/shm"
    return None


@contextmanager
def fresh_store(backend: str, folder: str | None = None) -> Iterator[str]:
    """Yield the URL of a new, empty store (a temporary SQLite file, in ``folder`` if
    given, or PostgreSQL schema), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="dspy-ledger-bench-", dir=folder) as temporary:
        if backend == "sqlite":
            yield f"sqlite:///{temporary}/ledger.db"
            return
        base = postgres_base_url()
        if base is None:
            msg = "PostgreSQL is not reachable."
            raise RuntimeError(msg)
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            yield f"{base}?schema={schema}"
        finally:
            _drop_schema(base, schema)


def _drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


def mlflow_experiment(mlflow: Any, folder: str | Path, name: str) -> str:
    """Point MLflow at a fresh SQLite tracking store in ``folder`` (artifacts beside it)
    and make experiment ``name`` the current one; returns the experiment's id."""
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    experiment: str = mlflow.create_experiment(
        name, artifact_location=Path(folder, "artifacts").as_uri()
    )
    mlflow.set_experiment(experiment_id=experiment)
    return experiment


def mlflow_flush(mlflow: Any) -> None:
    """Wait until MLflow has written the traces it logs in the background."""
    flush = getattr(mlflow, "flush_trace_async_logging", None)
    if callable(flush):
        flush()
