"""Spans over OTLP/HTTP: to a real receiver on loopback, and to an endpoint that is down.

The receiver is a real HTTP server decoding the OTLP protobuf request, the way a
collector does; the exporter is the real ``opentelemetry-exporter-otlp-proto-http``.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from typer.testing import CliRunner

import dspy_ledger
from dspy_ledger.cli import app
from tests.helpers import events_of


class OTLPReceiver(ThreadingHTTPServer):
    """Accepts ``POST /v1/traces`` and keeps every span it decodes."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[dict[str, object]] = []
        self.service_names: set[str] = set()
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: OTLPReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.server.lock:
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.server.service_names.add(attribute.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.server.spans.append(
                            {
                                "path": self.path,
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "attributes": {
                                    a.key: getattr(a.value, a.value.WhichOneof("value"))
                                    for a in span.attributes
                                },
                            }
                        )
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    server = OTLPReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("DSPY_LEDGER_STATE_DIR", str(path))
    return path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def predict(n: int) -> None:
    with dspy.context(lm=DummyLM([{"answer": "a"} for _ in range(n)])):
        program = dspy.Predict("question -> answer")
        for i in range(n):
            program(question=f"q{i}")


def test_spans_reach_an_otlp_http_receiver_and_lead_to_the_ledger(
    sqlite_url: str, receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "qa-service")
    ledger = dspy_ledger.open(sqlite_url, actor="tester")  # the endpoint alone turns it on
    ledger.instrument()
    predict(2)
    events = events_of(ledger)
    ledger.close()

    assert receiver.service_names == {"qa-service"}
    assert {span["path"] for span in receiver.spans} == {"/v1/traces"}
    roots = [s for s in receiver.spans if str(s["name"]).startswith("predict ")]
    calls = [s for s in receiver.spans if str(s["name"]).startswith("chat ")]
    assert len(roots) == len(calls) == 2
    started = {e.stream_id: e for e in events if e.type == "PredictionStarted"}
    for root in roots:
        attributes = root["attributes"]
        assert isinstance(attributes, dict)
        event = started[attributes["dspy_ledger.stream_id"]]
        assert (event.trace_id, event.span_id) == (root["trace_id"], root["span_id"])
    executed = {(e.trace_id, e.span_id) for e in events if e.type == "ModelExecuted"}
    assert executed == {(c["trace_id"], c["span_id"]) for c in calls}
    assert {c["parent_span_id"] for c in calls} == {r["span_id"] for r in roots}
    with dspy_ledger.open(sqlite_url) as reopened:
        assert reopened.span_delivery() == {"exported_spans": 4, "dropped_spans": 0}


def test_an_unreachable_endpoint_drops_spans_counts_them_and_loses_no_events(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # the queue fills up first
    ledger = dspy_ledger.open(sqlite_url, actor="tester", otel=True)
    ledger.instrument()
    predict(5)  # ten spans: a prediction and its LM call each

    stats = ledger.stats()
    assert stats.by_event_type["PredictionCompleted"] == 5
    assert stats.dropped_spans > 0  # a full queue or a failed export, counted live
    ledger.close()

    with dspy_ledger.open(sqlite_url) as reopened:
        assert reopened.stats().by_event_type["ModelExecuted"] == 5
        assert reopened.span_delivery() == {"exported_spans": 0, "dropped_spans": 10}
    shown = CliRunner().invoke(app, ["stats", "--db", sqlite_url, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["dropped_spans"] == 10
    text = CliRunner().invoke(app, ["stats", "--db", sqlite_url])
    assert "10 spans dropped" in text.output


GLOBAL_PROVIDER_SCRIPT = """
import json, sys, time
import dspy
from dspy.utils.dummies import DummyLM
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import dspy_ledger

set_later = sys.argv[2] == "after-open"
if set_later:
    ledger = dspy_ledger.open(sys.argv[1])
    with dspy.context(lm=DummyLM([{"answer": "a"}])), ledger.instrument():
        dspy.Predict("question -> answer")(question="before any provider")
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
if set_later:
    time.sleep(1.1)  # the global provider is looked up at most once a second
else:
    ledger = dspy_ledger.open(sys.argv[1], otel=True)
assert ledger._owned_tracing is None  # no second exporter beside the application's
ledger.instrument()
with dspy.context(lm=DummyLM([{"answer": "a"}])):
    dspy.Predict("question -> answer")(question="q")
started = [e for e in ledger.events() if e.type == "PredictionStarted"][-1]
ledger.close()
spans = exporter.get_finished_spans()
print(json.dumps({
    "spans": sorted(s.name for s in spans),
    "trace_ids": sorted({format(s.context.trace_id, "032x") for s in spans}),
    "event_trace_id": started.trace_id,
}))
"""


@pytest.mark.parametrize("when", ["before-open", "after-open"])
def test_the_applications_global_tracer_provider_is_used(sqlite_url: str, when: str) -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER_SCRIPT, sqlite_url, when],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).parents[1]),
            **(endpoint if when == "before-open" else {}),
        },
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["spans"] == ["chat dummy", "predict Predict"]
    assert seen["trace_ids"] == [seen["event_trace_id"]]
