"""RFC 9162 Merkle tree: known answers, every proof for sizes 1..40, tampered proofs fail."""

from __future__ import annotations

import pytest

from fedsegnet.ledger.errors import ProofError
from fedsegnet.ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# The 8 leaves of the RFC 6962 / RFC 9162 known-answer tree and the roots of its prefixes.
KAT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
KAT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
KAT_INCLUSION = {  # (index, size): path
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
KAT_CONSISTENCY = {  # (first, second): path
    (1, 8): KAT_INCLUSION[(0, 8)],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}


def _tree(n: int) -> tuple[list[bytes], MerkleTree]:
    entries = [f"entry {i}".encode() for i in range(n)]
    return entries, MerkleTree([leaf_hash(e) for e in entries])


def test_hashes_are_rfc9162():
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == KAT_ROOTS[0]
    assert node_hash(leaf_hash(b""), leaf_hash(b"\x00")).hex() == KAT_ROOTS[1]
    assert merkle_root([]) == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_known_answer_roots(size):
    assert merkle_root(KAT_LEAVES[:size]).hex() == KAT_ROOTS[size - 1]


def test_known_answer_proofs():
    tree = MerkleTree([leaf_hash(e) for e in KAT_LEAVES])
    for (index, size), path in KAT_INCLUSION.items():
        assert [h.hex() for h in tree.inclusion_proof(index, size)] == path
        verify_inclusion(tree.leaf(index), index, size, [bytes.fromhex(h) for h in path], tree.root(size))
    for (first, second), path in KAT_CONSISTENCY.items():
        assert [h.hex() for h in tree.consistency_proof(first, second)] == path
        verify_consistency(first, second, tree.root(first), tree.root(second), [bytes.fromhex(h) for h in path])
    assert inclusion_proof(KAT_LEAVES, 5) == tree.inclusion_proof(5)
    assert consistency_proof(KAT_LEAVES, 6) == tree.consistency_proof(6)


def test_every_proof_verifies_up_to_40():
    entries, tree = _tree(40)
    for n in range(1, 41):
        assert tree.root(n) == merkle_root(entries[:n])
        for i in range(n):
            verify_inclusion(tree.leaf(i), i, n, tree.inclusion_proof(i, n), tree.root(n))
        for m in range(1, n + 1):
            verify_consistency(m, n, tree.root(m), tree.root(n), tree.consistency_proof(m, n))


def _flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 1]) + h[1:]


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 21])
def test_tampered_inclusion_fails(n):
    _, tree = _tree(n)
    root = tree.root()
    for i in range(n):
        path = tree.inclusion_proof(i)
        for j in range(len(path)):
            bad = list(path)
            bad[j] = _flip(bad[j])
            with pytest.raises(ProofError, match=f"leaf {i} in the tree of size {n}"):
                verify_inclusion(tree.leaf(i), i, n, bad, root)
        with pytest.raises(ProofError):
            verify_inclusion(_flip(tree.leaf(i)), i, n, path, root)
        with pytest.raises(ProofError):
            verify_inclusion(tree.leaf(i), i, n, path[:-1], root)
        with pytest.raises(ProofError):
            verify_inclusion(tree.leaf(i), i, n, path + [root], root)
        other = (i + 1) % n
        if other != i:
            with pytest.raises(ProofError):
                verify_inclusion(tree.leaf(i), other, n, path, root)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 21])
def test_tampered_consistency_fails(n):
    entries, tree = _tree(n)
    for m in range(1, n):
        path = tree.consistency_proof(m)
        for j in range(len(path)):
            bad = list(path)
            bad[j] = _flip(bad[j])
            with pytest.raises(ProofError, match=f"size {m} with the tree of size {n}"):
                verify_consistency(m, n, tree.root(m), tree.root(), bad)
        with pytest.raises(ProofError):
            verify_consistency(m, n, _flip(tree.root(m)), tree.root(), path)
        with pytest.raises(ProofError):
            verify_consistency(m, n, tree.root(m), tree.root(), path[:-1])
        # a rewritten history: the same size m with a different entry m-1
        forged = MerkleTree([leaf_hash(e) for e in entries[: m - 1] + [b"forged"] + entries[m:]])
        with pytest.raises(ProofError):
            verify_consistency(m, n, tree.root(m), forged.root(), forged.consistency_proof(m))


def test_fork_same_size_fails():
    _, a = _tree(4)
    b = MerkleTree([leaf_hash(b"other")] * 4)
    verify_consistency(4, 4, a.root(), a.root(), [])
    with pytest.raises(ProofError, match="fork"):
        verify_consistency(4, 4, a.root(), b.root(), [])


def test_bad_arguments():
    _, tree = _tree(3)
    with pytest.raises(ProofError, match="index=3"):
        tree.inclusion_proof(3)
    with pytest.raises(ProofError, match="size=4"):
        tree.root(4)
    with pytest.raises(ProofError, match="first=0"):
        tree.consistency_proof(0)
    with pytest.raises(ProofError, match="32 bytes"):
        tree.append_hash(b"short")
    with pytest.raises(ProofError, match="element 0"):
        verify_inclusion(tree.leaf(0), 0, 3, [b"x"], tree.root())
    with pytest.raises(ProofError, match="below the size"):
        verify_inclusion(tree.leaf(0), 3, 3, [], tree.root())


def test_matches_pymerkle_when_installed():
    """An independent implementation: pymerkle's roots and inclusion paths (its path minus the base leaf)."""
    pymerkle = pytest.importorskip("pymerkle")
    entries, tree = _tree(20)
    other = pymerkle.InmemoryTree()
    for n, e in enumerate(entries, start=1):
        other.append_entry(e)
        assert other.get_root() == tree.root(n)
        for i in range(n):
            assert other.prove_inclusion(i + 1, n).path[1:] == tree.inclusion_proof(i, n)
