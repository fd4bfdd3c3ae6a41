"""CompactUpdate from the decoder's sparse form: the same update as from dense arrays, without a dense pass."""

import copy

import numpy as np
import pytest
import torch

from fedsegnet.aggregation import CompactUpdate, weighted_sum
from fedsegnet.compression import SparseQuantCodec, decode_payload
from fedsegnet.compression.codec import SparseTensor

SHAPES = {"w": (64, 48), "b": (48,), "tiny": (3,)}


def _payload(seed, ratio=0.1, bits=4):
    rng = np.random.default_rng(seed)
    update = {k: torch.from_numpy(rng.normal(size=s).astype(np.float32)) for k, s in SHAPES.items()}
    codec = SparseQuantCodec(ratio=ratio, bits=bits, dense_below=16)
    payload, _ = codec.encode(update, generator=torch.Generator().manual_seed(seed))
    return payload


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_sparse_decode_gives_the_update_the_dense_decode_gives(seed, bits):
    payload = _payload(seed, bits=bits)
    dense = decode_payload(payload, reference=SHAPES)
    sparse = decode_payload(payload, reference=SHAPES, sparse=True)
    assert isinstance(sparse["w"], SparseTensor) and isinstance(sparse["tiny"], np.ndarray)  # dense records stay arrays
    assert sparse["w"].index.dtype == np.int64 and sparse["w"].values.dtype == np.float32
    assert np.all(np.diff(sparse["w"].index) > 0)
    a, b = CompactUpdate(dense), CompactUpdate(sparse)
    assert list(a) == list(b) == list(SHAPES)
    for k in SHAPES:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(sparse[k].to_dense() if k != "tiny" else sparse[k], dense[k])
        assert b.shape(k) == SHAPES[k]
        pos = np.arange(0, int(np.prod(SHAPES[k])), 3)
        np.testing.assert_array_equal(a.gather(k, pos), b.gather(k, pos))
    assert a.norm() == b.norm() and b.is_finite()
    assert b.nbytes <= a.nbytes + 12 * 8 and b.nbytes < 0.35 * b.dense_nbytes  # 12 bytes per sent value
    other = CompactUpdate(decode_payload(_payload(seed + 5, bits=bits), reference=SHAPES, sparse=True))
    for k, v in weighted_sum([a, CompactUpdate(decode_payload(_payload(seed + 5, bits=bits), reference=SHAPES))], [0.3, 0.7]).items():
        np.testing.assert_array_equal(v, weighted_sum([b, other], [0.3, 0.7])[k])


def test_the_sparse_form_is_not_modified_and_a_dense_one_is_densified():
    t = SparseTensor((4, 5), np.array([1, 7, 19], np.int64), np.array([1.0, -2.0, 3.0], np.float32))
    before = copy.deepcopy((t.index, t.values))
    c = CompactUpdate({"x": t}, max_density=0.1)  # 3 of 20 is denser than 10%: kept dense
    assert c.nbytes == 80 and c["x"].reshape(-1)[[1, 7, 19]].tolist() == [1.0, -2.0, 3.0]
    c["x"][0, 0] = 5.0  # a dense copy is the update's own
    np.testing.assert_array_equal(t.index, before[0])
    np.testing.assert_array_equal(t.values, before[1])
    sparse = CompactUpdate({"x": t})
    assert sparse.nbytes == 3 * 12 and sparse.norm() == pytest.approx(np.sqrt(14.0))
    assert repr(t) == "SparseTensor(shape=[4, 5], count=3)"


def test_a_sparse_tensor_counts_the_values_of_the_whole_tensor():
    """Round records count a decoded update's values (``n_values``) through ``.size``, sparse or dense."""
    t = SparseTensor((4, 5), np.array([1, 7], np.int64), np.array([1.0, -2.0], np.float32))
    assert t.size == 20 == t.to_dense().size
