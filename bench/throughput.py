"""Section 2: durable throughput, predictions per second fully recorded and committed.

Two figures per store, durability and thread count:

- *end to end*: DSPy predictions (``ChainOfThought`` + ``DummyLM``) run with the ledger
  instrumented, until every one of them is committed; its baseline is bare DSPy on the
  same threads, which bounds it (the program and the writer share one interpreter).
- *ledger capacity*: recorded predictions, each with its LM call, captured once and
  then handed to a fresh ledger's writer from 1 or 4 threads until all are committed:
  how many predictions per second the ledger itself can make durable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from bench.common import (
    WRITERS,
    Row,
    backends,
    bench_recorder,
    compression,
    configure_dspy,
    fresh_store,
    make_program,
    median,
    predict_many,
    row,
    writer_choice,
    writer_name,
    writer_ready,
)

SECTION = "2. Durable throughput"
CAPACITY_TARGETS = {"async/sqlite": ">= 5000/s", "async/postgres": ">= 3000/s"}


def _in_threads(threads: int, total: int, work: Callable[[int, int], None]) -> float:
    """Run ``work(start, count)`` over ``total`` items split across threads; seconds."""
    share = total // threads
    workers = [threading.Thread(target=work, args=(i * share, share)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - started


def capture_drafts(count: int) -> list[Any]:
    """Record ``count`` predictions into a list instead of a store."""
    from commands import hooks

    configure_dspy()
    program = make_program()
    drafts: list[Any] = []
    recorder = bench_recorder(drafts.append)
    hooks.attach(recorder)
    try:
        predict_many(program, count)
    finally:
        hooks.detach(recorder)
    return drafts


def _writer(mode: str, handler: Any, url: str) -> Any:
    from commands.process_writer import ProcessWriter
    from commands.sync_writer import SyncWriter
    from commands.writer import AsyncWriter
    from commands.writer_protocol import WriterConfig

    if mode == "sync":
        return SyncWriter(handler)
    if mode == "async":
        return ProcessWriter(handler, WriterConfig(url, 1_000_000, ("secrets",), None))
    return AsyncWriter(handler)


def _capacity(backend: str, mode: str, threads: int, drafts: list[Any]) -> float:
    from commands.handlers import DraftHandler
    from ledger.application import LedgerApplication
    from ledger.storage import parse_url

    with fresh_store(backend) as url:
        app = LedgerApplication(parse_url(url))
        handler = DraftHandler(app, max_string_bytes=1_000_000)
        writer = _writer(mode, handler, url)
        writer.submit(drafts[0])  # the program version: registered once, untimed
        writer.flush()
        batch = drafts[1:]

        def work(start: int, count: int) -> None:
            for draft in batch[start : start + count]:
                writer.submit(draft)

        started = time.perf_counter()
        _in_threads(threads, len(batch), work)
        writer.flush()
        elapsed = time.perf_counter() - started
        writer.close()
        app.close()
    return (len(batch) // threads * threads) / elapsed


def _writer_startup() -> float:
    """Milliseconds from opening an async ledger until its writer process is ready."""
    import dspy_ledger

    with fresh_store("sqlite") as url:
        started = time.perf_counter()
        with dspy_ledger.open(url, durability="async") as ledger:
            writer_ready(ledger)
            elapsed = time.perf_counter() - started
    return elapsed * 1000


def _end_to_end(backend: str | None, mode: str, threads: int, count: int) -> float:
    import dspy_ledger

    program = make_program()

    def work(start: int, n: int) -> None:
        predict_many(program, n, start)

    if backend is None:
        return count / _in_threads(threads, count, work)
    durability: Literal["sync", "async"] = "sync" if mode == "sync" else "async"
    with (
        fresh_store(backend) as url,
        writer_choice(mode),
        dspy_ledger.open(url, durability=durability) as ledger,
    ):
        writer_ready(ledger)
        ledger.instrument()
        started = time.perf_counter()
        _in_threads(threads, count, work)
        ledger.flush()
        elapsed = time.perf_counter() - started
        ledger.uninstrument()
    return count / elapsed


def run(quick: bool) -> list[Row]:
    """Measure capacity and end-to-end rates, medians of several rounds."""
    configure_dspy()
    rounds = 1 if quick else 3
    capacity_count = 200 if quick else 4000
    e2e_count = 40 if quick else 800
    drafts = capture_drafts(capacity_count + 1)
    rows: list[Row] = []
    thread_counts = (1,) if quick else (1, 4, 8)
    for threads in thread_counts:
        bare = median([_end_to_end(None, "", threads, e2e_count) for _ in range(rounds)])
        rows.append(
            row(SECTION, f"end to end: bare DSPy, {threads} thread(s)", bare, "predictions/s")
        )
        for backend in backends():
            for mode in WRITERS:
                name = writer_name(mode, backend)
                e2e = median(
                    [_end_to_end(backend, mode, threads, e2e_count) for _ in range(rounds)]
                )
                rows.append(
                    row(
                        SECTION,
                        f"end to end: {name}, {threads} thread(s)",
                        e2e,
                        "predictions/s",
                        baseline=bare,
                    )
                )
                capacity = median(
                    [_capacity(backend, mode, threads, drafts) for _ in range(rounds)]
                )
                rows.append(
                    row(
                        SECTION,
                        f"ledger capacity: {name}, {threads} thread(s)",
                        capacity,
                        "predictions/s",
                        target=CAPACITY_TARGETS.get(name),
                    )
                )
    startups = [_writer_startup() for _ in range(rounds)]
    rows.append(
        row(SECTION, "writer process start-up, once per async ledger", median(startups), "ms")
    )
    with compression("zlib"):
        zlib_capacity = median([_capacity("sqlite", "async", 1, drafts) for _ in range(rounds)])
    rows.append(
        row(
            SECTION,
            "ledger capacity: async/sqlite + zlib compression, 1 thread(s)",
            zlib_capacity,
            "predictions/s",
        )
    )
    return rows
