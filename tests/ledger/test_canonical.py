"""Canonical encoding: same entry -> same bytes; NaN/Inf/odd types refused naming the field."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsegnet.ledger.canonical import canonical_bytes, hash_weights, parse_canonical, sha256_file
from fedsegnet.ledger.errors import CanonicalError, LedgerError


def test_sorted_keys_fixed_separators():
    a = canonical_bytes({"b": 1, "a": [1.5, None, True], "c": {"z": "é", "y": (1, 2)}})
    b = canonical_bytes({"c": {"y": [1, 2], "z": "é"}, "a": [1.5, None, True], "b": 1})
    assert a == b == b'{"a":[1.5,null,true],"b":1,"c":{"y":[1,2],"z":"\\u00e9"}}'
    assert parse_canonical(a, "line 1") == {"a": [1.5, None, True], "b": 1, "c": {"y": [1, 2], "z": "é"}}


def test_numpy_scalars_become_python():
    assert canonical_bytes({"w": np.float32(0.5), "n": np.int64(3), "ok": np.bool_(True)}) == b'{"n":3,"ok":true,"w":0.5}'


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float64("nan")])
def test_nan_inf_refused_naming_field(bad):
    with pytest.raises(CanonicalError, match=r"sites\.site-2\.weight"):
        canonical_bytes({"sites": {"site-2": {"weight": bad}}})


def test_odd_types_refused():
    with pytest.raises(CanonicalError, match=r"meta\[1\]"):
        canonical_bytes({"meta": [1, object()]})
    with pytest.raises(CanonicalError, match="keys must be strings"):
        canonical_bytes({1: 2})
    with pytest.raises(CanonicalError, match="bytes"):
        canonical_bytes({"x": b"raw"})


def test_parse_refuses_non_canonical():
    with pytest.raises(CanonicalError, match="line 3.*canonical form"):
        parse_canonical(b'{"b":1, "a":2}', "line 3")
    with pytest.raises(CanonicalError, match="line 4"):
        parse_canonical(b'{"a":NaN}', "line 4")
    with pytest.raises(CanonicalError, match="line 5"):
        parse_canonical(b'{"a":', "line 5")


def test_hash_weights_deterministic_and_sensitive():
    rng = np.random.default_rng(0)
    w = {"conv.weight": rng.standard_normal((2, 3)).astype(np.float32), "conv.bias": np.zeros(2, np.float32)}
    before = {k: v.copy() for k, v in w.items()}
    h = hash_weights(w)
    assert hash_weights(dict(reversed(list(w.items())))) == h
    assert all(np.array_equal(w[k], before[k]) for k in w)  # inputs not mutated
    changed = dict(w, **{"conv.bias": np.array([0, 1e-7], np.float32)})
    assert hash_weights(changed) != h
    assert hash_weights(dict(w, **{"conv.bias": np.zeros(2, np.float64)})) != h  # dtype counts
    assert hash_weights(dict(w, **{"conv.weight": w["conv.weight"].reshape(3, 2)})) != h  # shape counts
    assert hash_weights({"conv.weight2": w["conv.weight"], "conv.bias": w["conv.bias"]}) != h  # names count
    torch = pytest.importorskip("torch")
    assert hash_weights({k: torch.from_numpy(v) for k, v in w.items()}) == h


def test_hash_weights_bad_input():
    with pytest.raises(CanonicalError, match="weights"):
        hash_weights([1, 2])
    with pytest.raises(CanonicalError, match=r"weights\['a'\]"):
        hash_weights({"a": np.array([object()])})


def test_sha256_file(tmp_path):
    p = tmp_path / "m.pt"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(LedgerError, match="missing.pt"):
        sha256_file(tmp_path / "missing.pt")


def test_a_payload_holding_bytes_hashes_node_by_node_and_tells_types_apart():
    """A secure-aggregation masked input ({"masked": {"data": ring bytes, ...}}) hashes the same on
    both ends; one changed byte, bytes given as text or as a list of ints, all hash differently."""
    from fedsegnet.ledger import hash_payload

    ring = bytes(range(256)) * 4
    masked = {"masked": {"kind": "secagg.masked", "round": 3, "data": ring, "parts": [b"\x00", 1]}}
    assert hash_payload(masked) == hash_payload({"masked": {"parts": [b"\x00", 1], "data": bytes(ring), "round": 3, "kind": "secagg.masked"}})
    changed = bytearray(ring)
    changed[500] ^= 1
    variants = [
        {"masked": {**masked["masked"], "data": bytes(changed)}},
        {"masked": {**masked["masked"], "data": ring.hex()}},
        {"masked": {**masked["masked"], "data": list(ring)}},
        {"masked": {**masked["masked"], "parts": [b"\x00", 2]}},
        {"masked": {**masked["masked"], "parts": [b"\x00\x00", 1]}},
    ]
    hashes = {hash_payload(masked), *(hash_payload(v) for v in variants)}
    assert len(hashes) == 1 + len(variants)
    with pytest.raises(CanonicalError, match="keys must be strings"):
        hash_payload({"masked": {1: b"x"}})
