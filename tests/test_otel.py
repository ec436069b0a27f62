"""OpenTelemetry spans and metrics from the recorder, linked both ways with the ledger.

Spans go to the SDK's in-memory exporter and metrics to its in-memory reader; DSPy
runs for real with ``DummyLM`` (or the simulated model server for usage and cost).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import dspy_ledger
from dspy_ledger import Ledger
from dspy_ledger.simulated_model import SimulatedModelServer, register_simulated_prices
from dspy_ledger.telemetry import TelemetrySettings, run_span
from ledger.reading import RecordedEvent
from tests.helpers import events_of


@dataclass
class Traced:
    ledger: Ledger
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    provider: TracerProvider

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name.startswith(prefix)]

    def metric(self, name: str) -> list[tuple[dict[str, object], float]]:
        data = self.reader.get_metrics_data()
        points: list[tuple[dict[str, object], float]] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            value = getattr(point, "value", None)
                            if value is None:
                                value = point.count  # type: ignore[union-attr]
                            points.append((dict(point.attributes or {}), value))
        return points


def open_traced(url: str, *, capture_content: bool = False) -> Traced:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    settings = TelemetrySettings(
        tracer_provider=provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
        capture_content=capture_content,
    )
    ledger = dspy_ledger.open(url, actor="tester", otel=settings)
    ledger.instrument()
    return Traced(ledger, exporter, reader, provider)


@pytest.fixture
def traced(sqlite_url: str) -> Iterator[Traced]:
    opened = open_traced(sqlite_url)
    yield opened
    opened.ledger.close()


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def answers(n: int, **fields: str) -> DummyLM:
    return DummyLM([dict(fields) for _ in range(n)])


def first(events: list[RecordedEvent], event_type: str) -> RecordedEvent:
    return next(e for e in events if e.type == event_type)


@pytest.fixture
def traced_on_each_backend(ledger_url: str) -> Iterator[Traced]:
    opened = open_traced(ledger_url)
    yield opened
    opened.ledger.close()


def test_a_predict_is_a_root_span_with_an_lm_span_and_events_point_at_them(
    traced_on_each_backend: Traced,
) -> None:
    traced = traced_on_each_backend
    with dspy.context(lm=answers(1, answer="Paris")):
        dspy.Predict("question -> answer")(question="Capital of France?")

    (root,) = traced.named("predict ")
    (lm,) = traced.named("chat ")
    assert root.name == "predict Predict" and root.parent is None
    assert parent_of(lm) == span_id(root)
    events = events_of(traced.ledger)
    started, executed = first(events, "PredictionStarted"), first(events, "ModelExecuted")
    completed = first(events, "PredictionCompleted")
    assert root.attributes is not None and lm.attributes is not None
    assert root.attributes["dspy_ledger.stream_id"] == started.stream_id
    assert root.attributes["dspy_ledger.kind"] == "prediction"
    assert (started.trace_id, started.span_id) == hex_ids(root)
    assert (completed.trace_id, completed.span_id) == hex_ids(root)
    assert (executed.trace_id, executed.span_id) == hex_ids(lm)
    assert lm.attributes["gen_ai.operation.name"] == "chat"
    assert lm.attributes["gen_ai.request.model"] == "dummy"
    assert lm.attributes["gen_ai.provider.name"] == "DummyLM"
    assert lm.attributes["gen_ai.system"] == "DummyLM"
    # Message contents stay off spans unless the user opts in.
    for span in traced.spans():
        assert span.attributes is not None
        assert not {"gen_ai.input.messages", "gen_ai.output.messages"} & set(span.attributes)
        assert not {"dspy_ledger.inputs", "dspy_ledger.outputs"} & set(span.attributes)
        assert "Capital of France" not in str(dict(span.attributes))


def test_an_lm_called_outside_any_module_is_a_prediction_span_of_its_own(
    traced: Traced,
) -> None:
    answers(1, answer="a")("hello")

    (call,) = traced.spans()
    assert call.name == "chat dummy" and call.parent is None
    (started,) = [e for e in events_of(traced.ledger) if e.type == "PredictionStarted"]
    assert call.attributes is not None
    assert call.attributes["dspy_ledger.stream_id"] == started.stream_id
    assert (started.trace_id, started.span_id) == hex_ids(call)
    assert traced.metric("dspy_ledger.predictions") == [
        ({"dspy_ledger.program": "lm:dummy", "dspy_ledger.status": "ok"}, 1)
    ]


def test_chain_of_thought_nests_its_predict_and_lm_spans(traced: Traced) -> None:
    with dspy.context(lm=answers(1, reasoning="r", answer="a")):
        dspy.ChainOfThought("question -> answer")(question="q")

    (root,) = traced.named("predict ")
    (inner,) = traced.named("module ")
    (lm,) = traced.named("chat ")
    assert root.name == "predict ChainOfThought"
    assert inner.name == "module Predict"
    assert parent_of(inner) == span_id(root)
    assert parent_of(lm) == span_id(inner)
    assert {hex_ids(s)[0] for s in traced.spans()} == {hex_ids(root)[0]}


def test_react_tool_calls_are_execute_tool_spans_in_the_prediction_trace(traced: Traced) -> None:
    def lookup(city: str) -> str:
        """Population of a city."""
        return f"{city} has 2 million people"

    lm = DummyLM(
        [
            {"next_thought": "look", "next_tool_name": "lookup", "next_tool_args": {"city": "P"}},
            {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "from the tool", "answer": "2 million"},
        ]
    )
    with dspy.context(lm=lm):
        dspy.ReAct("question -> answer", tools=[lookup], max_iters=3)(question="How big?")

    (root,) = traced.named("predict ")
    tools = traced.named("execute_tool ")
    assert [t.name for t in tools] == ["execute_tool lookup", "execute_tool finish"]
    assert tools[0].attributes is not None
    assert tools[0].attributes["gen_ai.tool.name"] == "lookup"
    assert tools[0].attributes["gen_ai.operation.name"] == "execute_tool"
    assert len(traced.named("chat ")) == 3
    by_id = {span_id(s): s for s in traced.spans()}
    for span in traced.spans():
        if span is root:
            continue
        ancestor = span
        while ancestor.parent is not None and parent_of(ancestor) in by_id:
            ancestor = by_id[parent_of(ancestor)]  # type: ignore[index]
        assert ancestor is root


def test_a_failing_prediction_span_has_error_status_and_an_exception_event(
    traced: Traced,
) -> None:
    class Broken(dspy.Module):
        def forward(self, question: str) -> None:
            raise KeyError("no such record")

    with pytest.raises(KeyError):
        Broken()(question="q")

    (root,) = traced.named("predict ")
    assert root.status.status_code is StatusCode.ERROR
    (event,) = [e for e in root.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "KeyError"
    assert "no such record" not in str(dict(event.attributes))  # contents are opt-in
    failed = first(events_of(traced.ledger), "PredictionFailed")
    assert (failed.trace_id, failed.span_id) == hex_ids(root)
    (point,) = traced.metric("dspy_ledger.predictions")
    program = Broken.__qualname__
    assert point == ({"dspy_ledger.program": program, "dspy_ledger.status": "error"}, 1)


def test_interleaved_async_predictions_each_get_their_own_trace(traced: Traced) -> None:
    async def run() -> None:
        with dspy.context(lm=answers(2, reasoning="r", answer="yes")):
            program = dspy.ChainOfThought("question -> answer")
            await asyncio.gather(program.acall(question="a"), program.acall(question="b"))

    asyncio.run(run())
    roots = traced.named("predict ")
    assert len(roots) == 2
    assert len({hex_ids(r)[0] for r in roots}) == 2
    by_id = {span_id(s): s for s in traced.spans()}
    for lm in traced.named("chat "):
        inner = by_id[parent_of(lm)]  # type: ignore[index]
        assert inner.name == "module Predict"
        assert hex_ids(lm)[0] == hex_ids(by_id[parent_of(inner)])[0]  # type: ignore[index]
    events = events_of(traced.ledger)
    streams = {r.attributes["dspy_ledger.stream_id"]: hex_ids(r) for r in roots}  # type: ignore[index]
    for event in events:
        if event.type in ("PredictionStarted", "PredictionCompleted"):
            assert (event.trace_id, event.span_id) == streams[event.stream_id]


def test_evaluation_threads_make_prediction_spans_under_the_evaluation_span(
    traced: Traced,
) -> None:
    devset = [dspy.Example(question=f"q{i}", answer="a").with_inputs("question") for i in range(8)]
    with dspy.context(lm=answers(8, answer="a")):
        dspy.Evaluate(devset=devset, num_threads=4, display_progress=False)(
            dspy.Predict("question -> answer"), metric=lambda e, p, t=None: e.answer == p.answer
        )

    (evaluation,) = traced.named("evaluate ")
    assert evaluation.name == "evaluate Predict" and evaluation.parent is None
    roots = traced.named("predict ")
    assert len(roots) == 8
    assert {parent_of(r) for r in roots} == {span_id(evaluation)}
    assert {hex_ids(s)[0] for s in traced.spans()} == {hex_ids(evaluation)[0]}
    events = events_of(traced.ledger)
    started = first(events, "EvaluationStarted")
    assert evaluation.attributes is not None
    assert evaluation.attributes["dspy_ledger.stream_id"] == started.stream_id
    assert (started.trace_id, started.span_id) == hex_ids(evaluation)
    (point,) = traced.metric("dspy_ledger.predictions")
    assert point == ({"dspy_ledger.program": "Predict", "dspy_ledger.status": "ok"}, 8)


def test_compile_is_a_run_span_over_its_predictions(traced: Traced) -> None:
    trainset = [
        dspy.Example(question=f"q{i}", answer="a").with_inputs("question") for i in range(3)
    ]
    with dspy.context(lm=answers(20, answer="a")):
        dspy.BootstrapFewShot(
            metric=lambda e, p, t=None: True, max_bootstrapped_demos=1, max_labeled_demos=1
        ).compile(dspy.Predict("question -> answer"), trainset=trainset)

    compiles = traced.named("compile ")
    outer = next(s for s in compiles if s.name == "compile BootstrapFewShot")
    assert outer.parent is None
    assert outer.attributes is not None
    assert outer.attributes["dspy_ledger.stream_type"] == "OptimizationRun"
    roots = traced.named("predict ")
    assert roots
    assert {hex_ids(s)[0] for s in traced.spans()} == {hex_ids(outer)[0]}
    started = [e for e in events_of(traced.ledger) if e.type == "OptimizationStarted"]
    ids = {e.stream_id: (e.trace_id, e.span_id) for e in started}
    assert ids[str(outer.attributes["dspy_ledger.stream_id"])] == hex_ids(outer)


def test_a_prediction_joins_the_applications_active_span(traced: Traced) -> None:
    tracer = traced.provider.get_tracer("web-app")
    with (
        tracer.start_as_current_span("GET /answer") as request,
        dspy.context(lm=answers(1, answer="a")),
    ):
        dspy.Predict("question -> answer")(question="q")

    (root,) = traced.named("predict ")
    assert parent_of(root) == request.get_span_context().span_id
    started = first(events_of(traced.ledger), "PredictionStarted")
    assert started.trace_id == format(request.get_span_context().trace_id, "032x")


def test_a_replay_run_span_parents_the_predictions_made_inside_it(traced: Traced) -> None:
    with (
        run_span(
            "replay",
            "Predict",
            {"dspy_ledger.stream_id": "run-1"},
            tracer_provider=traced.provider,
        ) as run,
        dspy.context(lm=answers(1, answer="a")),
    ):
        dspy.Predict("question -> answer")(question="q")

    (replay,) = traced.named("replay ")
    assert replay.attributes is not None and replay.attributes["dspy_ledger.kind"] == "replay"
    (root,) = traced.named("predict ")
    assert parent_of(root) == run.get_span_context().span_id == span_id(replay)


def test_message_contents_go_on_spans_only_when_opted_in_and_never_secrets(
    sqlite_url: str,
) -> None:
    traced = open_traced(sqlite_url, capture_content=True)
    lm = answers(1, answer="Paris")
    lm.kwargs["api_key"] = "sk-very-secret-key"
    lm.kwargs["temperature"] = 0.25
    try:
        with dspy.context(lm=lm):
            dspy.Predict("question -> answer")(question="Capital of France?")
    finally:
        traced.ledger.close()
    (root,) = traced.named("predict ")
    (call,) = traced.named("chat ")
    assert root.attributes is not None and call.attributes is not None
    assert "Capital of France?" in str(root.attributes["dspy_ledger.inputs"])
    assert "Paris" in str(root.attributes["dspy_ledger.outputs"])
    assert "Capital of France?" in str(call.attributes["gen_ai.input.messages"])
    assert "Paris" in str(call.attributes["gen_ai.output.messages"])
    assert call.attributes["gen_ai.request.temperature"] == 0.25
    for span in traced.spans():
        assert "sk-very-secret-key" not in str(dict(span.attributes or {}))


def test_usage_cost_and_recording_metrics_from_a_real_model_call(sqlite_url: str) -> None:
    register_simulated_prices(include_litellm=False)
    traced = open_traced(sqlite_url)
    with SimulatedModelServer() as server:
        lm = dspy.LM(
            "openai/sim-qa-small",
            api_base=server.api_base,
            api_key="sk-test",
            cache=False,
            num_retries=0,
            max_tokens=64,
        )
        with dspy.context(lm=lm):
            dspy.Predict("question -> answer")(question="What is 2 + 3?")
    entry = lm.history[-1]
    (call,) = traced.named("chat ")
    assert call.attributes is not None
    assert call.attributes["gen_ai.provider.name"] == "openai"
    assert call.attributes["gen_ai.request.model"] == "openai/sim-qa-small"
    assert call.attributes["gen_ai.request.max_tokens"] == 64
    assert call.attributes["gen_ai.response.model"] == entry["response_model"]
    assert call.attributes["gen_ai.usage.input_tokens"] == entry["usage"]["prompt_tokens"]
    assert call.attributes["gen_ai.usage.output_tokens"] == entry["usage"]["completion_tokens"]
    by_model = {"gen_ai.request.model": "openai/sim-qa-small", "dspy_ledger.program": "Predict"}
    assert traced.metric("dspy_ledger.lm.calls") == [(by_model, 1)]
    tokens = {a["gen_ai.token.type"]: v for a, v in traced.metric("dspy_ledger.lm.tokens")}
    assert tokens == {
        "input": entry["usage"]["prompt_tokens"],
        "output": entry["usage"]["completion_tokens"],
    }
    ((_, cost),) = traced.metric("dspy_ledger.lm.cost")
    assert cost == pytest.approx(entry["cost"])
    assert [count for _, count in traced.metric("dspy_ledger.recording.latency")] == [1]
    assert [count for _, count in traced.metric("dspy_ledger.recording.queue_depth")] == [1]
    assert traced.metric("dspy_ledger.recording.failures") == [({}, 0)]
    traced.ledger.close()


def test_without_any_opentelemetry_set_up_there_are_no_spans_and_no_ids(sqlite_url: str) -> None:
    ledger = dspy_ledger.open(sqlite_url, actor="tester")
    ledger.instrument()
    try:
        assert ledger._recorder.telemetry.tracer() is None
        assert not ledger._recorder.telemetry.metrics.enabled()
        with dspy.context(lm=answers(1, answer="a")):
            dspy.Predict("question -> answer")(question="q")
        events = events_of(ledger)
        assert events and all(e.trace_id is None and e.span_id is None for e in events)
        assert ledger.stats().dropped_spans == 0
    finally:
        ledger.close()
