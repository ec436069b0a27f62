"""Verifying range by range, side by side, gives exactly what the one-pass definitions give."""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from dspy_ledger.ledger import Ledger
from ledger.domain import Dataset
from ledger.errors import InvalidInputError
from ledger.integrity.leaf import event_leaf_hash
from ledger.integrity.merkle import root_hash
from ledger.integrity.parallel import (
    BackgroundCatchUp,
    PostgresRangeReader,
    RangeScanner,
    ScanSettings,
)
from ledger.integrity.ranges import Batch, check_range, combine_ranges, plan_ranges
from ledger.integrity.verify import VerifyReport, verify_log
from ledger.integrity.worker import CATCH_UP_NICENESS, CATCH_UP_WRITE_BATCH
from tests.test_cli import cli

PARALLEL = ScanSettings(workers=2, width=4)
ONE_RANGE = ScanSettings(workers=1, width=1 << 20)


def _fill(ledger: Ledger, count: int) -> None:
    if count:
        ledger.app.save_aggregates(
            *[
                Dataset.register(
                    digest=uuid.uuid4().hex, example_digests=[], examples=[{"i": i}], actor="t"
                )
                for i in range(count)
            ]
        )


def _summary(report: VerifyReport) -> tuple[Any, ...]:
    return (
        report.ok,
        report.events_checked,
        report.tree_size,
        report.root_hash,
        report.checkpoints_checked,
        report.untracked_events,
        report.problem,
    )


@pytest.mark.parametrize("events", [0, 1, 2, 3, 5, 8, 13, 33])
def test_parallel_ranges_agree_with_one_range_and_with_the_leaf_by_leaf_pass(
    ledger_url: str, events: int
) -> None:
    with Ledger(ledger_url, actor="t") as ledger:
        ledger.stop_auto_checkpoints()
        _fill(ledger, events // 2)
        ledger.checkpoint()  # recorded checkpoints at sizes inside ranges and on their edges
        _fill(ledger, events - events // 2)
        ledger.checkpoint()
        _fill(ledger, 3)  # stored after the log's last position: untracked
        log = ledger.merkle_log
        with RangeScanner(ledger.app, log, PARALLEL) as scanner:
            several = "processes" if ledger.store.backend == "sqlite" else "threads"
            one_range = log.recorder.leaf_count() <= 4
            assert scanner.mode == ("this process" if one_range else several)
        parallel = verify_log(ledger.app, log, update=False, settings=PARALLEL)
        single = verify_log(ledger.app, log, update=False, settings=ONE_RANGE)
        leafwise = verify_log(ledger.app, log, update=False, batched=False)
        assert parallel.ok and parallel.untracked_events == 4  # with the last checkpoint
        assert parallel.checkpoints_checked == (1 if events < 2 else 2)  # size 0: nothing to check
        assert _summary(parallel) == _summary(single) == _summary(leafwise)


def test_a_tampered_range_in_the_middle_is_named_exactly(sqlite_url: str) -> None:
    with Ledger(sqlite_url, actor="t") as ledger:
        _fill(ledger, 30)
        ledger.merkle_log.catch_up()
        with ledger.app.recorder.datastore.transaction(commit=True) as cursor:  # type: ignore[attr-defined]
            cursor.execute("UPDATE stored_events SET state = state || x'20' WHERE rowid = 18")
        report = verify_log(ledger.app, ledger.merkle_log, update=False, settings=PARALLEL)
        assert report.problem is not None
        assert (report.problem.kind, report.problem.position) == ("modified", 18)


def test_progress_counts_every_event_once(sqlite_url: str) -> None:
    seen: list[int] = []
    with Ledger(sqlite_url, actor="t") as ledger:
        _fill(ledger, 21)
        ledger.merkle_log.catch_up()
        _fill(ledger, 2)
        log = ledger.merkle_log
        verify_log(ledger.app, log, update=False, progress=seen.append, settings=PARALLEL)
    assert sum(seen) == 23 and len(seen) > 1


def test_a_worker_that_cannot_start_leaves_the_work_to_this_process(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger(sqlite_url, actor="t") as ledger:
        _fill(ledger, 17)
        log = ledger.merkle_log
        log.catch_up()
        expected = verify_log(ledger.app, log, update=False, batched=False)
        monkeypatch.setattr(sys, "executable", "/bin/false")
        with RangeScanner(ledger.app, log, PARALLEL) as scanner:
            assert scanner.mode == "processes"
            scanned = scanner.scan(log.state().last_position, [])
            assert scanner.mode == "this process"
        assert scanned is not None
        assert scanned.frontier.root().hex() == expected.root_hash


@contextmanager
def _background_catch_up(ledger: Ledger) -> Iterator[BackgroundCatchUp]:
    """The ledger's log caught up by a :class:`BackgroundCatchUp`, closed afterwards."""
    ledger.stop_auto_checkpoints()
    catch_up = BackgroundCatchUp(ledger.app, ledger.merkle_log)
    try:
        yield catch_up
    finally:
        catch_up.close()


def test_background_catch_up_hashes_in_a_worker_process_or_else_here(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger(ledger_url, actor="t") as ledger:
        log = ledger.merkle_log
        with _background_catch_up(ledger) as catch_up:
            _fill(ledger, 9)
            assert catch_up() == 9
            assert catch_up.worker_running == (ledger.store.backend == "sqlite")
            if catch_up.worker_running:  # it yields the CPU to the program
                worker: Any = catch_up._worker
                lower = min(19, os.getpriority(os.PRIO_PROCESS, 0) + CATCH_UP_NICENESS)
                assert os.getpriority(os.PRIO_PROCESS, worker._process.pid) == lower
            _fill(ledger, 2 * CATCH_UP_WRITE_BATCH + 4)  # several transactions
            assert catch_up() == 2 * CATCH_UP_WRITE_BATCH + 4
            monkeypatch.setattr(sys, "executable", "/bin/false")
            catch_up.close()  # the next call starts a worker that cannot run
            _fill(ledger, 2)
            assert catch_up() == 2
            assert not catch_up.worker_running
        total = 2 * CATCH_UP_WRITE_BATCH + 15
        assert log.state().frontier.size == total
        report = verify_log(ledger.app, log, update=False)
        assert report.ok and report.events_checked == total and report.untracked_events == 0
        one_pass = verify_log(ledger.app, log, update=False, batched=False)
        assert report.root_hash == one_pass.root_hash == log.state().frontier.root().hex()


class ListReader:
    """Events and leaves held in lists, positions ``10, 20, 30, ...``."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.positions = [10 * (i + 1) for i in range(len(leaves))]
        self.leaves = leaves

    def event_hashes(self, low: int, high: int | None, limit: int) -> Batch:
        chosen = [
            i for i, p in enumerate(self.positions) if p >= low and (high is None or p < high)
        ][:limit]
        return [self.positions[i] for i in chosen], [self.leaves[i] for i in chosen]

    def leaf_hashes(self, start: int, end: int) -> Batch:
        return self.positions[start:end], self.leaves[start:end]


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 200),
    width_bits=st.integers(0, 6),
    batch=st.integers(1, 9),
    cuts=st.lists(st.integers(1, 200), max_size=6),
)
def test_combined_ranges_give_the_rfc_9162_root_at_every_size(
    size: int, width_bits: int, batch: int, cuts: list[int]
) -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(size)]
    reader = ListReader(leaves)
    wanted = sorted({c for c in cuts if c <= size})
    jobs = plan_ranges(
        size,
        1 << width_bits,
        10 * size,
        wanted,
        lambda indexes: {i: reader.positions[i] for i in indexes},
    )
    assert jobs is not None
    outcomes = [check_range(reader, job, batch) for job in jobs]
    assert all(outcome.matched for outcome in outcomes)
    combined = combine_ranges(outcomes)
    assert combined.checked == size
    assert combined.frontier.root() == root_hash(leaves)
    assert combined.roots_at == {c: root_hash(leaves[:c]) for c in wanted}


def test_postgresql_hashes_leaves_byte_for_byte_as_python_does(postgres_url: str) -> None:
    topics = ["plain:Topic", "ledger.domain:Événement.Créé", "m:事件.記録", "e:🙂", ""]
    states = [b"", b"{}", bytes(range(256)) * 9, "état".encode()]
    with Ledger(postgres_url, actor="t") as ledger:
        events = [
            StoredEvent(uuid.uuid4(), version, topic, state)
            for topic in topics
            for version, state in zip([1, 2, 300, 2**40], states, strict=True)
        ]
        ledger.app.recorder.insert_events(events)
        log = ledger.merkle_log
        datastore: Any = ledger.app.recorder.datastore  # type: ignore[attr-defined]
        table = ledger.app.recorder.events_table_name  # type: ignore[attr-defined]
        with datastore.get_connection() as connection:
            reader = PostgresRangeReader(connection, datastore, table, log.recorder)  # type: ignore[arg-type]
            positions, hashes = reader.event_hashes(1, None, 1000)
        assert len(hashes) == len(events)
        stored = ledger.app.recorder.select_notifications(start=1, limit=1000)
        assert positions == [n.id for n in stored]
        assert hashes == [
            event_leaf_hash(n.topic, n.originator_id, n.originator_version, n.state) for n in stored
        ]


def test_bad_parallel_settings_are_one_clear_error(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPY_LEDGER_VERIFY_RANGE", "3")
    with pytest.raises(InvalidInputError, match="DSPY_LEDGER_VERIFY_RANGE"):
        ScanSettings.from_environment()
    with Ledger(sqlite_url, actor="t") as ledger:
        _fill(ledger, 2)
    done = cli("verify", "--db", sqlite_url, env={"DSPY_LEDGER_VERIFY_WORKERS": "none"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "dspy-ledger: DSPY_LEDGER_VERIFY_WORKERS='none' is not a valid setting; "
        "give a positive whole number."
    ]
