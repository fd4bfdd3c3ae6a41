"""PackedTensor: the same reads as SparseTensor's bit for bit (alone and in a CompactUpdate), every bad
byte refused at decode."""

import copy
import math

import numpy as np
import pytest
import torch

from fedsegnet.aggregation.compact import CompactUpdate
from fedsegnet.compression import PayloadError, SparseQuantCodec, decode_payload
from fedsegnet.compression.codec import SparseTensor, pack_payload
from fedsegnet.compression.packed import PackedTensor
from fedsegnet.errors import ConfigError

SETTINGS = [
    dict(ratio=0.1, bits=4),  # the job default
    dict(ratio=0.05, bits=8, block=64, index_coding="varint"),
    dict(ratio=0.3, bits=4, block=0, index_coding="bitmap", stochastic=True),
    dict(ratio=0.2, bits=16, index_coding="raw"),
    dict(ratio=0.5, bits=32, block=7, index_coding="deflate"),
    dict(ratio=0.02, bits=8, scope="global", selection="exact"),
    dict(ratio=1.0, dense_bits=4),  # every record dense
]


def _update(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv": torch.randn(16, 8, 3, 3, 3, generator=g) * 0.02,
        "qkv": (torch.randn(48, 64, generator=g) * 0.02).to(torch.float16),
        "proj": (torch.randn(64, 40, generator=g) * 0.02).to(torch.bfloat16),
        "fc": torch.randn(50, 60, generator=g).double(),
        "norm": torch.randn(16, generator=g),
        "zeros": torch.zeros(4096),  # top-k of zeros sends nothing
    }


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
@pytest.mark.parametrize("seed", range(4))
def test_packed_reads_equal_the_sparse_tensor_reads_bit_for_bit(setting, seed):
    update = _update(seed)
    payload, _ = SparseQuantCodec(dense_below=256, **SETTINGS[setting]).encode(
        update, generator=torch.Generator().manual_seed(seed)
    )
    sparse = decode_payload(payload, reference=update, sparse=True)
    packed = decode_payload(payload, reference=update, sparse="packed")
    dense = decode_payload(payload, reference=update)
    rng = np.random.default_rng(seed)
    assert list(packed) == list(sparse)
    for name, s in sparse.items():
        p = packed[name]
        if not isinstance(s, SparseTensor):  # dense records are arrays in every form
            assert not isinstance(p, PackedTensor) and torch.equal(torch.as_tensor(p), torch.as_tensor(s))
            continue
        assert isinstance(p, PackedTensor) and p.shape == s.shape and p.size == s.size
        positions = np.unique(np.concatenate([rng.integers(0, s.size, 200), s.index[:50]]))
        factor = float(rng.uniform(-2, 2))
        out, added = np.linspace(-1, 1, p.size, dtype=np.float32), np.linspace(-1, 1, s.size, dtype=np.float32)
        p.add_to(out, factor)
        s.add_to(added, factor)
        assert p.gather(positions).tobytes() == s.gather(positions).tobytes()
        assert out.tobytes() == added.tobytes()
        assert p.sq_norm() == s.sq_norm()
        assert p.to_dense().tobytes() == s.to_dense().tobytes()
        assert np.array_equal(p.to_dense(), np.asarray(torch.as_tensor(dense[name]).float()))
        assert p.nbytes < s.nbytes or s.index.size == 0
    # the aggregator's store of an update reads both the same, holding the packed form in fewer bytes
    # (a dense bfloat16 record is a torch tensor in every form: read as float32, exactly)
    cs, cp = CompactUpdate(sparse), CompactUpdate(packed)
    assert cs.norm() == cp.norm() and cs.is_finite() and cp.is_finite()
    for name in update:
        positions = np.unique(rng.integers(0, math.prod(cs.shape(name)), 300))
        assert cs.gather(name, positions).tobytes() == cp.gather(name, positions).tobytes()
        a, b = (np.zeros(cs.shape(name), np.float32) for _ in range(2))
        cs.add_to(name, a, 0.7)
        cp.add_to(name, b, 0.7)
        assert a.tobytes() == b.tobytes() and cs[name].tobytes() == cp[name].tobytes()
    assert cp.nbytes <= cs.nbytes


def test_a_tensor_that_sends_nothing_reads_as_zeros():
    payload = pack_payload({"w": {
        "shape": [10, 30], "dtype": "float32", "mode": "sparse", "count": 0, "index_coding": "varint",
        "index": np.zeros(0, np.uint8), "bits": 4, "block": 256, "values": np.zeros(0, np.uint8),
        "scales": np.zeros(0, np.float32),
    }}, 256)  # fmt: skip
    p = decode_payload(payload, sparse="packed")["w"]
    out = np.ones(300, np.float32)
    p.add_to(out, 3.0)
    assert p.sq_norm() == 0.0 and not p.gather(np.arange(300)).any() and (out == 1).all()
    assert p.to_dense().shape == (10, 30) and not p.to_dense().any()


def test_the_packed_tensor_does_not_see_later_changes_to_the_payload():
    update = _update(0)
    payload, _ = SparseQuantCodec(dense_below=256).encode(update)
    packed = decode_payload(payload, reference=update, sparse="packed")
    before = packed["conv"].to_dense().copy()
    payload["values"][:] = 0xFF  # codes out of range, had the tensor kept a view
    payload["index"][:] = 0xFF
    assert np.array_equal(packed["conv"].to_dense(), before)


def _bad(payload: dict, case: str) -> dict:
    """The payload with one kind of bad byte in the ``conv`` record (a top-k tensor)."""
    p = copy.deepcopy(payload)
    row = p["names"].index("conv")
    idx0, val0 = int(p["table"][:row, 5].sum()), int(p["table"][:row, 6].sum())
    if case == "index":
        p["index"][idx0 : idx0 + int(p["table"][row, 5])] = 0xFF  # unfinished varints / corrupt stream
    elif case == "codes":
        p["values"][val0] = 0xFF  # 8-bit code 255 > 254
    elif case == "scale":
        p["scales"][0] = np.nan
    elif case == "huge_scale":
        p["scales"][0] = 3e38
    elif case == "float16":
        p["table"][row, 1] = 2  # declared float16; the values times 1e6 overflow it
    return p


@pytest.mark.parametrize(
    "case,match",
    [
        ("index", "conv: .*index stream"),
        ("codes", "conv: (8-bit code 255 out of range|deflate values stream is corrupt)"),
        ("scale", "conv: scales contain NaN"),
        ("huge_scale", "conv: 8-bit codes times scales overflow"),
        ("float16", "conv: decoded values overflow to Inf as float16"),
    ],
)
@pytest.mark.parametrize("coding", ["varint", "deflate"])
def test_a_bad_byte_in_a_packed_record_is_refused_at_decode_naming_the_tensor(case, match, coding):
    update = {"conv": torch.randn(16, 8, 3, 3, 3) * (1e6 if case == "float16" else 0.02), "b": torch.zeros(4)}
    payload, _ = SparseQuantCodec(ratio=0.2, bits=8, dense_below=256, index_coding=coding).encode(update)
    with pytest.raises(PayloadError, match=match):
        decode_payload(_bad(payload, case), reference=update, sparse="packed")


@pytest.mark.parametrize("bad", ["dense", 1.5, None, "Packed"])
def test_an_unknown_sparse_form_names_the_argument(bad):
    payload, _ = SparseQuantCodec().encode({"w": torch.zeros(4)})
    with pytest.raises(ConfigError, match="sparse="):
        decode_payload(payload, sparse=bad)


def test_the_checks_decode_is_kept_warm_until_the_first_read_or_a_release():
    payload = SparseQuantCodec(ratio=0.1, bits=4).encode(_update(0), generator=torch.Generator().manual_seed(0))[0]
    sparse = decode_payload(payload, sparse=True)["conv"]
    first, second = (decode_payload(payload, sparse="packed")["conv"] for _ in range(2))
    packed_bytes = first._index.nbytes + first._codes.nbytes + first._scales.nbytes
    assert first.nbytes == packed_bytes + sparse.nbytes  # warm: the checked decode is held
    positions = np.arange(0, sparse.size, 7)
    np.testing.assert_array_equal(first.gather(positions), sparse.gather(positions))  # the warm decode, read once
    assert first.nbytes == packed_bytes
    np.testing.assert_array_equal(first.gather(positions), sparse.gather(positions))  # decoded again
    second.release()
    assert second.nbytes == packed_bytes
    np.testing.assert_array_equal(second.to_dense(), sparse.to_dense())
