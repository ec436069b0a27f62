"""Tamper campaign: direct SQL edits of the event table are detected and located."""

from __future__ import annotations

import json
import random
import re
import sqlite3
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from dspy_ledger.cli import app
from dspy_ledger.integrity import InclusionProof
from dspy_ledger.ledger import Ledger
from ledger.domain import Dataset
from ledger.integrity.checkpoint import parse_checkpoint
from ledger.integrity.merkle import verify_inclusion

EVENTS = 40


@pytest.fixture(autouse=True)
def parallel_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify in ranges of 4 leaves over 2 workers: the parallel path, with 10 ranges."""
    monkeypatch.setenv("DSPY_LEDGER_VERIFY_RANGE", "4")
    monkeypatch.setenv("DSPY_LEDGER_VERIFY_WORKERS", "2")


def _fill(ledger: Ledger, count: int, start: int = 0) -> None:
    datasets = [
        Dataset.register(digest=f"d{i}", example_digests=[], examples=[{"i": i}], actor="test")
        for i in range(start, start + count)
    ]
    ledger.app.save_aggregates(*datasets)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """A ledger of EVENTS events, all hashed into the Merkle log."""
    opened = Ledger(ledger_url, actor="test")
    _fill(opened, EVENTS)
    opened.merkle_log.catch_up()
    yield opened
    opened.close()


class Table:
    """Direct SQL on the ledger's event table, as a tamperer would use it."""

    def __init__(self, ledger: Ledger) -> None:
        self.store = ledger.store
        self.sqlite = ledger.store.backend == "sqlite"

    def run(self, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run ``statement``; ``{t}`` is the table and ``{pos}`` the position column."""
        if self.sqlite:
            assert self.store.sqlite_path is not None
            text = statement.format(t="stored_events", pos="rowid").replace("%s", "?")
            with sqlite3.connect(self.store.sqlite_path) as connection:
                return connection.execute(text, params).fetchall()
        schema = parse_qs(urlsplit(self.store.url).query)["schema"][0]
        table = sql.Identifier(schema, "dspyledger_events").as_string(None)
        text = statement.format(t=table, pos="notification_id")
        url = self.store.url.split("?")[0]
        with psycopg.connect(url, autocommit=True) as connection:
            cursor = connection.execute(text.encode(), params)  # type: ignore[call-overload]
            return cursor.fetchall() if cursor.description else []

    def row(self, position: int) -> tuple[Any, ...]:
        """(stream id, version, topic, state) at ``position``."""
        found = self.run(
            "SELECT originator_id, originator_version, topic, state FROM {t} WHERE {pos} = %s",
            (position,),
        )
        return tuple(found[0])


def problem_of(ledger: Ledger) -> tuple[str | None, int | None]:
    report = ledger.verify(update=False)
    if report.problem is None:
        return None, None
    return report.problem.kind, report.problem.position


def test_an_untouched_ledger_verifies_and_counts_every_event(ledger: Ledger) -> None:
    report = ledger.verify()
    assert report.ok and report.events_checked == EVENTS and report.tree_size == EVENTS


def test_a_flipped_byte_of_a_state_is_named_as_modified(ledger: Ledger) -> None:
    table = Table(ledger)
    state = bytearray(table.row(17)[3])
    state[5] ^= 0x01
    table.run("UPDATE {t} SET state = %s WHERE {pos} = %s", (bytes(state), 17))
    assert problem_of(ledger) == ("modified", 17)


def test_a_changed_topic_is_named_as_modified(ledger: Ledger) -> None:
    Table(ledger).run("UPDATE {t} SET topic = topic || 'x' WHERE {pos} = %s", (3,))
    assert problem_of(ledger) == ("modified", 3)


def test_a_changed_version_is_named_as_modified(ledger: Ledger) -> None:
    Table(ledger).run(
        "UPDATE {t} SET originator_version = originator_version + 1 WHERE {pos} = %s", (9,)
    )
    assert problem_of(ledger) == ("modified", 9)


def test_a_changed_stream_id_is_named_as_modified(ledger: Ledger) -> None:
    table = Table(ledger)
    other = table.row(30)[0]
    # A stream id that exists nowhere else, in the column's own type.
    forged = str(other)[:-4] + ("0000" if not str(other).endswith("0000") else "1111")
    table.run("UPDATE {t} SET originator_id = %s WHERE {pos} = %s", (forged, 12))
    assert problem_of(ledger) == ("modified", 12)


def test_a_deleted_row_is_named_as_missing(ledger: Ledger) -> None:
    Table(ledger).run("DELETE FROM {t} WHERE {pos} = %s", (21,))
    assert problem_of(ledger) == ("missing", 21)


def test_a_truncated_tail_is_named_as_missing_from_its_first_position(ledger: Ledger) -> None:
    Table(ledger).run("DELETE FROM {t} WHERE {pos} > %s", (EVENTS - 5,))
    assert problem_of(ledger) == ("missing", EVENTS - 4)


def test_two_swapped_rows_are_named_as_reordered(ledger: Ledger) -> None:
    table = Table(ledger)
    a, b = table.row(5), table.row(25)
    # Move row 5 out of the way first: (stream id, version) is unique.
    table.run("DELETE FROM {t} WHERE {pos} IN (%s, %s)", (5, 25))
    for position, (stream, version, topic, state) in ((5, b), (25, a)):
        table.run(
            "INSERT INTO {t} (originator_id, originator_version, topic, state, {pos}) "
            "VALUES (%s, %s, %s, %s, %s)",
            (stream, version, topic, state, position),
        )
    assert problem_of(ledger) == ("reordered", 5)


def test_a_forged_row_in_a_gap_is_named_as_inserted(ledger_url: str) -> None:
    with Ledger(ledger_url, actor="test") as opened:
        _fill(opened, 10)
        table = Table(opened)
        stream, version, topic, state = table.row(4)
        # A gap in the positions (PostgreSQL leaves them after rolled-back writes).
        table.run("DELETE FROM {t} WHERE {pos} = %s", (4,))
        opened.merkle_log.catch_up()
        assert opened.verify(update=False).ok
        table.run(
            "INSERT INTO {t} (originator_id, originator_version, topic, state, {pos}) "
            "VALUES (%s, %s, %s, %s, %s)",
            (stream, version, topic, state, 4),
        )
        assert problem_of(opened) == ("inserted", 4)


def test_a_rewritten_log_is_caught_by_the_recorded_checkpoint(ledger: Ledger) -> None:
    ledger.checkpoint()
    table = Table(ledger)
    Table(ledger).run("UPDATE {t} SET topic = topic || 'x' WHERE {pos} = %s", (2,))
    # The tamperer also rewrites the leaf table from the altered rows.
    if table.sqlite:
        assert ledger.merkle_log.leaf_path is not None
        with sqlite3.connect(ledger.merkle_log.leaf_path) as connection:
            connection.execute("DELETE FROM merkle_leaves")
            connection.execute("DELETE FROM merkle_frontier")
            connection.execute(
                "DELETE FROM tracking WHERE application_name = 'DspyLedgerMerkleLog'"
            )
    else:
        schema = parse_qs(urlsplit(ledger.store.url).query)["schema"][0]
        for name in ("leaves", "frontier", "tracking"):
            table.run(f'DELETE FROM "{schema}".dspyledger_merkle_{name}')
    ledger.merkle_log.catch_up()
    kind, position = problem_of(ledger)
    assert kind == "checkpoint"
    assert position == EVENTS + 1  # where the checkpoint was recorded


def test_verify_against_a_checkpoint_of_another_ledger_fails(ledger: Ledger, tmp_path: Any) -> None:
    with Ledger(f"sqlite:///{tmp_path}/other.db", actor="test") as other:
        _fill(other, EVENTS, start=1000)
        foreign = parse_checkpoint(other.checkpoint().text)
    report = ledger.verify(against=foreign, update=False)
    assert report.problem is not None and report.problem.kind == "checkpoint"


def test_verify_against_an_older_checkpoint_of_the_same_ledger_passes(ledger: Ledger) -> None:
    old = parse_checkpoint(ledger.checkpoint().text)
    _fill(ledger, 7, start=500)
    ledger.checkpoint()
    assert ledger.verify(against=old).ok


def test_random_single_byte_flips_are_always_found_at_their_position(ledger: Ledger) -> None:
    table = Table(ledger)
    rng = random.Random(9162)
    for _ in range(8):
        position = rng.randint(1, EVENTS)
        original = table.row(position)[3]
        state = bytearray(original)
        state[rng.randrange(len(state))] ^= 1 << rng.randrange(8)
        table.run("UPDATE {t} SET state = %s WHERE {pos} = %s", (bytes(state), position))
        assert problem_of(ledger) == ("modified", position)
        table.run("UPDATE {t} SET state = %s WHERE {pos} = %s", (original, position))
    assert ledger.verify(update=False).ok


def test_the_log_is_extended_incrementally_not_rebuilt(ledger: Ledger) -> None:
    before = ledger.merkle_log.state()
    _fill(ledger, 5, start=200)
    assert ledger.merkle_log.catch_up() == 5
    after = ledger.merkle_log.state()
    assert after.frontier.size == before.frontier.size + 5
    assert ledger.merkle_log.catch_up() == 0


def proof_verifies(proof: InclusionProof) -> bool:
    """Whether an inclusion proof from ``prove`` checks out against its own root."""
    return verify_inclusion(
        bytes.fromhex(proof.leaf_hash),
        proof.leaf_index,
        proof.tree_size,
        [bytes.fromhex(h) for h in proof.proof],
        bytes.fromhex(proof.root_hash),
    )


def test_a_proof_from_prove_verifies_against_its_root(ledger: Ledger) -> None:
    assert proof_verifies(ledger.prove(11))


def test_verify_names_the_root_that_takes_in_the_events_it_added(ledger_url: str) -> None:
    fresh = Ledger(ledger_url, actor="test")
    _fill(fresh, 6)
    fresh.close()
    runner = CliRunner()

    first = runner.invoke(app, ["verify", "--db", ledger_url])
    assert first.exit_code == 0, first.output
    # Nothing was in the log to check yet: it says so, not "0 events verified".
    assert first.output.strip().startswith("OK: the Merkle log held no events yet")
    named = re.search(
        r"6 events were hashed into it now: root ([0-9a-f]{64}) at tree size 6\.", first.output
    )
    assert named, first.output

    second = runner.invoke(app, ["verify", "--db", ledger_url])
    assert second.output.strip().startswith("OK: 6 events verified, 0 checkpoints checked")
    assert f"root {named[1]} at tree size 6." in second.output  # checked against that root

    more = Ledger(ledger_url, actor="test")
    _fill(more, 2, start=100)
    more.close()
    third = json.loads(runner.invoke(app, ["verify", "--db", ledger_url, "--json"]).output)
    grown = Ledger(ledger_url, actor="test")
    checkpoint = grown.checkpoint()  # the root a checkpoint records now
    grown.close()
    assert (third["events_checked"], third["tree_size"], third["root_hash"]) == (6, 6, named[1])
    assert third["events_added"] == 2
    assert (third["log_tree_size"], third["log_root_hash"]) == (8, checkpoint.root_hash)
