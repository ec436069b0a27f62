"""The Merkle log's fast paths give exactly what the leaf-by-leaf definitions give."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dspy_ledger
from ledger.integrity.leaf import event_leaf_hash
from ledger.integrity.merkle import Frontier, MerkleError, root_hash
from ledger.integrity.scan import LeafHasher, extend_frontier, read_event_rows
from tests.test_views import T0, record_prediction


def _leaves(count: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(count)]


@settings(max_examples=40, deadline=None)
@given(first=st.integers(0, 300), second=st.integers(0, 700))
def test_bulk_frontier_growth_equals_leaf_by_leaf(first: int, second: int) -> None:
    leaves = _leaves(first + second)
    one_by_one, bulk = Frontier(), Frontier()
    one_by_one.extend(leaves)
    extend_frontier(bulk, leaves[:first])
    extend_frontier(bulk, leaves[first:])
    assert bulk == one_by_one
    assert bulk.root() == root_hash(leaves)


def test_a_subtree_must_sit_where_rfc_9162_splits_the_tree() -> None:
    frontier = Frontier()
    frontier.extend(_leaves(3))
    with pytest.raises(MerkleError):
        frontier.append_subtree(b"\x00" * 32, 4)
    with pytest.raises(MerkleError):
        frontier.append_subtree(b"\x00" * 32, 3)


def test_leaf_hasher_hashes_stored_rows_as_the_leaf_format_defines(ledger_url: str) -> None:
    with dspy_ledger.open(ledger_url, actor="tester") as ledger:
        record_prediction(ledger, actor="a", calls=[("m1", 0.1, False)], at=T0)
        rows = read_event_rows(ledger.app, 1, 100)
        notifications = ledger.app.recorder.select_notifications(start=1, limit=100)
        assert [r[0] for r in rows] == [n.id for n in notifications]
        expected = [
            event_leaf_hash(n.topic, n.originator_id, n.originator_version, n.state)
            for n in notifications
        ]
        assert LeafHasher().hash_rows(rows) == expected


def test_text_stream_ids_hash_as_text() -> None:
    text_row = (1, "t:A.B", "not-a-uuid", 1, b"{}")
    uuid_row = (2, "t:A.B", uuid.UUID(int=5).hex, 1, b"{}")
    assert LeafHasher().hash_rows([text_row, uuid_row]) == [
        event_leaf_hash("t:A.B", "not-a-uuid", 1, b"{}"),
        event_leaf_hash("t:A.B", uuid.UUID(int=5), 1, b"{}"),
    ]
