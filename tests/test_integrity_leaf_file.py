"""A SQLite ledger's Merkle log lives in a file of its own: moved, lost, tampered, foreign."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dspy_ledger.checkpointing import CheckpointPolicy
from dspy_ledger.cli import app
from dspy_ledger.ledger import Ledger
from ledger.integrity.hashing import LeafHasher
from ledger.integrity.leaf_file import LEAF_FILE_SUFFIX, LeafFileMismatchError
from ledger.integrity.log import catch_up_log
from ledger.integrity.log_store import SQLiteMerkleRecorder
from ledger.integrity.parallel import BackgroundCatchUp
from ledger.integrity.scan import read_event_rows
from tests.test_integrity import _fill, parallel_verify, proof_verifies  # noqa: F401 - autouse: 2 workers

runner = CliRunner()
EVENTS = 30


def _tables(path: str) -> set[str]:
    with closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def _run(path: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """One statement on a file over a connection of its own, as a tamperer would."""
    with closing(sqlite3.connect(path)) as connection, connection:
        return connection.execute(statement, params).fetchall()


def _delete_leaf_file(ledger_file: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger_file}{LEAF_FILE_SUFFIX}{suffix}").unlink(missing_ok=True)


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    """A closed ledger of EVENTS events and one checkpoint of them, then 5 more events."""
    path = tmp_path / "ledger.db"
    with Ledger(f"sqlite:///{path}", actor="t") as ledger:
        _fill(ledger, EVENTS)
        ledger.checkpoint()
        _fill(ledger, 5, start=100)
    return path


@pytest.fixture
def ledger(ledger_file: Path) -> Iterator[Ledger]:
    opened = Ledger(f"sqlite:///{ledger_file}", actor="t")
    yield opened
    opened.close()


def test_the_log_lives_next_to_the_ledger_file_not_in_it(ledger_file: Path) -> None:
    leaf_file = f"{ledger_file}{LEAF_FILE_SUFFIX}"
    assert {"merkle_leaves", "merkle_frontier"} <= _tables(leaf_file)
    assert not {"merkle_leaves", "merkle_frontier"} & _tables(str(ledger_file))
    assert _run(leaf_file, "SELECT count(*) FROM merkle_leaves") == [(EVENTS,)]
    identity = "SELECT ledger_id FROM merkle_log_identity"
    assert _run(leaf_file, identity) == _run(str(ledger_file), identity)


def test_catching_up_never_waits_for_the_ledger_files_write_lock(ledger: Ledger) -> None:
    log = ledger.merkle_log
    log.open()
    catch_up = BackgroundCatchUp(ledger.app, log)
    # The program holds the ledger file's write lock (a recording commit in progress);
    # the worker process, which hashes into the log, must not need it.
    with closing(sqlite3.connect(str(ledger.store.sqlite_path), isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")
        try:
            assert catch_up() == 1 + 5  # the checkpoint's event and 5 more
            assert catch_up.worker_running
        finally:
            holder.execute("ROLLBACK")
            catch_up.close()
    assert ledger.verify(update=False).ok


def test_a_log_kept_inside_the_ledger_file_is_copied_out_not_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with Ledger(f"sqlite:///{path}", actor="t") as ledger:
        ledger.stop_auto_checkpoints()
        _fill(ledger, EVENTS)
        # The log as the previous version kept it: its tables inside the ledger file.
        datastore = ledger.app.recorder.datastore  # type: ignore[attr-defined]
        legacy = SQLiteMerkleRecorder(datastore)
        legacy.create_table()
        rows = lambda start, limit: read_event_rows(ledger.app, start, limit)  # noqa: E731
        assert catch_up_log(legacy, rows, LeafHasher()) == EVENTS
    before = _run(str(path), "SELECT leaf_index, position, hash FROM merkle_leaves")
    # Tampered with after it was hashed and before any checkpoint: only the old leaves
    # can tell (a log rebuilt from today's events would hash the forgery).
    _run(str(path), "UPDATE stored_events SET state = state || x'20' WHERE rowid = 9")
    with Ledger(f"sqlite:///{path}", actor="t") as ledger:
        report = ledger.verify(update=False)
        assert report.problem is not None
        assert (report.problem.kind, report.problem.position) == ("modified", 9)
        leaf_file = ledger.merkle_log.leaf_path
        assert leaf_file == f"{path}{LEAF_FILE_SUFFIX}"
    assert _run(leaf_file, "SELECT leaf_index, position, hash FROM merkle_leaves") == before
    assert "merkle_leaves" not in _tables(str(path))
    assert not _run(
        str(path), "SELECT * FROM tracking WHERE application_name = 'DspyLedgerMerkleLog'"
    )
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_a_lost_leaf_file_is_rebuilt_and_the_recorded_checkpoint_still_checked(
    ledger_file: Path, tmp_path: Path
) -> None:
    old_checkpoint = tmp_path / "old.txt"
    with Ledger(f"sqlite:///{ledger_file}", actor="t") as ledger:
        old_checkpoint.write_text(ledger.checkpoint().text)
    _delete_leaf_file(ledger_file)  # e.g. a backup that copied the ledger file alone
    url = f"sqlite:///{ledger_file}"
    result = runner.invoke(app, ["verify", "--db", url, "--against", str(old_checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["checkpoints_checked"] == 2
    assert report["events_rehashed"] == EVENTS + 1 + 5  # up to the second checkpoint
    with Ledger(url, actor="t") as ledger:
        assert proof_verifies(ledger.prove(3))
    bundle = tmp_path / "b.zip"
    assert runner.invoke(app, ["export", "--bundle", str(bundle), "--db", url]).exit_code == 0
    result = runner.invoke(app, ["verify-bundle", str(bundle), "--against", str(old_checkpoint)])
    assert result.exit_code == 0, result.output


def test_a_lost_leaf_file_does_not_hide_tampering_a_checkpoint_covers(ledger_file: Path) -> None:
    _run(str(ledger_file), "UPDATE stored_events SET state = state || x'20' WHERE rowid = 12")
    _delete_leaf_file(ledger_file)
    with Ledger(f"sqlite:///{ledger_file}", actor="t") as ledger:
        report = ledger.verify(update=False)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.position) == ("checkpoint", EVENTS + 1)


def test_an_edited_leaf_hash_fails_verification(ledger: Ledger) -> None:
    leaf_file = ledger.merkle_log.leaf_path
    assert leaf_file is not None
    _run(leaf_file, "UPDATE merkle_leaves SET hash = zeroblob(32) WHERE position = 14")
    report = ledger.verify(update=False)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.position) == ("modified", 14)


def test_a_leaf_file_of_another_ledger_is_refused_and_left_as_it_is(
    ledger_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = tmp_path / "other.db"
    with Ledger(f"sqlite:///{other}", actor="t") as ledger:
        _fill(ledger, 8, start=500)
        ledger.checkpoint()
    foreign = Path(f"{other}{LEAF_FILE_SUFFIX}")
    _delete_leaf_file(ledger_file)
    shutil.copy(foreign, f"{ledger_file}{LEAF_FILE_SUFFIX}")
    copied = Path(f"{ledger_file}{LEAF_FILE_SUFFIX}").read_bytes()
    url = f"sqlite:///{ledger_file}"
    with Ledger(url, actor="t") as ledger:
        with pytest.raises(LeafFileMismatchError, match="built for ledger"):
            ledger.verify()
        with pytest.raises(LeafFileMismatchError):
            ledger.prove(1)
        # Automatic checkpoints log the refusal and leave recording alone.
        ledger.stop_auto_checkpoints()
        ledger.start_auto_checkpoints(CheckpointPolicy(every=1, interval=3600))
        auto = ledger._auto_checkpoints
        assert auto is not None
        _fill(ledger, 2, start=900)
        with caplog.at_level(logging.WARNING, logger="dspy_ledger"):
            assert not auto.tick()
        assert "built for ledger" in caplog.text
    assert Path(f"{ledger_file}{LEAF_FILE_SUFFIX}").read_bytes() == copied
    result = runner.invoke(app, ["verify", "--db", url])
    assert result.exit_code == 15
    assert "built for ledger" in result.output
    _delete_leaf_file(ledger_file)  # moved away, as the message says
    with Ledger(url, actor="t") as ledger:
        report = ledger.verify()
        assert report.ok and report.checkpoints_checked == 1
