import numpy as np
import pytest

from fedsegnet.compression.index_coding import (
    INDEX_CODINGS,
    PayloadError,
    decode_indices,
    encode_indices,
    index_nbytes,
    varint_decode,
    varint_encode,
)


def _positions(numel, share, seed):
    rng = np.random.default_rng(seed)
    k = int(numel * share)
    return np.sort(rng.choice(numel, size=k, replace=False)).astype(np.int64)


@pytest.mark.parametrize("coding", INDEX_CODINGS)
@pytest.mark.parametrize("numel,share", [(1, 1.0), (7, 0.0), (1000, 0.01), (4097, 0.5), (100_003, 0.001), (50_000, 1.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_is_lossless(coding, numel, share, seed):
    idx = _positions(numel, share, seed)
    used, data = encode_indices(idx, numel, coding)
    assert used == coding and data.dtype == np.uint8 and data.ndim == 1
    back = decode_indices(used, data, idx.size, numel)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, idx)


def test_auto_picks_the_smallest():
    numel = 100_000
    for share, expect in [(0.1, "deflate"), (0.6, "bitmap")]:
        idx = _positions(numel, share, 0)
        coding, data = encode_indices(idx, numel, "auto")
        sizes = index_nbytes(idx, numel)
        assert coding == expect and data.size <= min(sizes.values())
        if expect == "deflate":  # near the entropy of 10% kept positions (~0.47 bits per value)
            assert data.size < 0.7 * sizes["varint"]
    few = np.array([5, 900])  # 2 bytes of varints: zlib's header would cost more
    assert encode_indices(few, 1000, "auto")[0] == "varint"


@pytest.mark.parametrize("case", ["truncated", "corrupt", "too_long"])
def test_malformed_deflate_is_rejected(case):
    idx = _positions(100_000, 0.1, 1)
    _, data = encode_indices(idx, 100_000, "deflate")
    count = idx.size
    if case == "truncated":
        data = data[: data.size // 2]
    elif case == "corrupt":
        data = data.copy()
        data[:2] = 0xFF
    else:
        count = idx.size // 20  # the stream inflates to more than count positions can take
    with pytest.raises(PayloadError, match="deflate index stream"):
        decode_indices("deflate", data, count, 100_000, name="w")


def test_raw_wins_for_few_far_apart_positions():
    idx = np.array([3_000_000_000, 3_900_000_000], dtype=np.int64)  # both gaps need 5 varint bytes; a bitmap is huge
    coding, data = encode_indices(idx, 4_000_000_000, "auto")
    assert coding == "raw" and data.size == 8


def test_varint_round_trip_of_large_values():
    vals = np.array([0, 1, 127, 128, 16383, 16384, 2**35, 2**63 - 1], dtype=np.uint64)
    np.testing.assert_array_equal(varint_decode(varint_encode(vals), vals.size), vals)


def test_bad_coding_argument():
    with pytest.raises(ValueError, match="coding='zip'"):
        encode_indices(np.arange(3), 10, "zip")


@pytest.mark.parametrize(
    "case,match",
    [
        ("truncated", "truncated"),
        ("count", "holds 10 positions, the payload says 11"),
        ("range", "out of range"),
        ("unknown", "unknown index coding"),
        ("dtype", "1-D uint8"),
    ],
)
def test_malformed_varint_is_rejected(case, match):
    idx = np.arange(0, 100, 10)
    _, data = encode_indices(idx, 100, "varint")
    coding, count, numel = "varint", idx.size, 100
    if case == "truncated":
        data = np.concatenate([data, np.array([0x81], np.uint8)])
    elif case == "count":
        count = 11
    elif case == "range":
        numel = 50
    elif case == "unknown":
        coding = "rle"
    elif case == "dtype":
        data = data.astype(np.int32)
    with pytest.raises(PayloadError, match=match):
        decode_indices(coding, data, count, numel, name="enc.w")


def test_malformed_bitmap_and_raw_are_rejected():
    _, bm = encode_indices(np.array([1, 5]), 10, "bitmap")
    with pytest.raises(PayloadError, match="bitmap has 1 bytes"):
        decode_indices("bitmap", bm[:1], 2, 10)
    bad = bm.copy()
    bad[-1] |= 0x01  # position 15 of a 10-value tensor
    with pytest.raises(PayloadError, match="past the end"):
        decode_indices("bitmap", bad, 3, 10)
    _, raw = encode_indices(np.array([4, 2]), 10, "raw")
    with pytest.raises(PayloadError, match="not strictly increasing"):
        decode_indices("raw", raw, 2, 10)
    _, raw = encode_indices(np.array([2, 40]), 50, "raw")
    with pytest.raises(PayloadError, match="index 40 out of range"):
        decode_indices("raw", raw, 2, 10)
    with pytest.raises(PayloadError, match="raw index data has 7 bytes"):
        decode_indices("raw", raw[:7], 2, 50)
