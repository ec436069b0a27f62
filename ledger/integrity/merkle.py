"""Pure algorithms of a tamper-evident Merkle log, as specified by RFC 9162 §2.1.

RFC 9162 (Certificate Transparency version 2.0) defines the Merkle Tree Hash of an
ordered list of entries, audit paths that prove one entry is in the tree
(inclusion proofs) and proofs that a later tree extends an earlier one without
rewriting it (consistency proofs). This module implements exactly those definitions
with SHA-256, so any RFC 9162 / RFC 6962 verifier can check what the ledger publishes.

Everything here works on *leaf hashes*: raw 32-byte ``bytes`` equal to
``leaf_hash(entry)``. The module stores nothing and touches no database; where the leaf
hashes live elsewhere, :class:`SubtreeHasher` reads them through a callable.

Conventions:

* Leaf indexes count from zero, as ``m`` does in RFC 9162; sizes count leaves.
* Functions that *build* proofs raise :class:`MerkleError` on impossible arguments
  (an index past the end, an old size larger than the log, ...): those are bugs in
  the caller.
* Functions that *verify* proofs never raise for bad input. A proof, root, size or
  index is a claim made by someone else, and every way for the claim to be wrong,
  malformed values included, answers ``False``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import Final

from ledger.errors import LedgerError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "FetchLeaves",
    "Frontier",
    "MerkleError",
    "SubtreeHasher",
    "consistency_proof",
    "from_hex",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "to_hex",
    "verify_consistency",
    "verify_inclusion",
]

#: Size in bytes of every hash in the log (SHA-256, RFC 9162 §2.1.1).
HASH_SIZE: Final = 32

# Domain separation prefixes (RFC 9162 §2.1.1): a leaf hash can never equal an
# interior node hash, which is what stops second-preimage attacks that pass an
# interior node off as a leaf.
_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"

_sha256 = hashlib.sha256

#: Merkle Tree Hash of the empty list, ``SHA-256()`` with no prefix (RFC 9162 §2.1.1).
EMPTY_ROOT: Final = _sha256(b"").digest()

_HEX_HASH = re.compile(r"[0-9a-fA-F]{64}")


class MerkleError(LedgerError, ValueError):
    """An argument given to a Merkle log function is impossible.

    Raised for an index or size outside the log, an old size larger than the new
    one, a hash that is not 32 bytes, malformed hex and the like. It is a
    ``ValueError`` and, like every error the ledger raises on purpose, a
    :class:`~ledger.errors.LedgerError`.
    """


# ---------------------------------------------------------------------------
# Hashing primitives (RFC 9162 §2.1.1)
# ---------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """Return the hash of a leaf entry, ``SHA-256(0x00 || data)`` (RFC 9162 §2.1.1)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the hash of an interior node, ``SHA-256(0x01 || left || right)``.

    ``left`` and ``right`` are the hashes of its two children (RFC 9162 §2.1.1).
    """
    return _sha256(_NODE_PREFIX + left + right).digest()


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise MerkleError(
            f"The {what} is {len(value)} bytes long; a SHA-256 hash must be {HASH_SIZE} bytes."
        )


def _check_hashes(values: Iterable[bytes], what: str) -> None:
    # set(map(len, ...)) runs at C speed: checking a million leaf hashes costs ~20 ms,
    # a small price for never folding a truncated hash into a published root.
    lengths = set(map(len, values))
    if lengths - {HASH_SIZE}:
        bad = sorted(lengths - {HASH_SIZE})
        raise MerkleError(
            f"Some {what} are {bad[0]} bytes long; every SHA-256 hash must be {HASH_SIZE} bytes."
        )


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def to_hex(value: bytes) -> str:
    """Return a 32-byte hash as 64 lower-case hex characters, for JSON.

    Raises :class:`MerkleError` if ``value`` is not 32 bytes.
    """
    _check_hash(value, "hash to encode")
    return value.hex()


def from_hex(text: str) -> bytes:
    """Return the 32-byte hash written as 64 hex characters in ``text``.

    Upper and lower case are accepted. Anything else (another length, white space,
    a non-hex character) raises :class:`MerkleError`, so a corrupted JSON row is
    reported where it is read rather than yielding a wrong root later.
    """
    # bytes.fromhex alone would accept embedded spaces and any even length.
    if not isinstance(text, str) or _HEX_HASH.fullmatch(text) is None:
        shown = repr(text) if len(repr(text)) <= 80 else f"{repr(text)[:80]}..."
        raise MerkleError(f"{shown} is not a SHA-256 hash; expected exactly 64 hex characters.")
    return bytes.fromhex(text)


# ---------------------------------------------------------------------------
# Tree hashes (RFC 9162 §2.1.1)
# ---------------------------------------------------------------------------


def _split(width: int) -> int:
    """Return ``k``, the largest power of two smaller than ``width`` (``width >= 2``).

    This is where RFC 9162 §2.1.1 splits a list of ``width`` entries into the left
    subtree ``D[0:k]`` and the right subtree ``D[k:width]``.
    """
    return 1 << ((width - 1).bit_length() - 1)


def _fold(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle Tree Hash of a non-empty list of (already checked) leaf hashes.

    Hashes level by level, pairing neighbours and carrying an unpaired last node up
    unchanged. That builds exactly the RFC 9162 tree (left subtree = the largest
    power of two of leaves), without recursion and with one list per level, so a
    million leaves take about half a second in CPython.
    """
    # node_hash is inlined (with local names) because a Python call per node would
    # add about a third to the running time of the hot loop.
    sha, prefix = _sha256, _NODE_PREFIX
    level = leaf_hashes
    while len(level) > 1:
        pairs = iter(level)
        # zip over one iterator twice yields neighbours; strict=False drops the odd
        # last node on purpose, it is carried up just below.
        parents = [
            sha(prefix + left + right).digest() for left, right in zip(pairs, pairs, strict=False)
        ]
        if len(level) & 1:
            parents.append(level[-1])
        level = parents
    return level[0]


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle Tree Hash ``MTH(D[n])`` of the given leaf hashes (RFC 9162 §2.1.1).

    ``leaf_hashes[i]`` must be ``leaf_hash(d[i])``; the empty list gives
    :data:`EMPTY_ROOT`. Runs in O(n) time and O(n) memory (the second level of the
    tree); about half a second for 1,000,000 leaves.

    Raises :class:`MerkleError` if a leaf hash is not 32 bytes.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    _check_hashes(leaf_hashes, "leaf hashes")
    return _fold(leaf_hashes)


class Frontier:
    """The compact range of an append-only log: the roots of its maximal perfect subtrees.

    A log of ``n`` leaves is, left to right, a sequence of perfect subtrees whose sizes
    are the powers of two in the binary representation of ``n`` (RFC 9162 §2.1.1 splits
    trees exactly that way). Keeping one root per subtree, O(log n) hashes, is enough
    to append leaves and to compute the Merkle Tree Hash at any time, which lets a
    projection maintain the log root while reading each event once.

    Appending costs O(1) hashes amortised (O(log n) worst case); :meth:`root` costs
    O(log n). :meth:`to_list` and :meth:`from_list` persist the state as JSON-able hex
    strings; the size must be stored alongside.
    """

    __slots__ = ("_roots", "_size")

    def __init__(self) -> None:
        """Create the frontier of the empty log."""
        # Roots of the perfect subtrees, left (largest) to right (smallest).
        self._roots: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves appended so far (the RFC 9162 tree size)."""
        return self._size

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash (``leaf_hash(entry)``, not the entry itself).

        Raises :class:`MerkleError` if ``leaf`` is not 32 bytes.
        """
        if len(leaf) != HASH_SIZE:
            _check_hash(leaf, "leaf hash")
        roots = self._roots
        node = leaf
        # Each trailing 1 bit of the old size is a perfect subtree of the same height
        # as the one being carried: merge them, exactly like binary addition of 1.
        carry = self._size
        while carry & 1:
            node = _sha256(_NODE_PREFIX + roots.pop() + node).digest()  # node_hash, inlined
            carry >>= 1
        roots.append(node)
        self._size += 1

    def append_subtree(self, root: bytes, width: int) -> None:
        """Append a perfect subtree of ``width`` leaves (a power of two) given its root.

        The log's size must be a multiple of ``width``, so the subtree sits where RFC
        9162 would split it off; the result equals appending its leaves one by one.
        """
        if width <= 0 or width & (width - 1) or self._size % width:
            raise MerkleError(
                f"A subtree of {width} leaves cannot be appended to a log of {self._size}."
            )
        _check_hash(root, "subtree root")
        roots = self._roots
        node = root
        carry = self._size // width
        while carry & 1:
            node = _sha256(_NODE_PREFIX + roots.pop() + node).digest()
            carry >>= 1
        roots.append(node)
        self._size += width

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append each leaf hash of ``leaves`` in order (see :meth:`append`)."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """Return the Merkle Tree Hash of the leaves appended so far (RFC 9162 §2.1.1).

        Equal to ``root_hash(all_leaves)``; :data:`EMPTY_ROOT` for an empty log.
        """
        roots = self._roots
        if not roots:
            return EMPTY_ROOT
        # MTH splits off the largest perfect subtree on the left and recurses on the
        # rest, so the fold runs right to left.
        result = roots[-1]
        for left in reversed(roots[:-1]):
            result = node_hash(left, result)
        return result

    def to_list(self) -> list[str]:
        """Return the subtree roots as hex strings, largest subtree first.

        Store :attr:`size` alongside: the list has one entry per 1 bit of the size,
        so it does not determine the size by itself.
        """
        return [root.hex() for root in self._roots]

    @classmethod
    def from_list(cls, hashes: Sequence[str], size: int) -> Frontier:
        """Rebuild a frontier saved with :meth:`to_list` for a log of ``size`` leaves.

        Raises :class:`MerkleError` if ``size`` is negative, if the number of hashes is
        not the number of 1 bits in ``size`` or if a hash is not 64 hex characters.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise MerkleError(f"A frontier size must be a non-negative integer, not {size!r}.")
        if isinstance(hashes, str):
            raise MerkleError("A frontier must be a list of hex hashes, not a single string.")
        expected = size.bit_count()
        if len(hashes) != expected:
            raise MerkleError(
                f"A frontier of size {size} has {expected} subtree roots, "
                f"but {len(hashes)} were given; the saved state is corrupt."
            )
        frontier = cls()
        frontier._roots = [from_hex(text) for text in hashes]
        frontier._size = size
        return frontier

    def __eq__(self, other: object) -> bool:
        """Frontiers are equal when they have the same size and subtree roots."""
        if not isinstance(other, Frontier):
            return NotImplemented
        return self._size == other._size and self._roots == other._roots

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __repr__(self) -> str:
        """Show the size and the current root, abbreviated."""
        return f"Frontier(size={self._size}, root={self.root().hex()[:16]}...)"


# ---------------------------------------------------------------------------
# Proof layouts: which subtree hashes a proof consists of
# ---------------------------------------------------------------------------

# A proof is a list of Merkle Tree Hashes of leaf ranges (start, end), end exclusive.
# Which ranges depends only on the index and sizes, never on the data, so the layout
# is computed once and then hashed by whoever holds the leaves.


def _inclusion_layout(index: int, size: int) -> list[tuple[int, int]]:
    """Return the ranges of ``PATH(index, D[size])`` (RFC 9162 §2.1.3.1), leaf first.

    Walks the RFC recursion from the root down, noting the sibling subtree at each
    level, then reverses: RFC 9162 lists the audit path from the leaf up.
    """
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            # PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])
            ranges.append((start + k, end))
            end = start + k
        else:
            # PATH(m, D[n]) = PATH(m - k, D[k:n]) : MTH(D[0:k])
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def _consistency_layout(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Return the ranges of ``PROOF(old_size, D[new_size])`` (RFC 9162 §2.1.4.1).

    Requires ``0 < old_size < new_size``. Iterative form of ``SUBPROOF(m, D[n], b)``:
    the flag ``b`` stays true while the old tree is still a left edge subtree of the
    new one, in which case the verifier already knows its hash (the old root) and the
    proof omits it.
    """
    ranges: list[tuple[int, int]] = []
    start, m, n, complete_left_subtree = 0, old_size, new_size, True
    while m != n:
        k = _split(n)
        if m <= k:
            # SUBPROOF(m, D[n], b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            ranges.append((start + k, start + n))
            n = k
        else:
            # SUBPROOF(m, D[n], b) = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            ranges.append((start, start + k))
            start, m, n = start + k, m - k, n - k
            complete_left_subtree = False
    if not complete_left_subtree:
        # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        ranges.append((start, start + n))
    ranges.reverse()
    return ranges


def _check_size(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MerkleError(f"The {what} must be a non-negative integer, not {value!r}.")


# ---------------------------------------------------------------------------
# Subtree hashes over leaves stored elsewhere
# ---------------------------------------------------------------------------

#: Reads the leaf hashes ``start <= i < end`` of the log, in order.
FetchLeaves = Callable[[int, int], Sequence[bytes]]


class SubtreeHasher:
    """Computes roots and proofs over leaf hashes read on demand through ``fetch``.

    ``fetch(start, end)`` must return the leaf hashes with indexes
    ``start <= i < end`` in order, e.g. from a ``SELECT ... ORDER BY seq`` over the
    event table. Every method takes the tree size it should work at, so one hasher
    serves a log that keeps growing.

    Every subtree a proof needs is a node of the RFC 9162 tree, and every such node
    is a left-to-right run of *perfect* subtrees of power-of-two widths aligned on
    multiples of their width. The root of a perfect subtree never changes once all
    its leaves exist, so it can be cached forever in an append-only log.

    Without a cache (``cache=None``) each method reads the leaves of every range it
    needs once: O(n) hashing and O(log n) calls to ``fetch`` per root or proof.

    With a cache (any mutable mapping, e.g. ``{}``, keyed by ``(start, width)``),
    roots of perfect subtrees at least ``min_cached_width`` leaves wide are stored
    as they are computed. The first proof still hashes everything (O(n), with
    ``n / min_cached_width`` calls to ``fetch``); afterwards a proof costs O(log² n)
    cache look-ups plus hashing fewer than about ``2 * min_cached_width`` leaves near
    the index and the right edge, and only newly appended leaves are ever hashed
    again. The cache holds at most about ``2 * n / min_cached_width`` entries of 32
    bytes (about 8,000 for a million leaves at the default 256).

    Caching trusts the store: a cached subtree root hides any later change to its
    leaves. To *audit* a store, use a hasher without a cache (or a fresh one).
    """

    def __init__(
        self,
        fetch: FetchLeaves,
        *,
        cache: MutableMapping[tuple[int, int], bytes] | None = None,
        min_cached_width: int = 256,
    ) -> None:
        """Read leaf hashes through ``fetch``; cache perfect subtree roots in ``cache``.

        ``min_cached_width`` must be a power of two; smaller subtrees are cheaper to
        re-hash than to keep. Raises :class:`MerkleError` otherwise.
        """
        if (
            isinstance(min_cached_width, bool)
            or not isinstance(min_cached_width, int)
            or min_cached_width < 1
            or min_cached_width & (min_cached_width - 1)
        ):
            raise MerkleError(
                f"min_cached_width must be a positive power of two, not {min_cached_width!r}."
            )
        self._fetch = fetch
        self._cache = cache
        self._min_cached_width = min_cached_width

    def _leaves(self, start: int, end: int) -> Sequence[bytes]:
        leaves = self._fetch(start, end)
        if len(leaves) != end - start:
            raise MerkleError(
                f"fetch({start}, {end}) returned {len(leaves)} leaf hashes instead of "
                f"{end - start}; check that the leaf store holds every leaf below the tree size."
            )
        _check_hashes(leaves, "fetched leaf hashes")
        return leaves

    def _perfect_root(self, start: int, width: int, memo: dict[tuple[int, int], bytes]) -> bytes:
        """Return ``MTH(D[start:start + width])`` for a power-of-two ``width``."""
        key = (start, width)
        cache = self._cache
        if cache is None or width < self._min_cached_width:
            # Too small to cache for good, but one proof may need the same small
            # subtree several times (the tail of the log sits in every right-edge
            # range), so remember it for the duration of this call.
            found = memo.get(key)
            if found is None:
                found = memo[key] = _fold(self._leaves(start, start + width))
            return found
        cached = cache.get(key)
        if cached is not None:
            return cached
        half = width >> 1
        if half < self._min_cached_width:
            # Children are not cacheable: one fetch for the whole block is cheaper
            # than two.
            value = _fold(self._leaves(start, start + width))
        else:
            # Recurse so that every cacheable subtree below is cached as well: the
            # next, larger tree reuses them.
            value = node_hash(
                self._perfect_root(start, half, memo),
                self._perfect_root(start + half, half, memo),
            )
        cache[key] = value
        return value

    def _range_root(self, start: int, end: int, memo: dict[tuple[int, int], bytes]) -> bytes:
        """Return ``MTH(D[start:end])`` for a non-empty range."""
        if self._cache is None:
            return _fold(self._leaves(start, end))
        # MTH(D[start:end]) is the right-to-left fold of the perfect subtrees given by
        # the binary representation of the width, largest first.
        roots: list[bytes] = []
        width = end - start
        while width:
            part = 1 << (width.bit_length() - 1)
            roots.append(self._perfect_root(start, part, memo))
            start += part
            width -= part
        result = roots[-1]
        for left in reversed(roots[:-1]):
            result = node_hash(left, result)
        return result

    def root(self, size: int) -> bytes:
        """Return the Merkle Tree Hash of the first ``size`` leaves (RFC 9162 §2.1.1).

        Raises :class:`MerkleError` if ``size`` is negative.
        """
        _check_size(size, "tree size")
        if size == 0:
            return EMPTY_ROOT
        return self._range_root(0, size, {})

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """Return the audit path ``PATH(index, D[tree_size])`` (RFC 9162 §2.1.3.1).

        Hashes are ordered from the leaf's sibling up to the root's child, as
        :func:`verify_inclusion` expects. Raises :class:`MerkleError` unless
        ``0 <= index < tree_size``.
        """
        _check_size(tree_size, "tree size")
        _check_size(index, "leaf index")
        if index >= tree_size:
            raise MerkleError(
                f"Leaf index {index} is outside a tree of {tree_size} leaves; "
                f"indexes run from 0 to size - 1."
            )
        memo: dict[tuple[int, int], bytes] = {}
        return [self._range_root(s, e, memo) for s, e in _inclusion_layout(index, tree_size)]

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Return ``PROOF(old_size, D[new_size])`` (RFC 9162 §2.1.4.1).

        The proof is empty when ``old_size`` is 0 or equal to ``new_size``: RFC 9162
        defines proofs only for ``0 < old_size < new_size``, and in those edge cases
        there is nothing to prove beyond comparing roots (see
        :func:`verify_consistency`). Raises :class:`MerkleError` unless
        ``0 <= old_size <= new_size``.
        """
        _check_size(new_size, "new tree size")
        _check_size(old_size, "old tree size")
        if old_size > new_size:
            raise MerkleError(
                f"The old tree size {old_size} is larger than the new tree size "
                f"{new_size}; a log only grows."
            )
        if old_size in (0, new_size):
            return []
        memo: dict[tuple[int, int], bytes] = {}
        return [self._range_root(s, e, memo) for s, e in _consistency_layout(old_size, new_size)]


# ---------------------------------------------------------------------------
# Proofs over leaf hashes in memory
# ---------------------------------------------------------------------------


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return ``PATH(index, D[n])`` for the ``n = len(leaf_hashes)`` leaves (RFC 9162 §2.1.3.1).

    The audit path runs from the leaf's sibling up to a child of the root. O(n)
    hashing. Raises :class:`MerkleError` unless ``0 <= index < n``.
    """
    return SubtreeHasher(_slicer(leaf_hashes)).inclusion_proof(index, len(leaf_hashes))


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return ``PROOF(old_size, D[n])`` for the ``n = len(leaf_hashes)`` leaves (RFC 9162 §2.1.4.1).

    Empty when ``old_size`` is 0 or ``n``. O(n) hashing. Raises :class:`MerkleError`
    unless ``0 <= old_size <= n``.
    """
    return SubtreeHasher(_slicer(leaf_hashes)).consistency_proof(old_size, len(leaf_hashes))


def _slicer(leaf_hashes: Sequence[bytes]) -> FetchLeaves:
    def fetch(start: int, end: int) -> Sequence[bytes]:
        return leaf_hashes[start:end]

    return fetch


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _as_path(proof: object) -> list[bytes] | None:
    """Return ``proof`` as a list of 32-byte hashes, or ``None`` if it is not one."""
    if isinstance(proof, (bytes, bytearray, str)):
        return None  # iterable, but not a list of hashes
    try:
        path = list(proof)  # type: ignore[call-overload]
    except TypeError:
        return None
    return path if all(_is_hash(p) for p in path) else None


def _same(a: bytes, b: bytes) -> bool:
    # Roots are public, so timing is not secret; compare_digest is simply the
    # idiomatic, type-strict way to compare digests.
    return hmac.compare_digest(a, b)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Return whether ``proof`` shows the leaf at ``index`` is in the tree of ``tree_size`` leaves.

    Implements the verification algorithm of RFC 9162 §2.1.3.2 literally: it rebuilds
    the root from ``leaf_hash`` and the audit path, choosing left or right at each
    level from the bits of ``index`` and ``tree_size - 1``, and also requires the
    path to have exactly the length the tree shape demands. Never raises: any
    malformed value (wrong hash length, negative or out-of-range index) gives
    ``False``.

    Only the shape of the tree enters the computation, so ``index`` and
    ``tree_size`` are authenticated by ``root`` alone: take ``tree_size`` and
    ``root`` from the same checkpoint. (Against the root of 3 leaves, the path of
    leaf 0 also fits a claimed size of 4, and that of leaf 2 fits leaf 4 of 5.)
    """
    if not (_is_size(index) and _is_size(tree_size) and index < tree_size):
        return False  # RFC 9162 §2.1.3.2 step 1
    if not (_is_hash(leaf_hash) and _is_hash(root)):
        return False
    path = _as_path(proof)
    if path is None:
        return False
    fn, sn = index, tree_size - 1
    r = leaf_hash
    for p in path:
        if sn == 0:
            return False  # path longer than the tree is deep
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                # fn == sn: the leaf is in the rightmost, incomplete part of the tree,
                # whose levels with no sibling are skipped (their node is promoted).
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and _same(r, root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Return whether ``proof`` shows the tree of ``new_size`` leaves extends that of ``old_size``.

    For ``0 < old_size < new_size`` this is the algorithm of RFC 9162 §2.1.4.2: it
    rebuilds both roots from the proof and compares them with ``old_root`` and
    ``new_root``. RFC 9162 leaves the edge cases out; here they are:

    * ``old_size == new_size``: valid iff the proof is empty and the roots are equal
      (and equal to :data:`EMPTY_ROOT` when both sizes are 0);
    * ``old_size == 0``: valid iff the proof is empty and ``old_root`` is
      :data:`EMPTY_ROOT`; every tree extends the empty one, so ``new_root`` cannot be
      checked.

    Never raises: any malformed value (wrong hash length, negative sizes,
    ``old_size > new_size``) gives ``False``.
    """
    if not (_is_size(old_size) and _is_size(new_size) and old_size <= new_size):
        return False
    if not (_is_hash(old_root) and _is_hash(new_root)):
        return False
    path = _as_path(proof)
    if path is None:
        return False
    if old_size == new_size:
        return (
            not path and _same(old_root, new_root) and (old_size > 0 or _same(old_root, EMPTY_ROOT))
        )
    if old_size == 0:
        return not path and _same(old_root, EMPTY_ROOT)

    # RFC 9162 §2.1.4.2, steps 1 to 7.
    if not path:
        return False  # step 1
    if old_size & (old_size - 1) == 0:
        # Step 2: the old tree is a complete left subtree of the new one, so the proof
        # omits its hash: the verifier has it already.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            return False  # 6a: proof longer than the tree is deep
        if fn & 1 or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    return sn == 0 and _same(fr, old_root) and _same(sr, new_root)  # step 7
