"""Shamir shares: t reconstruct, t - 1 are consistent with every secret, bad share sets are refused."""

import os
import random

import pytest

from fedsegnet.secagg.errors import ShareError
from fedsegnet.secagg.shamir import PRIME, Share, interpolate, reconstruct, share


def _rand(seed):
    r = random.Random(seed)
    return lambda k: r.randrange(k)


@pytest.mark.parametrize("n,t", [(2, 2), (3, 2), (5, 3), (8, 5), (8, 8)])
def test_any_t_shares_reconstruct(n, t):
    secret = os.urandom(32)
    shares = share(secret, n, t)
    assert [s.x for s in shares] == list(range(1, n + 1))
    r = random.Random(n * 100 + t)
    for _ in range(5):
        subset = r.sample(shares, t)
        assert reconstruct(subset) == secret
    assert reconstruct(shares) == secret  # all n: the extra ones are checked and agree


@pytest.mark.parametrize("length", [0, 1, 15, 16, 31, 32, 33, 64])
def test_lengths_and_wire_form(length):
    secret = bytes(range(255, 255 - length, -1)) if length else b""
    shares = share(secret, 4, 3, randbelow=_rand(length))
    wire = [Share.from_bytes(s.to_bytes()) for s in shares]
    assert wire == shares
    assert len(shares[0].to_bytes()) == 6 + 16 * max(1, -(-length // 15))
    assert reconstruct(wire[1:]) == secret


@pytest.mark.parametrize("n,t", [(3, 2), (5, 3), (6, 4)])
def test_t_minus_1_shares_are_consistent_with_every_secret(n, t):
    """For fixed t - 1 shares, every candidate secret has exactly one completing t-th share: the
    t - 1 shares rule out nothing (information-theoretic secrecy)."""
    secret = os.urandom(32)
    shares = share(secret, n, t)
    known = shares[: t - 1]
    missing_x = shares[t - 1].x
    for candidate in (bytes(32), b"\xff" * 32, os.urandom(32), secret):
        ys = []
        for c in range(len(known[0].ys)):
            value = int.from_bytes(candidate[c * 15 : (c + 1) * 15], "big")
            points = [(0, value)] + [(s.x, s.ys[c]) for s in known]
            ys.append(interpolate(points, missing_x))
        completing = Share(x=missing_x, ys=tuple(ys), t=t, length=32)
        assert reconstruct(known + [completing]) == candidate
    with pytest.raises(ShareError, match=rf"{t - 1} share\(s\), need t={t}"):
        reconstruct(known)


def test_errors_name_the_problem():
    shares = share(b"k" * 32, 5, 3)
    with pytest.raises(ShareError, match="no shares"):
        reconstruct([])
    with pytest.raises(ShareError, match=r"duplicate x=2 \(identical copies\)"):
        reconstruct([shares[1], shares[1], shares[2]])
    forged = Share(x=2, ys=tuple((y + 1) % PRIME for y in shares[1].ys), t=3, length=32)
    with pytest.raises(ShareError, match="duplicate x=2 .*inconsistent"):
        reconstruct([shares[1], forged, shares[2]])
    with pytest.raises(ShareError, match="x=5 is from an unknown party"):
        reconstruct(shares[2:], parties=[1, 2, 3, 4])
    with pytest.raises(ShareError, match="x=4 is inconsistent"):
        bad = Share(x=4, ys=tuple((y + 1) % PRIME for y in shares[3].ys), t=3, length=32)
        reconstruct(shares[:3] + [bad])
    other = share(b"k" * 16, 5, 3)
    with pytest.raises(ShareError, match="length=16"):
        reconstruct([shares[0], other[1], shares[2]])
    with pytest.raises(ShareError, match="t=4"):
        share(b"x", 3, 4)
    with pytest.raises(ShareError, match="n=0"):
        share(b"x", 0, 1)
    with pytest.raises(ShareError, match="secret"):
        share("not bytes", 3, 2)
    with pytest.raises(ShareError, match="expected 54"):
        Share.from_bytes(shares[0].to_bytes()[:-1])
    with pytest.raises(ShareError, match="x=0"):
        Share.from_bytes(b"\x00\x03\x00\x00\x00\x20" + shares[0].to_bytes()[6:])


def test_a_wrong_share_is_exposed_by_one_more():
    secret = os.urandom(32)
    shares = share(secret, 4, 2)
    wrong = Share(x=2, ys=tuple((y + 7) % PRIME for y in shares[1].ys), t=2, length=32)
    try:  # exactly t shares cannot tell: a wrong one gives another secret (or one that does not fit)
        assert reconstruct([shares[0], wrong]) != secret
    except ShareError:
        pass
    with pytest.raises(ShareError, match="inconsistent"):
        reconstruct([shares[0], wrong, shares[2]])  # a third share exposes it
