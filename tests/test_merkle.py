"""Tests of the RFC 9162 Merkle log algorithms in ``ledger.integrity.merkle``.

Three independent sources of truth are used:

* published Certificate Transparency test vectors (the reference tree of RFC 6962
  implementations), each also confirmed against pymerkle below;
* ``pymerkle`` 7, an independent implementation configured as RFC 9162 requires
  (SHA-256, 0x00 leaf / 0x01 node prefixes, SHA-256("") as the empty root);
* a literal, recursive transcription of the RFC 9162 definitions in this file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from ledger.errors import LedgerError
from ledger.integrity.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleError,
    SubtreeHasher,
    consistency_proof,
    from_hex,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    to_hex,
    verify_consistency,
    verify_inclusion,
)

H = bytes.fromhex

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def leaves(n: int, salt: bytes = b"") -> list[bytes]:
    """Return ``n`` distinct leaf hashes (distinct so that no two orders hash alike)."""
    return [leaf_hash(salt + i.to_bytes(8, "big")) for i in range(n)]


def flip(value: bytes, position: int) -> bytes:
    """Return ``value`` with one bit of the byte at ``position`` flipped."""
    changed = bytearray(value)
    changed[position % len(changed)] ^= 0x01
    return bytes(changed)


def ref_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 §2.1.1, recursively, over leaf hashes."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = ref_split(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1, recursively."""
    if len(d) == 1:
        return []
    k = ref_split(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 §2.1.4.1, recursively."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = ref_split(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_directions(index: int, size: int) -> tuple[bool, ...]:
    """Left/right turns from the root to leaf ``index`` in a tree of ``size`` leaves."""
    turns: list[bool] = []
    start, end = 0, size
    while end - start > 1:
        k = ref_split(end - start)
        turns.append(index >= start + k)
        if index < start + k:
            end = start + k
        else:
            start += k
    return tuple(turns)


# pymerkle counts leaves from 1 and puts the leaf itself first in an inclusion path;
# RFC 9162 leaves it out. pymerkle's consistency paths have another shape than
# RFC 9162's (see pm_consistency), so they are converted from their public fields.


def pymerkle_tree(hashes_of: Sequence[bytes]) -> InmemoryTree:
    """Return a pymerkle tree whose leaf ``i`` holds the entry ``hashes_of[i]``."""
    tree = InmemoryTree(algorithm="sha256")  # security mode (prefixes) is on by default
    for entry in hashes_of:
        tree.append_entry(entry)
    return tree


def pm_inclusion(tree: InmemoryTree, index: int, size: int) -> list[bytes]:
    proof = tree.prove_inclusion(index + 1, size)
    assert proof.path[0] == tree.get_leaf(index + 1)
    return list(proof.path[1:])


def pm_consistency(tree: InmemoryTree, old: int, new: int) -> list[bytes]:
    """Return pymerkle's consistency proof for ``old`` -> ``new``, in RFC 9162 form.

    Both descend from the root the same way until they reach the subtree
    ``D[s:s+2k]`` split into the last part of the old tree, ``D[s:s+k]``, and the
    first new leaves, ``D[s+k:s+2k...]``. RFC 9162 stops there with
    ``[MTH(D[s:s+k]), MTH(D[s+k:...])]``, leaving out the first hash when it is the
    old root (old size a power of two). pymerkle goes on down the left edge of the
    new part: its path starts with the leaf ``s+k`` and that edge's siblings
    (``subset`` mask 0), followed by ``MTH(D[s:s+k])``, the first hash with mask 1.
    Folding that edge gives ``MTH(D[s+k:...])``; the rest of both paths is the same.
    """
    if old in (0, new):
        return []  # pymerkle has no proof from size 0; RFC 9162 none for old == new
    proof = tree.prove_consistency(old, new)
    path, subset = list(proof.path), list(proof.subset)
    split = subset.index(1)
    new_part = path[0]
    for sibling in path[1:split]:  # the left edge: siblings are all on the right
        new_part = node_hash(new_part, sibling)
    old_part = [] if old & (old - 1) == 0 else [path[split]]
    return [*old_part, new_part, *path[split + 1 :]]


ENTRIES_70 = [b"entry-%d" % i for i in range(70)]
LEAVES_70 = [leaf_hash(e) for e in ENTRIES_70]


@cache
def tree_70() -> InmemoryTree:
    return pymerkle_tree(ENTRIES_70)


ENTRIES_BIG = [b"big-%d" % i for i in range(1500)]
LEAVES_BIG = [leaf_hash(e) for e in ENTRIES_BIG]


@cache
def tree_big() -> InmemoryTree:
    return pymerkle_tree(ENTRIES_BIG)


# ---------------------------------------------------------------------------
# Known vectors (CT reference tree), each confirmed by pymerkle
# ---------------------------------------------------------------------------

CT_ENTRIES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_LEAVES = [leaf_hash(e) for e in CT_ENTRIES]

CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# (leaf index counting from 0, tree size, audit path)
CT_INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# (old size, new size, consistency proof)
CT_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


def test_hash_primitives() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert root_hash([]) == EMPTY_ROOT
    assert root_hash([a]) == a  # MTH({d0}) = leaf hash of d0
    assert root_hash([a, b]) == node_hash(a, b)


def test_pymerkle_is_configured_as_rfc_9162() -> None:
    tree = InmemoryTree(algorithm="sha256")
    assert tree.algorithm == "sha256"
    assert tree.security is True
    assert (tree.leaf_prefix, tree.node_prefix) == (b"\x00", b"\x01")
    assert tree.hash_empty() == EMPTY_ROOT
    assert tree.get_root() == EMPTY_ROOT
    tree.append_entry(b"abc")
    assert tree.get_leaf(1) == leaf_hash(b"abc")


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_ct_reference_roots(size: int) -> None:
    expected = H(CT_ROOTS[size])
    assert root_hash(CT_LEAVES[:size]) == expected
    assert pymerkle_tree(CT_ENTRIES).get_root(size) == expected  # independent confirmation
    frontier = Frontier()
    frontier.extend(CT_LEAVES[:size])
    assert frontier.root() == expected


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_ct_reference_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    expected = [H(p) for p in path]
    assert inclusion_proof(index, CT_LEAVES[:size]) == expected
    assert pm_inclusion(pymerkle_tree(CT_ENTRIES), index, size) == expected
    assert verify_inclusion(CT_LEAVES[index], index, size, expected, H(CT_ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_ct_reference_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    expected = [H(p) for p in path]
    assert consistency_proof(old, CT_LEAVES[:new]) == expected
    assert pm_consistency(pymerkle_tree(CT_ENTRIES), old, new) == expected
    assert verify_consistency(old, new, H(CT_ROOTS[old]), H(CT_ROOTS[new]), expected)


# ---------------------------------------------------------------------------
# Cross-check with pymerkle and with the recursive RFC definitions
# ---------------------------------------------------------------------------


def test_every_proof_up_to_70_leaves_matches_pymerkle_and_the_rfc() -> None:
    tree = tree_70()
    for n in range(1, 71):
        prefix = LEAVES_70[:n]
        root = root_hash(prefix)
        assert root == tree.get_root(n) == ref_mth(prefix)
        for i in range(n):
            proof = inclusion_proof(i, prefix)
            assert proof == pm_inclusion(tree, i, n) == ref_path(i, prefix)
            assert verify_inclusion(prefix[i], i, n, proof, root)
        for m in range(0, n + 1):
            proof = consistency_proof(m, prefix)
            expected = ref_subproof(m, prefix, True) if 0 < m < n else []
            assert proof == pm_consistency(tree, m, n) == expected
            assert verify_consistency(m, n, root_hash(prefix[:m]), root, proof)


def test_pymerkle_verifies_against_our_roots() -> None:
    tree = tree_70()
    for n in (1, 2, 3, 7, 8, 9, 33, 64, 70):
        root = root_hash(LEAVES_70[:n])
        for i in range(0, n, 5):
            tree.prove_inclusion(i + 1, n).verify(LEAVES_70[i], root)
        for m in range(1, n + 1, 3):
            tree.prove_consistency(m, n).verify(root_hash(LEAVES_70[:m]), root)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_sizes_match_pymerkle(data: st.DataObject) -> None:
    tree = tree_big()
    n = data.draw(st.integers(1, len(LEAVES_BIG)), label="size")
    i = data.draw(st.integers(0, n - 1), label="index")
    m = data.draw(st.integers(0, n), label="old size")
    prefix = LEAVES_BIG[:n]
    assert root_hash(prefix) == tree.get_root(n)
    assert inclusion_proof(i, prefix) == pm_inclusion(tree, i, n)
    assert consistency_proof(m, prefix) == pm_consistency(tree, m, n)


def test_large_root_matches_pymerkle() -> None:
    tree = tree_big()
    assert root_hash(LEAVES_BIG) == tree.get_root() == ref_mth(LEAVES_BIG)


# ---------------------------------------------------------------------------
# Properties of inclusion proofs
# ---------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=300)
salts = st.binary(max_size=4)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=sizes, salt=salts)
def test_inclusion_proofs_verify_and_detect_tampering(
    data: st.DataObject, n: int, salt: bytes
) -> None:
    hashes = leaves(n, salt)
    root = root_hash(hashes)
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = inclusion_proof(i, hashes)
    leaf = hashes[i]
    assert verify_inclusion(leaf, i, n, proof, root)

    byte = data.draw(st.integers(0, 31), label="byte")
    assert not verify_inclusion(flip(leaf, byte), i, n, proof, root)
    assert not verify_inclusion(leaf, i, n, proof, flip(root, byte))
    if proof:
        step = data.draw(st.integers(0, len(proof) - 1), label="step")
        tampered = [*proof[:step], flip(proof[step], byte), *proof[step + 1 :]]
        assert not verify_inclusion(leaf, i, n, tampered, root)
        assert not verify_inclusion(leaf, i, n, proof[:-1], root)  # truncated
    assert not verify_inclusion(leaf, i, n, [*proof, root], root)  # extended

    # Another leaf's position: every index has its own path from the root.
    other = data.draw(st.integers(0, n), label="wrong index")
    assume(other != i)
    assert not verify_inclusion(leaf, other, n, proof, root)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), n=sizes)
def test_inclusion_proof_for_another_position_fails(data: st.DataObject, n: int) -> None:
    hashes = leaves(n + 300)
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = inclusion_proof(i, hashes[:n])
    wrong_size = data.draw(st.integers(1, n + 300), label="claimed size")
    wrong_index = data.draw(st.integers(0, wrong_size - 1), label="claimed index")
    assume((wrong_index, wrong_size) != (i, n))
    # Against the true root of the claimed size, a proof made for another position
    # (another index, another size or both) always fails.
    true_root = root_hash(hashes[:wrong_size])
    assert not verify_inclusion(hashes[i], wrong_index, wrong_size, proof, true_root)
    # Against the root it was made for, it passes exactly when the claimed position
    # has the same path shape: the proof does not authenticate index and size by
    # itself, the (size, root) pair must come from one checkpoint.
    same_shape = ref_directions(wrong_index, wrong_size) == ref_directions(i, n)
    assert (
        verify_inclusion(hashes[i], wrong_index, wrong_size, proof, root_hash(hashes[:n]))
        == same_shape
    )


def test_tree_size_must_come_with_the_root() -> None:
    # RFC 9162 verifiers take (size, root) from one signed tree head. Given the root
    # of 3 leaves, the path of leaf 0 also "fits" a claimed size of 4, and the path
    # of leaf 2 also fits leaf 4 of 5. Callers must never mix a size and a root from
    # different checkpoints.
    hashes = leaves(5)
    root_3 = root_hash(hashes[:3])
    assert verify_inclusion(hashes[0], 0, 4, inclusion_proof(0, hashes[:3]), root_3)
    assert verify_inclusion(hashes[2], 4, 5, inclusion_proof(2, hashes[:3]), root_3)
    assert not verify_inclusion(
        hashes[0], 0, 4, inclusion_proof(0, hashes[:3]), root_hash(hashes[:4])
    )
    # With the size and root of one tree, the index is bound: no other leaf position
    # accepts the proof.
    for other in (1, 2, 3):
        assert not verify_inclusion(
            hashes[0], other, 4, inclusion_proof(0, hashes[:4]), root_hash(hashes[:4])
        )


# ---------------------------------------------------------------------------
# Properties of consistency proofs
# ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=sizes, salt=salts)
def test_consistency_proofs_verify_and_detect_tampering(
    data: st.DataObject, n: int, salt: bytes
) -> None:
    hashes = leaves(n, salt)
    m = data.draw(st.integers(0, n), label="old size")
    old_root, new_root = root_hash(hashes[:m]), root_hash(hashes)
    proof = consistency_proof(m, hashes)
    assert verify_consistency(m, n, old_root, new_root, proof)

    byte = data.draw(st.integers(0, 31), label="byte")
    assert not verify_consistency(m, n, flip(old_root, byte), new_root, proof)
    if m > 0:  # every tree extends the empty one: its new root is not checked
        assert not verify_consistency(m, n, old_root, flip(new_root, byte), proof)
    if proof:
        step = data.draw(st.integers(0, len(proof) - 1), label="step")
        tampered = [*proof[:step], flip(proof[step], byte), *proof[step + 1 :]]
        assert not verify_consistency(m, n, old_root, new_root, tampered)
        assert not verify_consistency(m, n, old_root, new_root, proof[:-1])
    assert not verify_consistency(m, n, old_root, new_root, [*proof, new_root])
    if m < n:  # sizes the wrong way round
        assert not verify_consistency(n, m, new_root, old_root, proof)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(min_value=1, max_value=300))
def test_consistency_fails_when_the_prefix_was_rewritten(data: st.DataObject, n: int) -> None:
    hashes = leaves(n)
    m = data.draw(st.integers(1, n), label="old size")
    changed = data.draw(st.integers(0, m - 1), label="rewritten leaf")
    forged = list(hashes)
    forged[changed] = leaf_hash(b"forged")
    old_root = root_hash(hashes[:m])
    # The log rewrote a leaf the auditor had already seen: no proof from the rewritten
    # log connects the old root to the new one...
    forged_root = root_hash(forged)
    assert not verify_consistency(m, n, old_root, forged_root, consistency_proof(m, forged))
    # ... and the honest proof does not vouch for the rewritten root either.
    if m < n:
        assert not verify_consistency(m, n, old_root, forged_root, consistency_proof(m, hashes))


@settings(max_examples=100, deadline=None)
@given(data=st.data(), n=st.integers(min_value=2, max_value=300))
def test_consistency_proof_for_other_sizes_fails(data: st.DataObject, n: int) -> None:
    hashes = leaves(n + 50)
    m = data.draw(st.integers(1, n - 1), label="old size")
    proof = consistency_proof(m, hashes[:n])
    m2 = data.draw(st.integers(1, n + 50), label="claimed old size")
    n2 = data.draw(st.integers(m2, n + 50), label="claimed new size")
    assume((m2, n2) != (m, n))
    assert not verify_consistency(m2, n2, root_hash(hashes[:m2]), root_hash(hashes[:n2]), proof)


def test_consistency_edge_cases() -> None:
    hashes = leaves(5)
    root = root_hash(hashes)
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(0, 0, root, root, [])
    assert verify_consistency(0, 5, EMPTY_ROOT, root, [])
    assert not verify_consistency(0, 5, root, root, [])
    assert not verify_consistency(0, 5, EMPTY_ROOT, root, [root])
    assert verify_consistency(5, 5, root, root, [])
    assert not verify_consistency(5, 5, root, root, [root])
    assert not verify_consistency(5, 5, root, flip(root, 0), [])
    # RFC 9162 step 1: a non-trivial consistency proof is never empty.
    assert not verify_consistency(4, 5, root_hash(hashes[:4]), root, [])


# ---------------------------------------------------------------------------
# Frontier
# ---------------------------------------------------------------------------


def test_frontier_root_matches_root_hash_at_every_size() -> None:
    hashes = leaves(600)
    frontier = Frontier()
    assert frontier.size == 0
    assert frontier.root() == EMPTY_ROOT
    assert frontier.to_list() == []
    for n, leaf in enumerate(hashes, start=1):
        frontier.append(leaf)
        assert frontier.size == n
        assert frontier.root() == root_hash(hashes[:n])
        assert len(frontier.to_list()) == n.bit_count()


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 2000), more=st.integers(0, 70), salt=salts)
def test_frontier_survives_json_round_trip(n: int, more: int, salt: bytes) -> None:
    hashes = leaves(n + more, salt)
    frontier = Frontier()
    frontier.extend(hashes[:n])
    row = json.loads(json.dumps({"size": frontier.size, "hashes": frontier.to_list()}))
    restored = Frontier.from_list(row["hashes"], row["size"])
    assert restored == frontier
    assert restored.size == n
    assert restored.root() == root_hash(hashes[:n])
    restored.extend(hashes[n:])  # a projection resumes where it stopped
    assert restored.root() == root_hash(hashes)


def test_frontier_rejects_corrupt_state() -> None:
    frontier = Frontier()
    frontier.extend(leaves(5))
    saved = frontier.to_list()
    with pytest.raises(MerkleError, match="has 2 subtree roots, but 1"):
        Frontier.from_list(saved[:1], 5)
    with pytest.raises(MerkleError, match="has 1 subtree roots, but 2"):
        Frontier.from_list(saved, 4)
    with pytest.raises(MerkleError, match="non-negative"):
        Frontier.from_list([], -1)
    with pytest.raises(MerkleError, match="64 hex"):
        Frontier.from_list([saved[0], saved[1][:-1]], 5)
    with pytest.raises(MerkleError, match="32 bytes"):
        frontier.append(b"short")
    assert frontier.size == 5  # a rejected leaf leaves the frontier as it was


# ---------------------------------------------------------------------------
# SubtreeHasher
# ---------------------------------------------------------------------------


class CountingStore:
    """An append-only leaf store that counts what is read from it."""

    def __init__(self, hashes: list[bytes]) -> None:
        self.hashes = hashes
        self.calls = 0
        self.read = 0

    def fetch(self, start: int, end: int) -> Sequence[bytes]:
        assert 0 <= start < end <= len(self.hashes)
        self.calls += 1
        self.read += end - start
        return self.hashes[start:end]


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=st.integers(1, 700), width_log=st.integers(0, 5))
def test_subtree_hasher_matches_in_memory_functions(
    data: st.DataObject, n: int, width_log: int
) -> None:
    hashes = leaves(n)
    store = CountingStore(hashes)
    cached = SubtreeHasher(store.fetch, cache={}, min_cached_width=1 << width_log)
    uncached = SubtreeHasher(store.fetch)
    i = data.draw(st.integers(0, n - 1), label="index")
    m = data.draw(st.integers(0, n), label="old size")
    for hasher in (cached, cached, uncached):  # twice: cold, then warm cache
        assert hasher.root(n) == root_hash(hashes)
        assert hasher.root(m) == root_hash(hashes[:m])
        assert hasher.inclusion_proof(i, n) == inclusion_proof(i, hashes)
        assert hasher.consistency_proof(m, n) == consistency_proof(m, hashes)


def test_subtree_hasher_cache_avoids_rehashing_a_growing_log() -> None:
    hashes = leaves(1 << 15)
    store = CountingStore(hashes)
    cache: dict[tuple[int, int], bytes] = {}
    hasher = SubtreeHasher(store.fetch, cache=cache, min_cached_width=64)

    n = 30_000
    assert hasher.inclusion_proof(12_345, n) == inclusion_proof(12_345, hashes[:n])
    first_read = store.read
    assert first_read >= n - 1
    assert len(cache) <= 2 * n // 64

    store.read = 0
    for index in (0, 777, 29_999):
        proof = hasher.inclusion_proof(index, n)
        assert verify_inclusion(hashes[index], index, n, proof, root_hash(hashes[:n]))
    assert store.read < 3 * 3 * 64  # only small subtrees near the leaf and the tail

    # The log grows: entries cached at size 30,000 are still exact at 32,000.
    store.read = 0
    n2 = 32_000
    proof = hasher.consistency_proof(n, n2)
    assert proof == consistency_proof(n, hashes[:n2])
    assert verify_consistency(n, n2, root_hash(hashes[:n]), root_hash(hashes[:n2]), proof)
    assert store.read < n2 - n + 3 * 64


def test_subtree_hasher_rejects_bad_input() -> None:
    hashes = leaves(10)
    with pytest.raises(MerkleError, match="power of two"):
        SubtreeHasher(lambda s, e: hashes[s:e], min_cached_width=3)
    with pytest.raises(MerkleError, match="power of two"):
        SubtreeHasher(lambda s, e: hashes[s:e], min_cached_width=0)
    short = SubtreeHasher(lambda s, e: hashes[s:e])
    with pytest.raises(MerkleError, match="returned 10 leaf hashes instead of 12"):
        short.root(12)
    with pytest.raises(MerkleError, match="non-negative"):
        short.root(-1)
    assert short.root(0) == EMPTY_ROOT
    broken = SubtreeHasher(lambda s, e: [b"x" * 31] * (e - s))
    with pytest.raises(MerkleError, match="31 bytes"):
        broken.root(4)


# ---------------------------------------------------------------------------
# Errors and malformed input
# ---------------------------------------------------------------------------


def test_building_impossible_proofs_raises() -> None:
    hashes = leaves(5)
    with pytest.raises(MerkleError, match="Leaf index 5 is outside a tree of 5 leaves"):
        inclusion_proof(5, hashes)
    with pytest.raises(MerkleError, match="outside a tree of 0 leaves"):
        inclusion_proof(0, [])
    with pytest.raises(MerkleError, match="leaf index must be a non-negative integer"):
        inclusion_proof(-1, hashes)
    with pytest.raises(MerkleError, match="old tree size 6 is larger than the new tree size 5"):
        consistency_proof(6, hashes)
    with pytest.raises(MerkleError, match="old tree size must be a non-negative"):
        consistency_proof(-1, hashes)
    assert consistency_proof(0, []) == []
    with pytest.raises(MerkleError, match="31 bytes long"):
        root_hash([*hashes, b"x" * 31])
    with pytest.raises(MerkleError):
        inclusion_proof(0, [*hashes, b"x" * 33])


def test_merkle_error_is_a_ledger_value_error() -> None:
    assert issubclass(MerkleError, ValueError)
    assert issubclass(MerkleError, LedgerError)


def test_verification_never_raises_on_malformed_claims() -> None:
    hashes = leaves(4)
    root = root_hash(hashes)
    proof = inclusion_proof(1, hashes)
    bad_claims: list[tuple[object, ...]] = [
        (hashes[1], 1, 4, proof, root[:31]),
        (hashes[1][:31], 1, 4, proof, root),
        (hashes[1], 1, 4, [p + b"\x00" for p in proof], root),
        (hashes[1], 1, 4, None, root),
        (hashes[1], 1, 4, b"".join(proof), root),
        (hashes[1], -1, 4, proof, root),
        (hashes[1], 4, 4, proof, root),
        (hashes[1], True, 4, proof, root),
        (hashes[1], 1, 0, [], EMPTY_ROOT),
        ("not bytes", 1, 4, proof, root),
    ]
    for claim in bad_claims:
        assert verify_inclusion(*claim) is False  # type: ignore[arg-type]
    cproof = consistency_proof(3, hashes)
    old = root_hash(hashes[:3])
    bad_consistency: list[tuple[object, ...]] = [
        (3, 4, old, root, None),
        (3, 4, old, root, [p[:16] for p in cproof]),
        (-1, 4, old, root, cproof),
        (3, -4, old, root, cproof),
        (5, 4, old, root, cproof),
        (3, 4, old.hex(), root, cproof),
    ]
    for claim in bad_consistency:
        assert verify_consistency(*claim) is False  # type: ignore[arg-type]


def test_hex_helpers() -> None:
    value = leaf_hash(b"x")
    assert from_hex(to_hex(value)) == value
    assert to_hex(value) == value.hex()
    assert from_hex(value.hex().upper()) == value
    with pytest.raises(MerkleError, match="must be 32 bytes"):
        to_hex(value[:16])
    for text in ["", value.hex()[:-2], value.hex() + "00", " " + value.hex()[1:], "zz" * 32]:
        with pytest.raises(MerkleError, match="expected exactly 64 hex characters"):
            from_hex(text)
    spaced = " ".join(value.hex()[i : i + 2] for i in range(0, 64, 2))
    with pytest.raises(MerkleError):
        from_hex(spaced)  # bytes.fromhex would accept this; a stored hash must not
