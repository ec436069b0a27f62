"""Write transactions on SQLite wait for another process's writes instead of failing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from eventsourcing.sqlite import SQLiteDatastore

import ledger  # noqa: F401 - installs the write-transaction behaviour, as every ledger does

OTHER_PROCESS = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], timeout=20, isolation_level=None)
connection.execute("BEGIN")
connection.execute("INSERT INTO t VALUES ('other process')")
connection.execute("COMMIT")
"""


def test_a_write_that_read_first_waits_for_another_process_and_both_commit(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "ledger.db")
    datastore = SQLiteDatastore(path, lock_timeout=20)
    with datastore.transaction(commit=True) as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")
    with datastore.transaction(commit=True) as cursor:
        cursor.execute("CREATE TABLE t (who TEXT)")
    with datastore.transaction(commit=True) as cursor:
        cursor.execute("SELECT count(*) FROM t")  # a view reads before it writes
        other = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS, path])
        time.sleep(1.0)  # the other process writes now, or waits for this transaction
        cursor.execute("INSERT INTO t VALUES ('this process')")
    assert other.wait(timeout=30) == 0
    with datastore.transaction(commit=False) as cursor:
        cursor.execute("SELECT who FROM t ORDER BY who")
        assert [row[0] for row in cursor.fetchall()] == ["other process", "this process"]
    datastore.close()
