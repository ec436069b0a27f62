"""The lineage view: where each prediction's program came from, and what data made it.

Prediction -> program version -> the optimization run that produced it -> optimizer,
params, datasets, teacher and parent version, recursively; and from an example's
digest back to the datasets, runs, versions and predictions that used it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

from projections.base import Cursor, PostgresView, SQLiteView, ViewItem, ViewRecorder


class LineageLogic(ViewRecorder):
    """Tables, event handling and queries of the lineage view."""

    view_name: ClassVar[str] = "lineage"
    tables: ClassVar[dict[str, str]] = {
        "lin_predictions": (
            "(prediction_id TEXT PRIMARY KEY, program_version_id TEXT, program_name TEXT,"
            " context TEXT, actor TEXT, started_at TEXT NOT NULL, status TEXT NOT NULL)"
        ),
        "lin_versions": (
            "(version_id TEXT PRIMARY KEY, program_name TEXT, module_path TEXT, state_hash TEXT,"
            " parent_version_id TEXT, produced_by TEXT, registered_at TEXT NOT NULL, actor TEXT)"
        ),
        "lin_runs": (
            "(run_id TEXT PRIMARY KEY, optimizer TEXT NOT NULL, params TEXT NOT NULL,"
            " student_version_id TEXT, teacher_version_id TEXT, trainset_digest TEXT,"
            " valset_digest TEXT, metric TEXT, status TEXT NOT NULL, result_version_id TEXT,"
            " score DOUBLE PRECISION, started_at TEXT NOT NULL, actor TEXT)"
        ),
        "lin_examples": "(digest TEXT NOT NULL, example_digest TEXT NOT NULL,"
        " PRIMARY KEY (digest, example_digest))",
    }

    fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "PredictionStarted": (
            "program_version_id@uuid",
            "program_name",
            "context",
            "actor",
            "timestamp@time",
        ),
        "ProgramVersionRegistered": (
            "program_name",
            "module_path",
            "state_hash",
            "parent_version_id@uuid",
            "produced_by@uuid",
            "timestamp@time",
            "actor",
        ),
        "DatasetRegistered": ("digest", "example_digests@json"),
        "OptimizationStarted": (
            "optimizer",
            "params@json",
            "student_version_id@uuid",
            "teacher_version_id@uuid",
            "trainset_digest",
            "valset_digest",
            "metric",
            "timestamp@time",
            "actor",
        ),
        "OptimizationCompleted": ("result_version_id@uuid", "score"),
        "PredictionCompleted": (),
        "PredictionFailed": (),
        "OptimizationFailed": (),
    }
    indexes: ClassVar[dict[str, tuple[str, str]]] = {
        "lin_predictions_version": ("lin_predictions", "program_version_id"),
        "lin_examples_example": ("lin_examples", "example_digest"),
    }

    def write(self, cursor: Cursor, items: Sequence[ViewItem]) -> None:
        """Write a batch: predictions and their status in bulk, the rest event by event."""
        started: dict[str, list[Any]] = {}
        status: list[tuple[str, str]] = []
        for position, event_type, e in items:
            assert e is not None
            pid = e["originator_id"]
            if event_type == "PredictionStarted":
                if pid not in started:
                    started[pid] = [
                        pid,
                        e.get("program_version_id"),
                        e.get("program_name"),
                        e.get("context"),
                        e.get("actor"),
                        e["timestamp"],
                        "started",
                    ]
            elif event_type in ("PredictionCompleted", "PredictionFailed"):
                value = "completed" if event_type == "PredictionCompleted" else "failed"
                if pid in started:
                    started[pid][6] = value
                else:
                    status.append((value, pid))
            else:
                self.handle(cursor, position, event_type, e)
        cursor.executemany(
            "INSERT INTO {lin_predictions} VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (prediction_id) DO NOTHING",
            list(started.values()),
        )
        cursor.executemany(
            "UPDATE {lin_predictions} SET status = ? WHERE prediction_id = ?", status
        )

    def handle(self, cursor: Cursor, position: int, event_type: str, e: dict[str, Any]) -> None:
        """Record predictions, versions, runs and dataset membership."""
        stream = e["originator_id"]
        if event_type == "PredictionStarted":
            cursor.execute(
                "INSERT INTO {lin_predictions} VALUES (?, ?, ?, ?, ?, ?, 'started')"
                " ON CONFLICT (prediction_id) DO NOTHING",
                (
                    stream,
                    e.get("program_version_id"),
                    e.get("program_name"),
                    e.get("context"),
                    e.get("actor"),
                    e["timestamp"],
                ),
            )
        elif event_type in ("PredictionCompleted", "PredictionFailed"):
            status = "completed" if event_type == "PredictionCompleted" else "failed"
            cursor.execute(
                "UPDATE {lin_predictions} SET status = ? WHERE prediction_id = ?", (status, stream)
            )
        elif event_type == "ProgramVersionRegistered":
            cursor.execute(
                "INSERT INTO {lin_versions} VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (version_id) DO NOTHING",
                (
                    stream,
                    e.get("program_name"),
                    e.get("module_path"),
                    e.get("state_hash"),
                    e.get("parent_version_id"),
                    e.get("produced_by"),
                    e["timestamp"],
                    e.get("actor"),
                ),
            )
        elif event_type == "DatasetRegistered":
            for example in dict.fromkeys(e.get("example_digests") or []):
                cursor.execute(
                    "INSERT INTO {lin_examples} VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (e["digest"], example),
                )
        elif event_type == "OptimizationStarted":
            cursor.execute(
                "INSERT INTO {lin_runs} VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, 'started', NULL, NULL, ?, ?)",
                (
                    stream,
                    e["optimizer"],
                    json.dumps(e.get("params") or {}, default=str),
                    e.get("student_version_id"),
                    e.get("teacher_version_id"),
                    e.get("trainset_digest"),
                    e.get("valset_digest"),
                    e.get("metric"),
                    e["timestamp"],
                    e.get("actor"),
                ),
            )
        elif event_type == "OptimizationCompleted":
            cursor.execute(
                "UPDATE {lin_runs} SET status = 'completed', result_version_id = ?, score = ?"
                " WHERE run_id = ?",
                (e.get("result_version_id"), e.get("score"), stream),
            )
        elif event_type == "OptimizationFailed":
            cursor.execute("UPDATE {lin_runs} SET status = 'failed' WHERE run_id = ?", (stream,))

    def prediction(self, prediction_id: str) -> dict[str, Any] | None:
        """One prediction's row."""
        found = self.rows(
            "SELECT * FROM {lin_predictions} WHERE prediction_id = ?", (prediction_id,)
        )
        return found[0] if found else None

    def version(self, version_id: str) -> dict[str, Any] | None:
        """One program version's row."""
        found = self.rows("SELECT * FROM {lin_versions} WHERE version_id = ?", (version_id,))
        return found[0] if found else None

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One optimization run's row (params decoded)."""
        found = self.rows("SELECT * FROM {lin_runs} WHERE run_id = ?", (run_id,))
        if not found:
            return None
        row = found[0]
        row["params"] = json.loads(row["params"])
        return row

    def runs_using_example(self, example_digest: str) -> list[dict[str, Any]]:
        """Runs whose trainset or valset contains the example."""
        return self.rows(
            "SELECT DISTINCT r.run_id, r.optimizer, r.status, r.result_version_id, r.started_at,"
            " x.digest AS dataset_digest FROM {lin_runs} r JOIN {lin_examples} x"
            " ON x.digest = r.trainset_digest OR x.digest = r.valset_digest"
            " WHERE x.example_digest = ? ORDER BY r.started_at, r.run_id",
            (example_digest,),
        )

    def example_known(self, example_digest: str) -> bool:
        """True if some recorded dataset contains the example."""
        return bool(
            self.rows(
                "SELECT 1 AS x FROM {lin_examples} WHERE example_digest = ?", (example_digest,)
            )
        )

    def predictions_of(self, version_id: str) -> list[str]:
        """Ids of the predictions made by one program version, oldest first."""
        rows = self.rows(
            "SELECT prediction_id FROM {lin_predictions} WHERE program_version_id = ?"
            " ORDER BY started_at, prediction_id",
            (version_id,),
        )
        return [str(r["prediction_id"]) for r in rows]


class SQLiteLineageView(LineageLogic, SQLiteView):
    """The lineage view in SQLite."""


class PostgresLineageView(LineageLogic, PostgresView):
    """The lineage view in PostgreSQL."""
