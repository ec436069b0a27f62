"""The cost view: spend and tokens of every LM call, as billed and repriced.

One row per ``ModelExecuted`` (a fact table) carries every dimension a report may
group by: model, provider, program, program version, actor, context kind and day.
Grouping happens at query time, so any combination of dimensions is one SQL query.
Repricing joins each call to the ``PriceSet`` in force for its model at the call's
time, so a price recorded later for an earlier date reprices history correctly.

A call's program, version and context come from its prediction's ``PredictionStarted``:
from the same batch, or, for the few calls whose prediction started in an earlier
batch, read back from the ledger's store by stream id (``projections.starts``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any, ClassVar

from projections.base import (
    Cursor,
    PostgresView,
    SQLiteView,
    ViewItem,
    ViewRecorder,
    bounds,
    context_kind,
    time_window,
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


#: ``effective_from`` of a price that starts exactly at midnight UTC.
_MIDNIGHT = "T00:00:00.000000Z"
#: Rollup columns that stand for NULL in the primary key ('' there means NULL).
_NULLABLE_KEYS = {"program_name", "program_version_id"}
_SUMS = (
    "calls",
    "cache_hits",
    "failed_calls",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "saved_usd",
)
#: The rollup's primary key, in order.
_ROLLUP_KEY = (
    "day",
    "model",
    "provider",
    "program_name",
    "program_version_id",
    "actor",
    "context_kind",
)
#: What the rollup keeps beyond the report's sums: what repricing needs.
_BILLABLE = ("billable_calls", "billable_prompt_tokens", "billable_completion_tokens")


#: A prediction's (program name, program version id, context kind).
_Dimensions = tuple[Any, Any, str]
#: The dimensions of a call whose PredictionStarted is not in the ledger, or unreadable.
_NONE: _Dimensions = (None, None, "production")


def _dimensions(e: dict[str, Any]) -> _Dimensions:
    """The dimensions a ``PredictionStarted`` gives its prediction's calls."""
    return (e.get("program_name"), e.get("program_version_id"), context_kind(e.get("context")))


def _started(items: Sequence[ViewItem]) -> dict[str, _Dimensions]:
    """The dimensions of the predictions that start in a batch, by prediction id."""
    return {
        e["originator_id"]: _dimensions(e)
        for _, event_type, e in items
        if event_type == "PredictionStarted" and e is not None
    }


def _started_earlier(items: Sequence[ViewItem]) -> set[str]:
    """The predictions of a batch's calls that started before the batch."""
    started: set[str] = set()
    earlier: set[str] = set()
    for _, event_type, e in items:
        if e is None:
            continue
        if event_type == "PredictionStarted":
            started.add(e["originator_id"])
        elif event_type == "ModelExecuted" and e["originator_id"] not in started:
            earlier.add(e["originator_id"])
    return earlier


def _billable(call: tuple[Any, ...]) -> tuple[int, int, int]:
    """A call's billable calls, prompt and completion tokens (none if a cache hit)."""
    if call[14]:
        return (0, 0, 0)
    return (1, call[10], call[11])


def _add(sums: list[Any], call: tuple[Any, ...]) -> None:
    """Add one ``cost_calls`` row to a rollup row's sums (in ``_SUMS``, ``_BILLABLE`` order)."""
    prompt, completion, cost, saved, cache_hit, failed = call[10:]
    sums[0] += 1
    sums[1] += cache_hit
    sums[2] += failed
    sums[3] += prompt
    sums[4] += completion
    sums[5] += cost
    sums[6] += saved
    if not cache_hit:
        sums[7] += 1
        sums[8] += prompt
        sums[9] += completion


class CostLogic(ViewRecorder):
    """Tables, event handling and queries of the cost view."""

    view_name: ClassVar[str] = "cost"
    tables: ClassVar[dict[str, str]] = {
        "cost_calls": (
            "(position BIGINT PRIMARY KEY, prediction_id TEXT NOT NULL, occurred_at TEXT NOT NULL,"
            " day TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL, program_name TEXT,"
            " program_version_id TEXT, actor TEXT NOT NULL, context_kind TEXT NOT NULL,"
            " prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,"
            " cost_usd DOUBLE PRECISION NOT NULL, saved_usd DOUBLE PRECISION NOT NULL,"
            " cache_hit BIGINT NOT NULL, failed BIGINT NOT NULL)"
        ),
        # One row per day and combination of dimensions: what reports read, so that a
        # report over millions of calls sums thousands of rows. '' stands for NULL in
        # program_name / program_version_id (primary keys cannot hold NULL). In SQLite the
        # rows are stored in key order (WITHOUT ROWID), which halves a report's scan.
        "cost_rollup": (
            "(day TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,"
            " program_name TEXT NOT NULL, program_version_id TEXT NOT NULL, actor TEXT NOT NULL,"
            " context_kind TEXT NOT NULL, calls BIGINT NOT NULL, cache_hits BIGINT NOT NULL,"
            " failed_calls BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL,"
            " completion_tokens BIGINT NOT NULL, cost_usd DOUBLE PRECISION NOT NULL,"
            " saved_usd DOUBLE PRECISION NOT NULL, billable_calls BIGINT NOT NULL,"
            " billable_prompt_tokens BIGINT NOT NULL, billable_completion_tokens BIGINT NOT NULL,"
            " PRIMARY KEY (day, model, provider, program_name, program_version_id, actor,"
            " context_kind)) {without_rowid}"
        ),
        "cost_prices": (
            "(position BIGINT PRIMARY KEY, model TEXT NOT NULL, effective_from TEXT NOT NULL,"
            " input_usd_per_1m DOUBLE PRECISION NOT NULL,"
            " output_usd_per_1m DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL)"
        ),
    }
    indexes: ClassVar[dict[str, tuple[str, str]]] = {
        "cost_calls_day": ("cost_calls", "day, model"),
    }
    # Earlier versions kept every prediction's dimensions here, keyed by its random
    # UUID, for calls in a later batch than their PredictionStarted: at a million
    # predictions, inserting into it cost more than the rest of a batch's writing.
    # Such calls now read their PredictionStarted from the ledger (``_earlier``).
    retired_tables: ClassVar[tuple[str, ...]] = ("cost_predictions",)
    #: Prediction id -> (program, version, context kind), for calls of the batch being
    #: written whose PredictionStarted lies in an earlier batch. Read before the batch's
    #: transaction opens; a call missing here (written without process()) is read then.
    _earlier: dict[str, _Dimensions] = {}
    fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "PredictionStarted": ("program_name", "program_version_id@uuid", "context"),
        "ModelExecuted": (
            "timestamp@time",
            "model",
            "provider",
            "actor",
            "usage.prompt_tokens",
            "usage.completion_tokens",
            "cost_usd",
            "cached_cost_usd",
            "cache_hit",
            "error",
        ),
        "PriceSet": (
            "model",
            "effective_from@time",
            "input_usd_per_1m",
            "output_usd_per_1m",
            "actor",
        ),
    }

    def handle(self, cursor: Cursor, position: int, event_type: str, e: dict[str, Any]) -> None:
        """Record one event: an LM call or a price."""
        self.write(cursor, [(position, event_type, e)])

    def read_before_writing(self, items: Sequence[ViewItem]) -> None:
        """Read the predictions, started in earlier batches, of the batch's LM calls."""
        self._earlier = self._look_up(_started_earlier(items))

    def _look_up(self, prediction_ids: set[str]) -> dict[str, _Dimensions]:
        """The dimensions of predictions, from their PredictionStarted in the ledger."""
        if not prediction_ids:
            return {}
        if self.stream_starts is None:
            msg = "The cost view reads earlier predictions from the ledger: open it with open_view."
            raise RuntimeError(msg)
        found = self.stream_starts(prediction_ids)
        dimensions: dict[str, _Dimensions] = {}
        for pid in prediction_ids:
            _, event_type, e = found.get(pid) or (0, "", None)
            # Not stored, or unreadable by this code: as if the call had no prediction
            # (what the batch gives for a PredictionStarted it skips as unreadable).
            dimensions[pid] = _dimensions(e) if event_type == "PredictionStarted" and e else _NONE
        return dimensions

    def write(self, cursor: Cursor, items: Sequence[ViewItem]) -> None:
        """Write a batch: call facts, rollup sums and prices."""
        started = _started(items)
        earlier = self._earlier
        calls: list[tuple[Any, ...]] = []
        rollup: dict[tuple[str, ...], list[Any]] = {}
        for position, event_type, e in items:
            assert e is not None
            if event_type == "ModelExecuted":
                pid = e["originator_id"]
                program, version, kind = (
                    started.get(pid) or earlier.get(pid) or self._look_up({pid})[pid]
                )
                call = self._call(position, e, program, version, kind)
                calls.append(call)
                # The rollup row of the call's day and dimensions ('' stands for NULL).
                key = (call[3], call[4], call[5], program or "", version or "", call[8], call[9])
                row = rollup.get(key)
                if row is None:
                    rollup[key] = [1, *call[14:16], *call[10:14], *_billable(call)]
                else:
                    _add(row, call)
            elif event_type == "PriceSet":
                cursor.execute(
                    "INSERT INTO {cost_prices} VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        position,
                        e["model"],
                        e["effective_from"],
                        float(e["input_usd_per_1m"]),
                        float(e["output_usd_per_1m"]),
                        e.get("actor") or "unknown",
                    ),
                )
        cursor.executemany(
            "INSERT INTO {cost_calls} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            calls,
        )
        sums = ", ".join(f"{c} = {{cost_rollup}}.{c} + excluded.{c}" for c in (*_SUMS, *_BILLABLE))
        # Rows in key order: each B-tree page is visited once per batch, not once per row.
        cursor.executemany(
            "INSERT INTO {cost_rollup} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (day, model, provider, program_name, program_version_id, actor,"
            f" context_kind) DO UPDATE SET {sums}",
            [(*key, *rollup[key]) for key in sorted(rollup)],
        )

    @staticmethod
    def _call(
        position: int, e: dict[str, Any], program: Any, version: Any, kind: str
    ) -> tuple[Any, ...]:
        """The ``cost_calls`` row of one ``ModelExecuted``."""
        occurred_at = e["timestamp"]
        cache_hit = 1 if e.get("cache_hit") else 0
        return (
            position,
            e["originator_id"],
            occurred_at,
            occurred_at[:10],
            e.get("model") or "unknown",
            e.get("provider") or "unknown",
            program,
            version,
            e.get("actor") or "unknown",
            kind,
            int(e.get("usage.prompt_tokens") or 0),
            int(e.get("usage.completion_tokens") or 0),
            float(e.get("cost_usd") or 0.0),
            float(e.get("cached_cost_usd") or 0.0) if cache_hit else 0.0,
            cache_hit,
            0 if e.get("error") is None else 1,
        )

    def cost_rows(
        self, by: list[str], since: str | None = None, until: str | None = None
    ) -> list[dict[str, Any]]:
        """Totals grouped by the given dimensions, as billed and repriced.

        ``since`` is inclusive and ``until`` exclusive (UTC text as :func:`utc_text`).
        Whole days read the rollup; the partial days at the window's edges, and days
        on which a model's price changed after midnight, read the call facts, so each
        call is repriced with the price in force at its own time.
        """
        prices = PriceBook(self.prices())
        first_day = None if since is None else _first_whole_day(since)
        end_day = None if until is None else until[:10]
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in self._rollup_rows(by, first_day, end_day):
            if (row["_model"], row["_day"]) in prices.changed_days:
                continue
            price = prices.at(row["_model"], row["_day"] + _MIDNIGHT)
            if price is None:
                repriced = 0.0 if row["cache_hits"] else None
                row["unpriced_calls"] = row["billable_calls"]
            else:
                repriced = (
                    row["billable_prompt_tokens"] * price[0]
                    + row["billable_completion_tokens"] * price[1]
                ) / 1_000_000.0
                row["unpriced_calls"] = 0
            row["repriced_usd"] = repriced
            _merge(groups, by, row)
        exact_days = [(m, d) for m, d in prices.changed_days]
        if since is not None or until is not None or exact_days:
            window = (since, until, first_day, end_day)
            for row in self._fact_rows(by, window, exact_days):
                _merge(groups, by, row)
        if not by and not groups:
            return [{**dict.fromkeys((*_SUMS, "unpriced_calls"), 0), "repriced_usd": None}]
        return [groups[key] for key in sorted(groups, key=_null_first)]

    def _rollup_rows(
        self, by: list[str], first_day: str | None, end_day: str | None
    ) -> list[dict[str, Any]]:
        columns = [COST_DIMENSIONS[name] for name in by]
        select = "".join(f"{c} AS {n}, " for n, c in zip(by, columns, strict=True))
        clauses, params = bounds("day", first_day, end_day)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        # Grouping in key order lets SQLite read the rollup in order, without sorting.
        wanted = {*columns, "model", "day"}
        group = ", ".join(c for c in _ROLLUP_KEY if c in wanted)
        sums = ", ".join(f"SUM({c}) AS {c}" for c in (*_SUMS, *_BILLABLE))
        rows = self.rows(
            f"SELECT {select}model AS _model, day AS _day, {sums} FROM {{cost_rollup}} {where}"
            f" GROUP BY {group}",
            params,
        )
        for row in rows:
            _numbers(row)
            for name in by:
                if COST_DIMENSIONS[name] in _NULLABLE_KEYS and row[name] == "":
                    row[name] = None
        return rows

    def _fact_rows(
        self,
        by: list[str],
        window: tuple[str | None, str | None, str | None, str | None],
        exact_days: list[tuple[str, str]],
    ) -> list[dict[str, Any]]:
        since, until, first_day, end_day = window
        columns = [COST_DIMENSIONS[name] for name in by]
        where, params = time_window(since, until)
        # Only the calls the rollup does not answer: edge days and price-change days.
        parts: list[str] = []
        if first_day is not None:
            parts.append("day < ?")
            params.append(first_day)
        if end_day is not None:
            parts.append("day >= ?")
            params.append(end_day)
        for model, day in exact_days:
            parts.append("(model = ? AND day = ?)")
            params.extend((model, day))
        where = f"{where} AND " if where else "WHERE "
        where += "(" + " OR ".join(parts) + ")"
        # The price in force for a call: its model's latest PriceSet effective at or
        # before the call (ties broken by the later record).
        price = (
            "(SELECT p.{col} FROM {{cost_prices}} p WHERE p.model = c.model "
            "AND p.effective_from <= c.occurred_at "
            "ORDER BY p.effective_from DESC, p.position DESC LIMIT 1)"
        )
        input_price = price.format(col="input_usd_per_1m")
        output_price = price.format(col="output_usd_per_1m")
        select = "".join(f"{col} AS {name}, " for name, col in zip(by, columns, strict=True))
        text = (
            f"SELECT {select}COUNT(*) AS calls,"
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
            text += f" GROUP BY {', '.join(columns)}"
        return [_numbers(row) for row in self.rows(text, params) if row["calls"]]

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


_Groups = dict[tuple[Any, ...], dict[str, Any]]


class PriceBook:
    """Recorded prices by model, to find the one in force at a time."""

    def __init__(self, prices: list[dict[str, Any]]) -> None:
        self.by_model: dict[str, list[tuple[str, int, float, float]]] = {}
        for p in prices:
            self.by_model.setdefault(p["model"], []).append(
                (
                    p["effective_from"],
                    int(p["position"]),
                    float(p["input_usd_per_1m"]),
                    float(p["output_usd_per_1m"]),
                )
            )
        for entries in self.by_model.values():
            entries.sort()
        #: (model, day) pairs on which a price took effect after midnight.
        self.changed_days = {
            (p["model"], p["effective_from"][:10])
            for p in prices
            if p["effective_from"][10:] != _MIDNIGHT
        }

    def at(self, model: str, moment: str) -> tuple[float, float] | None:
        """(input, output) USD per 1M tokens in force for ``model`` at ``moment``."""
        entries = self.by_model.get(model)
        if not entries:
            return None
        i = bisect_right(entries, (moment, 2**62))
        if i == 0:
            return None
        return entries[i - 1][2], entries[i - 1][3]


def _numbers(row: dict[str, Any]) -> dict[str, Any]:
    # PostgreSQL sums BIGINT into NUMERIC (Decimal); reports want int and float.
    for column, value in row.items():
        if value is None or column in COST_DIMENSIONS or column.startswith("_"):
            continue
        if column in ("cost_usd", "saved_usd", "repriced_usd"):
            row[column] = float(value)
        elif column in (*_SUMS, *_BILLABLE, "unpriced_calls"):
            row[column] = int(value)
    return row


def _first_whole_day(since: str) -> str:
    day = since[:10]
    if since[10:] == _MIDNIGHT:
        return day
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def _merge(groups: _Groups, by: list[str], row: dict[str, Any]) -> None:
    key = tuple(row[name] for name in by)
    total = groups.get(key)
    if total is None:
        groups[key] = {
            **{name: row[name] for name in by},
            **{c: row[c] or 0 for c in (*_SUMS, "unpriced_calls")},
            "repriced_usd": row["repriced_usd"],
        }
        return
    for c in (*_SUMS, "unpriced_calls"):
        total[c] += row[c] or 0
    if row["repriced_usd"] is not None:
        total["repriced_usd"] = (total["repriced_usd"] or 0.0) + row["repriced_usd"]


def _null_first(key: tuple[Any, ...]) -> tuple[tuple[bool, str], ...]:
    return tuple((v is not None, "" if v is None else str(v)) for v in key)
