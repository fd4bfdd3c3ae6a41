"""The Merkle tree of the ledger, with the hashing and proofs of RFC 9162 (Certificate Transparency
version 2.0), section 2.1.

- leaf hash ``SHA-256(0x00 || entry)``, node hash ``SHA-256(0x01 || left || right)``, the root of
  an empty tree ``SHA-256("")`` (section 2.1.1); a tree of ``n`` leaves splits at the largest power
  of two ``k < n``;
- inclusion proofs ``PATH(m, D[n])`` (2.1.3.1) and their verification (2.1.3.2);
- consistency proofs ``PROOF(m, D[n])`` (2.1.4.1) and their verification (2.1.4.2).

Proofs are lists of 32-byte hashes exactly as the RFC defines them, so any RFC 9162 verifier can
check what the ledger hands out. The verifiers below follow the RFC's iterative algorithms and
share no code with the recursive generators, so a test that one accepts what the other produces
checks both.

Why not ``pymerkle`` (version 7.0.0): its leaf and node hashes are RFC 9162's (and
``tests/ledger/test_merkle.py`` checks our roots and inclusion paths against it when it is
installed), but its consistency proofs are its own format, not RFC 9162's: they carry a base hash,
a bit rule and a subset mask, and their paths differ in length and content (from size 2 to size 4
it gives three hashes where RFC 9162 section 2.1.4.1 gives one, ``MTH(D[2:4])``), so a site or an
auditor holding an RFC 9162 verifier could not check them; and the subtree roots needed to build
RFC proofs are reachable only through its private methods. The ~150 lines here are the RFC.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from fedsegnet.ledger.errors import ProofError

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "leaf_hash",
    "node_hash",
    "merkle_root",
    "inclusion_proof",
    "consistency_proof",
    "verify_inclusion",
    "verify_consistency",
    "MerkleTree",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() (RFC 9162 section 2.1.1)."""


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``: the hash of one leaf (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(b"\x00" + bytes(entry)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only list of leaf hashes with RFC 9162 roots and proofs for any earlier size.

    Roots of complete (power-of-two, aligned) subtrees never change once full and are cached, so a
    root or a proof costs O(log n) hashes after the first.

    Args:
        leaves: leaf hashes (``leaf_hash(entry)``) to start with. Defaults to none.

    Raises:
        ProofError: when a leaf hash is not 32 bytes.
    """

    def __init__(self, leaves: Sequence[bytes] = ()):
        self._leaves: list[bytes] = []
        self._cache: dict[tuple[int, int], bytes] = {}
        for h in leaves:
            self.append_hash(h)

    def __len__(self) -> int:
        return len(self._leaves)

    def append_hash(self, h: bytes) -> int:
        """Append a leaf hash; returns the new leaf's 0-based index."""
        if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_SIZE:
            raise ProofError(f"leaf {len(self._leaves)}: a leaf hash must be {HASH_SIZE} bytes")
        self._leaves.append(bytes(h))
        return len(self._leaves) - 1

    def append(self, entry: bytes) -> int:
        """Append an entry (its bytes are hashed as a leaf); returns its 0-based index."""
        return self.append_hash(leaf_hash(entry))

    def leaf(self, index: int) -> bytes:
        """The leaf hash at 0-based ``index``."""
        return self._leaves[index]

    def _mth(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return self._leaves[start]
        key = (start, end)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        k = _split(n)
        h = node_hash(self._mth(start, start + k), self._mth(start + k, end))
        if n & (n - 1) == 0:  # a complete subtree: immutable
            self._cache[key] = h
        return h

    def _check_size(self, size: int | None, name: str = "size") -> int:
        size = len(self._leaves) if size is None else size
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(self._leaves):
            raise ProofError(f"{name}={size!r}: the tree has {len(self._leaves)} leaves")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (all by default)."""
        return self._mth(0, self._check_size(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """``PATH(index, D[size])`` (RFC 9162 section 2.1.3.1).

        Args:
            index: 0-based leaf index, ``< size``.
            size: tree size the proof is for. Defaults to the current size.

        Returns:
            The audit path, leaf level first.

        Raises:
            ProofError: naming the index or size when out of range.
        """
        size = self._check_size(size)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
            raise ProofError(f"index={index!r}: not a leaf of a tree of size {size}")
        path: list[bytes] = []
        start, end, m = 0, size, index
        stack = []
        while end - start > 1:
            k = _split(end - start)
            if m < k:
                stack.append(self._mth(start + k, end))
                end = start + k
            else:
                stack.append(self._mth(start, start + k))
                start, m = start + k, m - k
        path.extend(reversed(stack))
        return path

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """``PROOF(first, D[second])`` (RFC 9162 section 2.1.4.1); empty when ``first == second``.

        Args:
            first: the earlier size, ``1 <= first <= second``.
            second: the later size. Defaults to the current size.

        Returns:
            The consistency path, deepest first.

        Raises:
            ProofError: naming the sizes when out of range.
        """
        second = self._check_size(second, "second")
        if isinstance(first, bool) or not isinstance(first, int) or not 1 <= first <= second:
            raise ProofError(f"first={first!r}: must be in [1, {second}] for a proof to size {second}")
        stack = []
        start, end, m, complete = 0, second, first, True
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                stack.append(self._mth(start + k, end))
                end = start + k
            else:
                stack.append(self._mth(start, start + k))
                start, m, complete = start + k, m - k, False
        if first == second:
            return []
        head = [] if complete else [self._mth(start, end)]
        return head + list(reversed(stack))


def merkle_root(entries: Sequence[bytes]) -> bytes:
    """MTH of a list of entries (each hashed as a leaf)."""
    return MerkleTree([leaf_hash(e) for e in entries]).root()


def inclusion_proof(entries: Sequence[bytes], index: int) -> list[bytes]:
    """``PATH(index, D[n])`` of a list of entries; see :meth:`MerkleTree.inclusion_proof`."""
    return MerkleTree([leaf_hash(e) for e in entries]).inclusion_proof(index)


def consistency_proof(entries: Sequence[bytes], first: int) -> list[bytes]:
    """``PROOF(first, D[n])`` of a list of entries; see :meth:`MerkleTree.consistency_proof`."""
    return MerkleTree([leaf_hash(e) for e in entries]).consistency_proof(first)


def _check_hashes(path, what: str) -> list[bytes]:
    if not isinstance(path, (list, tuple)):
        raise ProofError(f"{what}: the proof must be a list of hashes")
    for i, p in enumerate(path):
        if not isinstance(p, (bytes, bytearray)) or len(p) != HASH_SIZE:
            raise ProofError(f"{what}: element {i} of the proof is not a {HASH_SIZE}-byte hash")
    return [bytes(p) for p in path]


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> None:
    """Check an inclusion proof (RFC 9162 section 2.1.3.2).

    Args:
        leaf: the leaf hash (``leaf_hash(entry)``).
        index: its claimed 0-based index.
        size: the tree size of ``root``.
        path: the audit path.
        root: the root hash of the tree of ``size`` leaves.

    Raises:
        ProofError: naming the index and size when the proof does not verify.
    """
    what = f"inclusion of leaf {index} in the tree of size {size}"
    path = _check_hashes(path, what)
    if not (isinstance(index, int) and isinstance(size, int)) or not 0 <= index < size:
        raise ProofError(f"{what}: the index is not below the size")
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in path:
        if sn == 0:
            raise ProofError(f"{what}: the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"{what}: the proof is shorter than the tree is deep")
    if not hmac.compare_digest(r, bytes(root)):
        raise ProofError(f"{what}: the proof leads to root {r.hex()[:16]}..., not {bytes(root).hex()[:16]}...")


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]) -> None:
    """Check a consistency proof between two tree heads (RFC 9162 section 2.1.4.2).

    ``first == second`` verifies when the path is empty and the roots are equal.

    Args:
        first: the earlier size (>= 1).
        second: the later size.
        first_root: root hash at ``first``.
        second_root: root hash at ``second``.
        path: the consistency path.

    Raises:
        ProofError: naming both sizes when the later tree does not extend the earlier one.
    """
    what = f"consistency of the tree of size {first} with the tree of size {second}"
    path = _check_hashes(path, what)
    if not (isinstance(first, int) and isinstance(second, int)) or not 1 <= first <= second:
        raise ProofError(f"{what}: sizes must satisfy 1 <= first <= second")
    if first == second:
        if path or not hmac.compare_digest(bytes(first_root), bytes(second_root)):
            raise ProofError(f"{what}: two different roots for the same size (a fork)")
        return
    if not path:
        raise ProofError(f"{what}: the proof is empty")
    if first & (first - 1) == 0:
        path = [bytes(first_root)] + path
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"{what}: the proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"{what}: the proof is too short")
    if not hmac.compare_digest(fr, bytes(first_root)):
        raise ProofError(f"{what}: the proof does not lead to the earlier root (history was rewritten)")
    if not hmac.compare_digest(sr, bytes(second_root)):
        raise ProofError(f"{what}: the proof does not lead to the later root")
