"""Section 4 (part): bytes stored per prediction.

A ``ChainOfThought`` prediction with its LM call is recorded into a fresh store, and the
store's size is divided by the number of predictions: the events' stored bytes (what
the rows hold) and the whole database (tables, indexes, free space) for SQLite, the
tables with their indexes for PostgreSQL.

When MLflow is installed (the ``bench`` extra) and the run is not quick, the same
predictions are traced by ``mlflow.dspy.autolog()`` into a fresh SQLite tracking store,
and what that store grew by (its database and artifact folder, less their size before
the first trace) is divided by the number of traces, beside the ledger's figures.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from bench.common import (
    Row,
    backends,
    compression,
    configure_dspy,
    fresh_store,
    make_program,
    mlflow_experiment,
    mlflow_flush,
    predict_many,
    row,
)

SECTION = "4. Storage"
TARGET = "<= 3072 B"
#: Traces recorded for MLflow's figure: it writes each in tens of milliseconds.
MLFLOW_TRACES = 300


def _sqlite_sizes(url: str) -> tuple[int, int]:
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = connection.execute(
            "SELECT COALESCE(SUM(LENGTH(state) + LENGTH(topic) + LENGTH(originator_id) + 8), 0)"
            " FROM stored_events"
        ).fetchone()[0]
    connection.close()
    return int(rows), Path(path).stat().st_size


def _postgres_sizes(url: str) -> tuple[int, int]:
    import psycopg

    base, _, query = url.partition("?schema=")
    with psycopg.connect(base) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (query,),
        ).fetchall()
        rows = 0
        total = 0
        for (table,) in tables:
            qualified = f'"{query}"."{table}"'
            total += connection.execute(
                "SELECT pg_total_relation_size(%s::regclass)", (qualified,)
            ).fetchone()[0]  # type: ignore[index]
            if table.endswith("events"):
                rows += connection.execute(
                    f"SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM {qualified} t"
                ).fetchone()[0]  # type: ignore[index]
    return int(rows), int(total)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _mlflow_bytes_per_trace(program: object, count: int) -> float | None:
    """What MLflow's SQLite tracking store grows by per DSPy trace, or None without it."""
    try:
        import mlflow
        import mlflow.dspy
    except ImportError:
        return None
    previous = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="dspy-ledger-mlflow-") as name:
        folder = Path(name)
        try:
            experiment = mlflow_experiment(mlflow, folder, "dspy-ledger-bench-storage")
            empty = _folder_bytes(folder)
            mlflow.dspy.autolog()
            try:
                predict_many(program, count)
                mlflow_flush(mlflow)
            finally:
                mlflow.dspy.autolog(disable=True)
            traces = len(mlflow.search_traces(locations=[experiment], max_results=count + 1))
            return (_folder_bytes(folder) - empty) / traces if traces else None
        finally:
            mlflow.set_tracking_uri(previous)  # not left naming a folder that is gone


def run(quick: bool) -> list[Row]:
    """Record predictions into fresh stores and report bytes per prediction."""
    import dspy_ledger

    configure_dspy()
    program = make_program()
    count = 50 if quick else 2000
    rows: list[Row] = []
    for backend in backends():
        for setting in ("none", "zlib"):
            with compression(setting), fresh_store(backend) as url:
                with (
                    dspy_ledger.open(url, durability="async") as ledger,
                    ledger.instrument(),
                ):
                    predict_many(program, count)
                sizes = _sqlite_sizes(url) if backend == "sqlite" else _postgres_sizes(url)
            label = f"{backend}{', zlib' if setting == 'zlib' else ''}"
            rows.append(
                row(
                    SECTION,
                    f"{label}: event rows per prediction",
                    sizes[0] / count,
                    "bytes",
                    target=TARGET,
                )
            )
            rows.append(
                row(SECTION, f"{label}: whole store per prediction", sizes[1] / count, "bytes")
            )
    if not quick:
        rows += _mlflow_rows(program)
    return rows


def _mlflow_rows(program: object) -> list[Row]:
    try:
        per_trace = _mlflow_bytes_per_trace(program, MLFLOW_TRACES)
    except Exception as error:  # a peer's failure is not the ledger's: say so, go on
        print(f"bench: MLflow's storage could not be measured: {type(error).__name__}: {error}")
        return []
    if per_trace is None:
        print("bench: mlflow not installed; its storage is not measured.")
        return []
    name = "peer: MLflow dspy.autolog (SQLite), store per trace"
    return [row(SECTION, name, per_trace, "bytes")]
