"""The ChaCha20 PRG, mask cancellation in Z_{2^bits}, packing at the ring's bits."""

import numpy as np
import pytest

from fedsegnet.secagg.errors import SecAggError
from fedsegnet.secagg.masking import add_mask, expand, mask_input, pack, pair_sign, ring_sum, unpack

SEED_A, SEED_B = bytes(range(32)), bytes(range(1, 33))


def test_prg_is_deterministic_and_seed_dependent():
    a = expand(SEED_A, 1000)
    assert a.dtype == np.uint32 and a.shape == (1000,)
    np.testing.assert_array_equal(a, expand(SEED_A, 1000))
    np.testing.assert_array_equal(a[:10], expand(SEED_A, 10))  # a prefix of the same stream
    assert (a != expand(SEED_B, 1000)).mean() > 0.99
    low = expand(SEED_A, 1000, bits=7)
    np.testing.assert_array_equal(low, a & 127)
    assert expand(SEED_A, 0).shape == (0,)


def test_prg_known_answer():
    """ChaCha20 keystream of the all-zero key and nonce (RFC 7539 appendix A.2 test vector 1,
    counter 0): bytes 76 b8 e0 ad a0 f1 3d 90 ..., read as little-endian uint32."""
    first = expand(bytes(32), 2)
    assert [hex(v) for v in first] == ["0xade0b876", "0x903df1a0"]


def test_prg_bad_arguments():
    with pytest.raises(SecAggError, match="seed: must be 32 bytes"):
        expand(b"short", 4)
    with pytest.raises(SecAggError, match="length=-1"):
        expand(SEED_A, -1)
    with pytest.raises(SecAggError, match="ring_bits=33"):
        expand(SEED_A, 4, bits=33)


@pytest.mark.parametrize("bits", [32, 16, 7])
def test_pairwise_masks_cancel_in_the_sum(bits):
    sites = ["a", "b", "c", "d"]
    rng = np.random.default_rng(bits)
    seeds = {}
    for i, u in enumerate(sites):
        for v in sites[i + 1 :]:
            seeds[(u, v)] = seeds[(v, u)] = rng.bytes(32)
    xs = {u: rng.integers(0, 2**bits, 500, dtype=np.uint64).astype(np.uint32) for u in sites}
    self_seeds = {u: rng.bytes(32) for u in sites}
    ys = {u: mask_input(xs[u], self_seeds[u], {v: seeds[(u, v)] for v in sites if v != u}, u, bits) for u in sites}
    total = ring_sum(ys.values(), 500, bits)
    for u in sites:
        add_mask(total, expand(self_seeds[u], 500, bits), -1, bits)
    np.testing.assert_array_equal(total, ring_sum(xs.values(), 500, bits))
    assert not np.array_equal(ys["a"], xs["a"])


def test_mask_input_refuses_bad_values_and_keeps_them():
    x = np.arange(10, dtype=np.uint32)
    before = x.copy()
    mask_input(x, SEED_A, {"b": SEED_B}, "a", 32)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(SecAggError, match="values: must be a 1-D uint32"):
        mask_input(x.astype(np.int64), SEED_A, {}, "a", 32)
    with pytest.raises(SecAggError, match="not in the ring"):
        mask_input(np.array([200], dtype=np.uint32), SEED_A, {}, "a", 7)
    assert pair_sign("a", "b") == 1 and pair_sign("b", "a") == -1
    with pytest.raises(SecAggError, match="with itself"):
        pair_sign("a", "a")


@pytest.mark.parametrize("bits", [2, 7, 13, 24, 32])
@pytest.mark.parametrize("length", [1, 9, 1000])
def test_pack_round_trip_and_size(bits, length):
    v = expand(SEED_A, length, bits)
    data = pack(v, bits)
    assert len(data) == -(-length * bits // 8)
    np.testing.assert_array_equal(unpack(data, length, bits), v)
    with pytest.raises(SecAggError, match="masked input: .* bytes, expected"):
        unpack(data + b"\x00", length, bits)
