"""The accuracy view: offline evaluation scores and online feedback, over time.

Evaluations are kept per run (version, devset, metric, score, time); feedback per
event, with the prediction's program version and model copied in so that it can be
grouped by version, model and day. Optimization runs are kept with their student
and result versions, so a report can set the evaluations of one beside the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from projections.base import (
    Cursor,
    PostgresView,
    SQLiteView,
    ViewItem,
    ViewRecorder,
    time_window,
)

#: Feedback report dimension -> column of ``acc_feedback``.
FEEDBACK_DIMENSIONS = {"version": "program_version_id", "model": "model", "day": "day"}


class AccuracyLogic(ViewRecorder):
    """Tables, event handling and queries of the accuracy view."""

    view_name: ClassVar[str] = "accuracy"
    #: Tables holding copies of personal data (feedback labels), purged on erasure.
    personal_tables: ClassVar[tuple[str, ...]] = ("acc_feedback",)
    tables: ClassVar[dict[str, str]] = {
        "acc_predictions": (
            "(prediction_id TEXT PRIMARY KEY, program_version_id TEXT, model TEXT)"
        ),
        "acc_evaluations": (
            "(evaluation_id TEXT PRIMARY KEY, program_version_id TEXT, devset_digest TEXT,"
            " metric TEXT, score DOUBLE PRECISION NOT NULL, occurred_at TEXT NOT NULL,"
            " position BIGINT NOT NULL)"
        ),
        "acc_feedback": (
            "(position BIGINT PRIMARY KEY, prediction_id TEXT NOT NULL, program_version_id TEXT,"
            " model TEXT, score DOUBLE PRECISION, label TEXT, by_actor TEXT NOT NULL,"
            " occurred_at TEXT NOT NULL, day TEXT NOT NULL)"
        ),
        "acc_runs": (
            "(run_id TEXT PRIMARY KEY, optimizer TEXT NOT NULL, student_version_id TEXT,"
            " result_version_id TEXT, status TEXT NOT NULL, started_at TEXT NOT NULL)"
        ),
    }

    fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "PredictionStarted": ("program_version_id@uuid",),
        "ModelExecuted": ("model",),
        "EvaluationCompleted": (
            "program_version_id@uuid",
            "devset_digest",
            "metric",
            "score",
            "timestamp@time",
        ),
        "FeedbackRecorded": ("score", "label", "by", "actor", "timestamp@time"),
        "OptimizationStarted": ("optimizer", "student_version_id@uuid", "timestamp@time"),
        "OptimizationCompleted": ("result_version_id@uuid",),
        "OptimizationFailed": ("result_version_id@uuid",),
        "SubjectForgotten": ("streams@json",),
    }

    def write(self, cursor: Cursor, items: Sequence[ViewItem]) -> None:
        """Write a batch: predictions' version and first model, feedback, and the rest.

        Predictions are followed in memory through the batch (loaded once for those
        started earlier), so each feedback sees the version and model it would have
        seen event by event.
        """
        frequent = ("PredictionStarted", "ModelExecuted", "FeedbackRecorded")
        started: dict[str, list[Any]] = {}
        wanted: set[str] = set()
        for _, event_type, e in items:
            assert e is not None
            if event_type == "PredictionStarted":
                started[e["originator_id"]] = [e.get("program_version_id"), None]
            elif event_type in frequent and e["originator_id"] not in started:
                wanted.add(e["originator_id"])
        known = {
            key: [row["program_version_id"], row["model"]]
            for key, row in cursor.lookup(
                "acc_predictions", "prediction_id", "program_version_id, model", wanted
            ).items()
        }
        changed: dict[str, str] = {}
        feedback: list[tuple[Any, ...]] = []
        for position, event_type, e in items:
            assert e is not None
            pid = e["originator_id"]
            if event_type not in frequent:
                self.handle(cursor, position, event_type, e)
                continue
            state = started.get(pid) or known.get(pid)
            if event_type == "ModelExecuted":
                # A prediction's model is the model of its first LM call.
                if state is not None and state[1] is None and e.get("model") is not None:
                    state[1] = e["model"]
                    if pid in known:
                        changed[pid] = e["model"]
            elif event_type == "FeedbackRecorded":
                score = e.get("score")
                feedback.append(
                    (
                        position,
                        pid,
                        state[0] if state else None,
                        state[1] if state else None,
                        None if score is None else float(score),
                        e.get("label"),
                        e.get("by") or e.get("actor") or "unknown",
                        e["timestamp"],
                        e["timestamp"][:10],
                    )
                )
        cursor.executemany(
            "INSERT INTO {acc_predictions} VALUES (?, ?, ?) ON CONFLICT (prediction_id) DO NOTHING",
            [(pid, version, model) for pid, (version, model) in started.items()],
        )
        cursor.executemany(
            "UPDATE {acc_predictions} SET model = ? WHERE prediction_id = ? AND model IS NULL",
            [(model, pid) for pid, model in changed.items()],
        )
        cursor.executemany(
            "INSERT INTO {acc_feedback} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", feedback
        )

    def handle(self, cursor: Cursor, position: int, event_type: str, e: dict[str, Any]) -> None:
        """Record evaluations, feedback and optimization runs."""
        stream = e["originator_id"]
        if event_type == "PredictionStarted":
            cursor.execute(
                "INSERT INTO {acc_predictions} VALUES (?, ?, NULL) "
                "ON CONFLICT (prediction_id) DO NOTHING",
                (stream, e.get("program_version_id")),
            )
        elif event_type == "ModelExecuted":
            # A prediction's model is the model of its first LM call.
            cursor.execute(
                "UPDATE {acc_predictions} SET model = ? WHERE prediction_id = ? AND model IS NULL",
                (e.get("model"), stream),
            )
        elif event_type == "EvaluationCompleted":
            cursor.execute(
                "INSERT INTO {acc_evaluations} VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    stream,
                    e.get("program_version_id"),
                    e.get("devset_digest"),
                    e.get("metric"),
                    float(e["score"]),
                    e["timestamp"],
                    position,
                ),
            )
        elif event_type == "FeedbackRecorded":
            found = cursor.rows(
                "SELECT program_version_id, model FROM {acc_predictions} WHERE prediction_id = ?",
                (stream,),
            )
            prediction = found[0] if found else {}
            occurred_at = e["timestamp"]
            score = e.get("score")
            cursor.execute(
                "INSERT INTO {acc_feedback} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    position,
                    stream,
                    prediction.get("program_version_id"),
                    prediction.get("model"),
                    None if score is None else float(score),
                    e.get("label"),
                    e.get("by") or e.get("actor") or "unknown",
                    occurred_at,
                    occurred_at[:10],
                ),
            )
        elif event_type == "SubjectForgotten":
            # The events read as erased from now on; the copies must go too.
            streams = list(e.get("streams") or [])
            for start in range(0, len(streams), 500):  # under SQLite's parameter limit
                chunk = streams[start : start + 500]
                cursor.execute(
                    "UPDATE {acc_feedback} SET label = '[erased]' WHERE label IS NOT NULL"
                    f" AND prediction_id IN ({', '.join('?' for _ in chunk)})",
                    chunk,
                )
        elif event_type == "OptimizationStarted":
            cursor.execute(
                "INSERT INTO {acc_runs} VALUES (?, ?, ?, NULL, 'started', ?)",
                (
                    stream,
                    e["optimizer"],
                    e.get("student_version_id"),
                    e["timestamp"],
                ),
            )
        elif event_type in ("OptimizationCompleted", "OptimizationFailed"):
            status = "completed" if event_type == "OptimizationCompleted" else "failed"
            cursor.execute(
                "UPDATE {acc_runs} SET status = ?, result_version_id = ? WHERE run_id = ?",
                (status, e.get("result_version_id"), stream),
            )

    def evaluations(self, since: str | None, until: str | None) -> list[dict[str, Any]]:
        """Every completed evaluation in the window, oldest first."""
        where, params = time_window(since, until)
        return self.rows(
            "SELECT evaluation_id, program_version_id, devset_digest, metric, score, occurred_at"
            f" FROM {{acc_evaluations}} {where} ORDER BY occurred_at, position",
            params,
        )

    def feedback(self, by: list[str], since: str | None, until: str | None) -> list[dict[str, Any]]:
        """Feedback counts and mean score grouped by version, model and/or day."""
        columns = [FEEDBACK_DIMENSIONS[name] for name in by]
        select = "".join(f"{col} AS {name}, " for name, col in zip(by, columns, strict=True))
        where, params = time_window(since, until)
        text = (
            f"SELECT {select}COUNT(*) AS feedback, COUNT(score) AS scored,"
            f" AVG(score) AS mean_score FROM {{acc_feedback}} {where}"
        )
        if columns:
            text += f" GROUP BY {', '.join(columns)} ORDER BY {', '.join(columns)}"
        return self.rows(text, params)

    def runs(self) -> list[dict[str, Any]]:
        """Every optimization run, oldest first."""
        return self.rows("SELECT * FROM {acc_runs} ORDER BY started_at, run_id")

    def latest_evaluation(self, version_id: str | None) -> dict[str, Any] | None:
        """The latest evaluation of one program version, if any."""
        if version_id is None:
            return None
        found = self.rows(
            "SELECT evaluation_id, devset_digest, metric, score, occurred_at"
            " FROM {acc_evaluations} WHERE program_version_id = ?"
            " ORDER BY occurred_at DESC, position DESC LIMIT 1",
            (version_id,),
        )
        return found[0] if found else None


class SQLiteAccuracyView(AccuracyLogic, SQLiteView):
    """The accuracy view in SQLite."""


class PostgresAccuracyView(AccuracyLogic, PostgresView):
    """The accuracy view in PostgreSQL."""
