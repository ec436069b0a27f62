"""Views rebuilt from the event stream: cost, accuracy, lineage, audit (SQLite and PostgreSQL)."""

from __future__ import annotations

import gc
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dspy_ledger
from dspy_ledger import views
from ledger.collector import collector_paused
from ledger.domain import Prediction
from ledger.errors import InvalidInputError, StreamNotFoundError
from projections.runner import (
    VIEW_CLASSES,
    VIEW_NAMES,
    catch_up,
    open_memory_view,
    open_view,
    rebuild,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def record_prediction(
    ledger: dspy_ledger.Ledger, *, actor: str, calls: list[tuple[str, float, bool]], at: datetime
) -> uuid.UUID:
    """Save a synthetic prediction with one ModelExecuted per (model, cost, cache_hit)."""
    prediction = Prediction.start(
        prediction_id=uuid.uuid4(),
        program_version_id=None,
        program_name="qa",
        inputs={},
        context="production",
        actor=actor,
        occurred_at=at,
    )
    for model, cost, cache_hit in calls:
        prediction.record_model_execution(
            occurred_at=at,
            call_id=uuid.uuid4().hex,
            parent_call_id=None,
            model=model,
            provider="openai",
            request={},
            messages=[],
            outputs=[],
            usage={"prompt_tokens": 100, "completion_tokens": 10},
            cost_usd=None if cache_hit else cost,
            cached_cost_usd=cost if cache_hit else None,
            latency_ms=1.0,
            cache_hit=cache_hit,
            response_model=None,
            error=None,
            actor=actor,
            trace_id=None,
            span_id=None,
        )
    prediction.complete(outputs={}, call_tree={}, latency_ms=1.0, actor=actor, occurred_at=at)
    ledger.app.save_aggregates(prediction)
    return prediction.id


def view_rows(projection: Any) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of a view, in a stable order."""
    view = projection.view
    tables = [*view.tables, f"{view.view_name}_skipped"]
    # Rollup sums add floats in batch order, so they may differ in the last bits.
    return {
        t: sorted(
            repr({k: round(v, 12) if isinstance(v, float) else v for k, v in row.items()})
            for row in view.rows(f"SELECT * FROM {{{t}}}")
        )
        for t in tables
    }


def test_cost_report_total_equals_sum_of_exported_costs(ledger_url: str) -> None:
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        lm = DummyLM([{"answer": str(i)} for i in range(6)])
        program = dspy.Predict("question -> answer")
        with dspy.context(lm=lm), ledger.instrument():
            for i in range(3):
                program(question=f"q{i}")
        record_prediction(
            ledger, actor="alice", calls=[("m1", 0.0123, False), ("m1", 0.5, True)], at=T0
        )
        exported = sum(
            e.data["cost_usd"] or 0.0 for e in ledger.events() if e.type == "ModelExecuted"
        )
        report = views.cost_report(ledger, by=["model", "actor"])
        assert round(report.total.cost_usd, 2) == round(exported, 2)
        assert report.total.cost_usd == pytest.approx(exported, abs=1e-12)
        assert report.total.cache_hits == 1
        assert report.total.saved_usd == pytest.approx(0.5)
        assert sum(r.calls for r in report.rows) == report.total.calls


def test_repricing_uses_the_price_in_force_at_each_call(ledger_url: str) -> None:
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        record_prediction(ledger, actor="a", calls=[("m1", 1.0, False)], at=T0)
        record_prediction(ledger, actor="a", calls=[("m1", 1.0, False)], at=T0 + timedelta(days=10))
        views.set_price(
            ledger, "m1", input_usd_per_1m=10, output_usd_per_1m=100, effective_from="2024-12-01"
        )
        views.set_price(
            ledger, "m1", input_usd_per_1m=20, output_usd_per_1m=200, effective_from="2025-01-05"
        )
        rows = views.cost_report(ledger, by=["day"]).rows
        # 100 input and 10 output tokens per call.
        assert [r.repriced_usd for r in rows] == pytest.approx([0.002, 0.004])
        assert [p.input_usd_per_1m for p in views.list_prices(ledger)] == [10, 20]


def test_feedback_lineage_and_audit_read_back(ledger_url: str) -> None:
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        prediction_id = record_prediction(ledger, actor="bob", calls=[("m1", 0.1, False)], at=T0)
        ledger.record_feedback(prediction_id, score=0.5, label="meh", by="carol")
        report = views.accuracy_report(ledger, by=["model"])
        assert [(f.group, f.feedback, f.mean_score) for f in report.feedback] == [
            ({"model": "m1"}, 1, 0.5)
        ]
        lineage = views.prediction_lineage(ledger, str(prediction_id))
        assert lineage.actor == "bob" and lineage.status == "completed"
        audit = views.audit_report(ledger, "bob")
        assert [e.event_type for e in audit.entries] == [
            "PredictionStarted",
            "ModelExecuted",
            "PredictionCompleted",
        ]
        assert [e.event_type for e in views.audit_report(ledger, "carol").entries] == [
            "FeedbackRecorded"
        ]


def test_bad_input_is_one_clear_error(sqlite_url: str) -> None:
    with dspy_ledger.open(sqlite_url) as ledger:
        record_prediction(ledger, actor="a", calls=[], at=T0)
        with pytest.raises(InvalidInputError, match="beyond the end"):
            views.cost_report(ledger, as_of=999)
        with pytest.raises(InvalidInputError, match="not an ISO"):
            views.cost_report(ledger, since="last tuesday")
        with pytest.raises(InvalidInputError, match="Cannot group by"):
            views.cost_report(ledger, by=["colour"])
        with pytest.raises(StreamNotFoundError):
            views.prediction_lineage(ledger, str(uuid.uuid4()))
        with pytest.raises(InvalidInputError, match="no view named"):
            views.views_status(ledger, "nope")


def test_unknown_event_types_are_skipped_and_counted(sqlite_url: str) -> None:
    with dspy_ledger.open(sqlite_url) as ledger:
        record_prediction(ledger, actor="a", calls=[("m1", 0.25, False)], at=T0)
        projection = open_view(ledger.app, "cost")
        batch = ledger.app.recorder.select_notifications(start=1, limit=100)
        items = [projection.reader.decode(n) for n in batch]
        items.insert(1, (0, "SomethingFromTheFuture", None))
        from eventsourcing.persistence import Tracking

        projection.view.process(items, Tracking(projection.view.tracking_name, batch[-1].id))
        assert projection.view.skipped() == {"SomethingFromTheFuture": 1}
        assert views.cost_report(ledger).total.cost_usd == pytest.approx(0.25)


def test_every_view_has_both_backends() -> None:
    assert set(VIEW_NAMES) == set(VIEW_CLASSES) == {"cost", "accuracy", "lineage", "audit"}


history = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob"]),
        st.lists(
            st.tuples(st.sampled_from(["m1", "m2"]), st.floats(0, 1), st.booleans()), max_size=3
        ),
        st.integers(0, 5),
        st.booleans(),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=history, chunk=st.integers(1, 7), data=st.data())
def test_incremental_views_equal_rebuilt_views_and_as_of_equals_prefix(
    history: list[tuple[str, list[tuple[str, float, bool]], int, bool]],
    chunk: int,
    data: st.DataObject,
) -> None:
    with dspy_ledger.open("sqlite:///:memory:", actor="tester") as ledger:
        incremental = {name: open_view(ledger.app, name) for name in VIEW_NAMES}
        for actor, calls, day, feedback in history:
            prediction_id = record_prediction(
                ledger, actor=actor, calls=calls, at=T0 + timedelta(days=day)
            )
            if feedback:
                ledger.record_feedback(prediction_id, score=1.0, by=actor)
            if day == 3:
                views.set_price(
                    ledger,
                    calls[0][0] if calls else "m1",
                    input_usd_per_1m=day,
                    output_usd_per_1m=1,
                    effective_from="2025-01-02",
                )
            for projection in incremental.values():
                catch_up(projection, batch_size=chunk)
        for name, projection in incremental.items():
            fresh = open_memory_view(ledger.app, name)
            rebuild(fresh, batch_size=10_000)
            assert view_rows(projection) == view_rows(fresh)
        last = ledger.app.last_position()
        p = data.draw(st.integers(1, last))
        billed = sum(
            e.data["cost_usd"] or 0.0 for e in ledger.events(stop=p) if e.type == "ModelExecuted"
        )
        assert views.cost_report(ledger, as_of=p).total.cost_usd == pytest.approx(billed, abs=1e-9)
        assert views.audit_report(ledger, "alice", as_of=p).entries == [
            e for e in views.audit_report(ledger, "alice").entries if e.position <= p
        ]


def test_views_read_ledgers_holding_compressed_and_plain_events(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger.compression import COMPRESSION_ENV_VAR

    for setting, at in (("none", T0), ("zlib", T0 + timedelta(days=1)), ("none", T0)):
        monkeypatch.setenv(COMPRESSION_ENV_VAR, setting)
        with dspy_ledger.open(ledger_url, actor=setting) as ledger:
            record_prediction(ledger, actor=setting, calls=[("m1", 0.25, False)], at=at)
    monkeypatch.setenv(COMPRESSION_ENV_VAR, "none")
    with dspy_ledger.open(ledger_url) as ledger:
        report = views.cost_report(ledger, by=["actor", "day"])
        rows = {(r.group["actor"], r.group["day"]): r.calls for r in report.rows}
        assert report.total.cost_usd == pytest.approx(0.75)
        assert rows == {("none", T0.date().isoformat()): 2, ("zlib", "2025-01-02"): 1}


def test_the_fast_field_reader_gives_what_the_mapper_gives(ledger_url: str) -> None:
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        with ledger.instrument(), dspy.context(lm=DummyLM([{"answer": "4"}] * 3)):
            for i in range(3):
                dspy.Predict("question -> answer")(question=f"q{i}")
        predicted = record_prediction(ledger, actor="alice", calls=[("m1", 0.5, False)], at=T0)
        ledger.record_feedback(predicted, score=1.0, label="good")
        for name in VIEW_NAMES:
            reader = open_view(ledger.app, name).reader
            assert reader.fast
            fast = reader.items(reader._fetch(1, 2**62, 1000))
            mapped = [reader.decode(n) for n in ledger.app.notifications()]
            # Events of a type the view does not read are skipped either way.
            read = [item for item in mapped if item[1] in reader.fields]
            assert [item for item in fast if item[1] in reader.fields] == read, name
            assert len(fast) == len(mapped) and any(item[2] for item in read)


def index_names(projection: Any) -> set[str]:
    """The names of the indexes on a view's tables, as the database lists them."""
    view = projection.view
    if isinstance(view, VIEW_CLASSES[view.view_name][0]):
        rows = view.rows("SELECT name FROM sqlite_master WHERE type = 'index'")
        return {str(r["name"]) for r in rows}
    rows = view.rows(
        "SELECT indexname AS name FROM pg_indexes WHERE schemaname = ?",
        (view.datastore.schema,),
    )
    return {str(r["name"]) for r in rows}


def test_a_rebuild_builds_the_indexes_it_dropped(ledger_url: str) -> None:
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        record_prediction(ledger, actor="alice", calls=[("m1", 0.1, False)], at=T0)
        for name in VIEW_NAMES:
            projection = open_view(ledger.app, name)
            wanted = set(projection.view.indexes)
            assert wanted <= index_names(projection)
            projection.view.reset()
            assert not wanted & index_names(projection)
            # A rebuild that stopped half way: opening the view builds them again.
            assert wanted <= index_names(open_view(ledger.app, name))
            projection.view.reset()
            assert rebuild(projection) == ledger.app.last_position()
            assert wanted <= index_names(projection)
        assert [e.event_type for e in views.audit_report(ledger, "alice").entries] == [
            "PredictionStarted",
            "ModelExecuted",
            "PredictionCompleted",
        ]


@pytest.mark.parametrize("enabled", [True, False])
def test_catch_up_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    with dspy_ledger.open("sqlite:///:memory:", actor="tester") as ledger:
        record_prediction(ledger, actor="alice", calls=[("m1", 0.1, False)], at=T0)
        was = gc.isenabled()
        try:
            gc.enable() if enabled else gc.disable()
            with collector_paused():
                assert rebuild(open_view(ledger.app, "cost")) == ledger.app.last_position()
                assert not gc.isenabled()  # the rebuild's own pause ended; this one holds
            assert gc.isenabled() is enabled
            assert catch_up(open_view(ledger.app, "audit")) == ledger.app.last_position()
            assert gc.isenabled() is enabled
        finally:
            gc.enable() if was else gc.disable()
