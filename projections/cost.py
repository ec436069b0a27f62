"""The cost view: spend and tokens of every LM call, as billed and repriced.

One row per ``ModelExecuted`` (a fact table) carries every dimension a report may
group by: model, provider, program, program version, actor, context kind and day.
Grouping happens at query time, so any combination of dimensions is one SQL query.
Repricing joins each call to the ``PriceSet`` in force for its model at the call's
time, so a price recorded later for an earlier date reprices history correctly.
"""

from __future__ import annotations

from typing import Any, ClassVar

from projections.base import (
    Cursor,
    PostgresView,
    SQLiteView,
    ViewRecorder,
    context_kind,
    id_text,
    time_window,
    utc_text,
)

#: Report dimension -> column of ``cost_calls``.
COST_DIMENSIONS = {
    "model": "model",
    "provider": "provider",
    "program": "program_name",
    "version": "program_version_id",
    "actor": "actor",
    "context": "context_kind",
    "day": "day",
}


class CostLogic(ViewRecorder):
    """Tables, event handling and queries of the cost view."""

    view_name: ClassVar[str] = "cost"
    tables: ClassVar[dict[str, str]] = {
        "cost_predictions": (
            "(prediction_id TEXT PRIMARY KEY, program_name TEXT, program_version_id TEXT, "
            "context_kind TEXT NOT NULL)"
        ),
        "cost_calls": (
            "(position BIGINT PRIMARY KEY, prediction_id TEXT NOT NULL, occurred_at TEXT NOT NULL,"
            " day TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL, program_name TEXT,"
            " program_version_id TEXT, actor TEXT NOT NULL, context_kind TEXT NOT NULL,"
            " prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,"
            " cost_usd DOUBLE PRECISION NOT NULL, saved_usd DOUBLE PRECISION NOT NULL,"
            " cache_hit BIGINT NOT NULL, failed BIGINT NOT NULL)"
        ),
        "cost_prices": (
            "(position BIGINT PRIMARY KEY, model TEXT NOT NULL, effective_from TEXT NOT NULL,"
            " input_usd_per_1m DOUBLE PRECISION NOT NULL,"
            " output_usd_per_1m DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL)"
        ),
    }

    def handle(self, cursor: Cursor, position: int, event_type: str, e: dict[str, Any]) -> None:
        """Record predictions' dimensions, LM calls and prices."""
        if event_type == "PredictionStarted":
            cursor.execute(
                "INSERT INTO {cost_predictions} VALUES (?, ?, ?, ?) "
                "ON CONFLICT (prediction_id) DO NOTHING",
                (
                    id_text(e["originator_id"]),
                    e.get("program_name"),
                    id_text(e.get("program_version_id")),
                    context_kind(e.get("context")),
                ),
            )
        elif event_type == "ModelExecuted":
            self._call(cursor, position, e)
        elif event_type == "PriceSet":
            cursor.execute(
                "INSERT INTO {cost_prices} VALUES (?, ?, ?, ?, ?, ?)",
                (
                    position,
                    e["model"],
                    utc_text(e["effective_from"]),
                    float(e["input_usd_per_1m"]),
                    float(e["output_usd_per_1m"]),
                    e.get("actor") or "unknown",
                ),
            )

    def _call(self, cursor: Cursor, position: int, e: dict[str, Any]) -> None:
        prediction_id = id_text(e["originator_id"])
        found = cursor.rows(
            "SELECT program_name, program_version_id, context_kind FROM {cost_predictions} "
            "WHERE prediction_id = ?",
            (prediction_id,),
        )
        prediction = found[0] if found else {}
        usage = e.get("usage") or {}
        occurred_at = utc_text(e["timestamp"])
        cache_hit = bool(e.get("cache_hit"))
        saved = float(e.get("cached_cost_usd") or 0.0) if cache_hit else 0.0
        cursor.execute(
            "INSERT INTO {cost_calls} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                position,
                prediction_id,
                occurred_at,
                occurred_at[:10],
                e.get("model") or "unknown",
                e.get("provider") or "unknown",
                prediction.get("program_name"),
                prediction.get("program_version_id"),
                e.get("actor") or "unknown",
                prediction.get("context_kind") or "production",
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
                float(e.get("cost_usd") or 0.0),
                saved,
                int(cache_hit),
                int(e.get("error") is not None),
            ),
        )

    def cost_rows(
        self, by: list[str], since: str | None = None, until: str | None = None
    ) -> list[dict[str, Any]]:
        """Totals grouped by the given dimensions, as billed and repriced.

        ``since`` is inclusive and ``until`` exclusive (UTC text as :func:`utc_text`).
        """
        columns = [COST_DIMENSIONS[name] for name in by]
        where, params = time_window(since, until)
        # The price in force for a call: its model's latest PriceSet effective at or
        # before the call (ties broken by the later record).
        price = (
            "(SELECT p.{col} FROM {{cost_prices}} p WHERE p.model = c.model "
            "AND p.effective_from <= c.occurred_at "
            "ORDER BY p.effective_from DESC, p.position DESC LIMIT 1)"
        )
        input_price = price.format(col="input_usd_per_1m")
        output_price = price.format(col="output_usd_per_1m")
        select = ", ".join(f"{col} AS {name}" for name, col in zip(by, columns, strict=True))
        text = (
            f"SELECT {select + ',' if select else ''} COUNT(*) AS calls,"
            " SUM(cache_hit) AS cache_hits, SUM(failed) AS failed_calls,"
            " SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens,"
            " SUM(cost_usd) AS cost_usd, SUM(saved_usd) AS saved_usd,"
            f" SUM(CASE WHEN cache_hit = 1 THEN 0.0 ELSE (prompt_tokens * {input_price}"
            f" + completion_tokens * {output_price}) / 1000000.0 END) AS repriced_usd,"
            f" SUM(CASE WHEN cache_hit = 0 AND {input_price} IS NULL THEN 1 ELSE 0 END)"
            " AS unpriced_calls"
            f" FROM {{cost_calls}} c {where}"
        )
        if columns:
            text += f" GROUP BY {', '.join(columns)} ORDER BY {', '.join(columns)}"
        return self.rows(text, params)

    def prices(self) -> list[dict[str, Any]]:
        """Every recorded price, by model and effective date."""
        return self.rows(
            "SELECT model, effective_from, input_usd_per_1m, output_usd_per_1m, actor, position"
            " FROM {cost_prices} ORDER BY model, effective_from, position"
        )


class SQLiteCostView(CostLogic, SQLiteView):
    """The cost view in SQLite."""


class PostgresCostView(CostLogic, PostgresView):
    """The cost view in PostgreSQL."""
