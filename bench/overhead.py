"""Section 1: what recording adds to a DSPy prediction.

Bare DSPy, dspy-ledger (sync and async durability, SQLite and PostgreSQL), and, when
they are installed (``pip install -e ".[bench]"``), DSPy with a no-op callback, the
OpenInference instrumentor with an in-memory OpenTelemetry exporter, and MLflow's
``mlflow.dspy.autolog()``, all measured in turn, round after round, in one process.

Two figures per variant: the *hot path* (the time the program itself sees per
prediction, while any background writer runs alongside) and *until written* (the same
predictions plus the wait until everything they recorded is committed).
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from bench.common import (
    WRITERS,
    Row,
    backends,
    bench_recorder,
    configure_dspy,
    fresh_store,
    make_program,
    median,
    memory_folder,
    mlflow_experiment,
    mlflow_flush,
    predict_many,
    row,
    writer_choice,
    writer_name,
)

SECTION = "1. Recording overhead per prediction"
TARGETS = {"async/sqlite": "<= 1.15x bare", "sync/sqlite": "<= 1.50x bare"}
#: Sync recording into a SQLite file on a memory file system (no disk to wait for).
SYNC_IN_MEMORY = "sync/sqlite, file in memory (no disk)"


def _no_cpu() -> float:
    """No CPU spent outside this process."""
    return 0.0


class Enabled(NamedTuple):
    """A variant switched on: how to switch it off, wait until written, and how much CPU
    it has spent outside this process so far (the writer process's)."""

    disable: Callable[[], None]
    wait: Callable[[], None]
    elsewhere_cpu: Callable[[], float] = _no_cpu


#: A variant: ``enable()`` switches it on.
Variant = Callable[[], Enabled]


def _nothing() -> None:
    """Nothing to undo or wait for."""


def process_cpu(process: Any) -> float:
    """CPU seconds a child process (anything with a ``pid``) has used so far (0 if None)."""
    if process is None:
        return 0.0
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # not Linux, or already gone
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writer_process_cpu(ledger: Any) -> float:
    """CPU seconds the ledger's writer process has used so far (0 without one)."""
    return process_cpu(getattr(ledger._writer, "_process", None))


def _ledger_variant(
    stack: ExitStack, backend: str, mode: str, folder: str | None = None
) -> Variant:
    import dspy_ledger

    url = stack.enter_context(fresh_store(backend, folder))
    with writer_choice(mode):
        durability = "sync" if mode == "sync" else "async"
        ledger = stack.enter_context(dspy_ledger.open(url, durability=durability))  # type: ignore[arg-type]

    def enable() -> Enabled:
        ledger.instrument()
        return Enabled(ledger.uninstrument, ledger.flush, lambda: writer_process_cpu(ledger))

    return enable


def _recorder_alone_variant() -> Variant:
    """The recorder on the calling thread with its drafts thrown away: no writer at all."""
    from commands import hooks

    recorder = bench_recorder()

    def enable() -> Enabled:
        hooks.attach(recorder)
        return Enabled(lambda: hooks.detach(recorder), _nothing)

    return enable


def _noop_callback_variant() -> Variant:
    import dspy
    from dspy.utils.callback import BaseCallback

    def enable() -> Enabled:
        dspy.settings.configure(callbacks=[BaseCallback()])
        return Enabled(lambda: dspy.settings.configure(callbacks=[]), _nothing)

    return enable


def _openinference_variant() -> Variant | None:
    try:
        from openinference.instrumentation.dspy import DSPyInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
    except ImportError:
        return None
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = DSPyInstrumentor()

    def enable() -> Enabled:
        instrumentor.instrument(tracer_provider=provider)

        def disable() -> None:
            instrumentor.uninstrument()
            exporter.clear()

        return Enabled(disable, _nothing)

    return enable


def _mlflow_variant(stack: ExitStack) -> Variant | None:
    try:
        import mlflow
        import mlflow.dspy
    except ImportError:
        return None
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="dspy-ledger-mlflow-"))
    mlflow_experiment(mlflow, folder, "dspy-ledger-bench")

    def enable() -> Enabled:
        mlflow.dspy.autolog()
        return Enabled(lambda: mlflow.dspy.autolog(disable=True), lambda: mlflow_flush(mlflow))

    return enable


@contextmanager
def _variants(quick: bool) -> Iterator[dict[str, Variant | None]]:
    with ExitStack() as stack:
        variants: dict[str, Variant | None] = {
            "bare": None,
            "recorder alone, drafts discarded": _recorder_alone_variant(),
        }
        for backend in backends():
            for mode in WRITERS:
                name = writer_name(mode, backend)
                variants[name] = _ledger_variant(stack, backend, mode)
        memory = memory_folder()
        if memory is not None:
            # The same sync recording with no disk under SQLite's sync: what the code
            # costs, apart from what the disk does (the rest of sync/sqlite).
            variants[SYNC_IN_MEMORY] = _ledger_variant(stack, "sqlite", "sync", memory)
        if not quick:
            variants["peer: no-op DSPy callback"] = _noop_callback_variant()
            openinference = _openinference_variant()
            if openinference is not None:
                variants["peer: OpenInference + in-memory OTel"] = openinference
            else:
                print("bench: openinference-instrumentation-dspy not installed; skipped.")
            with contextlib.suppress(Exception):
                mlflow_variant = _mlflow_variant(stack)
                if mlflow_variant is not None:
                    variants["peer: MLflow dspy.autolog (SQLite)"] = mlflow_variant
                else:
                    print("bench: mlflow not installed; skipped.")
        yield variants


METRICS = ("hot path", "until written", "program thread CPU", "CPU until written")


def _measure(program: Any, variant: Variant | None, count: int, offset: int) -> dict[str, float]:
    """Microseconds per prediction: wall time of the loop, wall time until everything is
    written, the CPU time of the program's own thread in the loop, and the CPU time
    (every thread, and the writer process) until everything is written."""
    gc.collect()  # every variant starts from a clean heap, not the previous one's garbage
    disable, wait, elsewhere_cpu = variant() if variant is not None else Enabled(_nothing, _nothing)
    try:
        cpu = time.process_time() + elsewhere_cpu()
        thread_cpu = time.thread_time()
        started = time.perf_counter()
        predict_many(program, count, offset)
        hot = time.perf_counter() - started
        thread_cpu = time.thread_time() - thread_cpu
        wait()
        written = time.perf_counter() - started
        time.sleep(0.05)  # the writer process's counters settle after its last commit
        cpu = time.process_time() + elsewhere_cpu() - cpu
    finally:
        disable()
    per = 1e6 / count
    return {
        "hot path": hot * per,
        "until written": written * per,
        "program thread CPU": thread_cpu * per,
        "CPU until written": cpu * per,
    }


def commit_latency(count: int) -> float:
    """Microseconds for one small SQLite transaction committed to disk (WAL, fsync).

    The floor of any write that is durable before the call returns: what ``sync``
    durability pays per prediction on SQLite, whatever the recorder does.
    """
    import sqlite3

    with tempfile.TemporaryDirectory(prefix="dspy-ledger-fsync-") as folder:
        connection = sqlite3.connect(f"{folder}/probe.db", isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE probe (value BLOB)")
        started = time.perf_counter()
        for _ in range(count):
            connection.execute("BEGIN")
            connection.execute("INSERT INTO probe VALUES (?)", (b"x" * 2000,))
            connection.execute("COMMIT")
        elapsed = time.perf_counter() - started
        connection.close()
    return elapsed / count * 1e6


def run(quick: bool) -> list[Row]:
    """Measure every variant in turn, ``rounds`` times; report medians and ratios."""
    configure_dspy()
    program = make_program()
    count, rounds = (40, 3) if quick else (400, 7)
    with _variants(quick) as variants:
        for variant in variants.values():  # warm every path once, untimed
            _measure(program, variant, 10, 0)
        seen: dict[str, dict[str, list[float]]] = {
            name: {metric: [] for metric in METRICS} for name in variants
        }
        offset = 0
        for _ in range(rounds):
            for name, variant in variants.items():
                offset += count
                for metric, value in _measure(program, variant, count, offset).items():
                    seen[name][metric].append(value)
    bare = {metric: median(seen["bare"][metric]) for metric in METRICS}
    rows = [
        row(SECTION, "bare DSPy ChainOfThought + DummyLM", bare["hot path"], "us/prediction"),
        row(SECTION, "bare DSPy (CPU)", bare["CPU until written"], "us CPU/prediction"),
        row(
            SECTION,
            "reference: one SQLite commit to disk (WAL, fsync)",
            commit_latency(20 if quick else 200),
            "us/commit",
            baseline=bare["hot path"],
        ),
    ]
    for name in variants:
        if name == "bare":
            continue
        for metric in METRICS:
            value = median(seen[name][metric])
            if metric == "until written" and value <= median(seen[name]["hot path"]) * 1.02:
                continue  # nothing left to write after the loop: same as the hot path
            rows.append(
                row(
                    SECTION,
                    f"{name} ({metric})",
                    value,
                    "us CPU/prediction" if "CPU" in metric else "us/prediction",
                    baseline=bare[metric],
                    target=TARGETS.get(name) if metric != "until written" else None,
                )
            )
    return rows
