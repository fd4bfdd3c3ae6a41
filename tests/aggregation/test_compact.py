"""CompactUpdate from the decoder's sparse form: the same update as from dense arrays, without a dense pass."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from fedsegnet.aggregation import CompactUpdate, update_norm, weighted_sum
from fedsegnet.aggregation.compact import DenseTensor, DictView, view
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


def test_compact_update_keeps_sparse_tensors_sparse_and_reads_them_back():
    rng = np.random.default_rng(0)
    w = np.zeros((100, 100), np.float32)
    idx = rng.choice(w.size, 1000, replace=False)
    w.flat[idx] = rng.normal(size=1000)
    dense = rng.normal(size=(50,)).astype(np.float32)
    c = CompactUpdate({"w": w, "d": dense})
    np.testing.assert_array_equal(c["w"], w)
    assert c["d"] is dense  # dense float32 kept by reference, not copied
    assert c.nbytes < 0.35 * c.dense_nbytes + dense.nbytes  # 12 bytes per stored value at 10% density
    assert c.norm() == pytest.approx(update_norm({"w": w, "d": dense}), rel=1e-6)
    assert list(c) == ["w", "d"] and c.shape("w") == (100, 100) and c.is_finite()


def test_compact_gather_and_add_to_match_dense():
    rng = np.random.default_rng(1)
    w = np.zeros(5000, np.float32)
    w[rng.choice(5000, 400, replace=False)] = rng.normal(size=400)
    c = CompactUpdate({"w": w})
    positions = np.sort(rng.choice(5000, 700, replace=False))
    np.testing.assert_array_equal(c.gather("w", positions), w[positions])
    out = np.ones(5000, np.float32)
    c.add_to("w", out, 0.5)
    np.testing.assert_allclose(out, 1 + 0.5 * w, rtol=1e-6)


def _mostly_zero(seed):
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in SHAPES.items():
        a = rng.normal(size=s).astype(np.float32)
        a[rng.random(s) < 0.8] = 0.0
        out[k] = a
    return out


@pytest.mark.parametrize("as_tensor", [False, True])
def test_a_plain_dict_and_a_compact_update_read_the_same(as_tensor):
    """view(): gather, add_to, shape, norm and finiteness agree between the two forms of one update."""
    update = _mostly_zero(3)
    plain = {k: torch.from_numpy(v) for k, v in update.items()} if as_tensor else update
    before = copy.deepcopy(update)
    a, b = view(plain), view(CompactUpdate(update))
    assert isinstance(a, DictView) and view(a) is a and view(b) is b
    rng = np.random.default_rng(0)
    for k, s in SHAPES.items():
        assert a.shape(k) == b.shape(k) == s
        pos = np.sort(rng.choice(int(np.prod(s)), min(5, int(np.prod(s))), replace=False))
        np.testing.assert_array_equal(a.gather(k, pos), b.gather(k, pos))
        out_a, out_b = np.ones(s, np.float32), np.ones(s, np.float32)
        a.add_to(k, out_a, 0.3)
        b.add_to(k, out_b, 0.3)
        np.testing.assert_array_equal(out_a, out_b)
    assert a.norm() == pytest.approx(b.norm(), rel=1e-6) and a.is_finite() and b.is_finite()
    for k in SHAPES:
        np.testing.assert_array_equal(update[k], before[k])  # nothing written into the inputs
    update["w"][0, 0] = np.nan
    assert not view(update).is_finite() and not CompactUpdate(update).is_finite()


class _StandIn:
    """A sparse tensor object that is neither SparseTensor nor PackedTensor: only the interface."""

    def __init__(self, sparse: SparseTensor):
        self._t, self.shape = sparse, sparse.shape
        self.reads = 0

    @property
    def nbytes(self):
        return 1  # a form much smaller than the values it holds

    def gather(self, positions):
        self.reads += 1
        return self._t.gather(positions)

    def add_to(self, flat_out, factor):
        self.reads += 1
        self._t.add_to(flat_out, factor)

    def sq_norm(self):
        return self._t.sq_norm()


def test_any_object_with_the_sparse_tensor_interface_plugs_into_compact_update():
    sparse = decode_payload(_payload(4), reference=SHAPES, sparse=True)
    stand_in = {k: _StandIn(v) if isinstance(v, SparseTensor) else v for k, v in sparse.items()}
    a, b = CompactUpdate(sparse), CompactUpdate(stand_in)
    assert b.nbytes < a.nbytes
    for k, s in SHAPES.items():
        np.testing.assert_array_equal(a[k], b[k])
        pos = np.arange(0, int(np.prod(s)), 5)
        np.testing.assert_array_equal(a.gather(k, pos), b.gather(k, pos))
    assert a.norm() == b.norm() and b.is_finite()
    np.testing.assert_array_equal(weighted_sum([a], [0.5])["w"], weighted_sum([b], [0.5])["w"])
    assert stand_in["w"].reads >= 3  # read through its own methods, never densified at intake


def test_sparse_tensor_methods():
    t = SparseTensor((2, 5), np.array([1, 4, 9], np.int64), np.array([1.0, -2.0, 3.0], np.float32))
    np.testing.assert_array_equal(t.gather(np.array([0, 1, 4, 8, 9])), [0.0, 1.0, -2.0, 0.0, 3.0])
    out = np.ones(10, np.float32)
    t.add_to(out, 2.0)
    np.testing.assert_array_equal(out, 1 + 2 * t.to_dense().reshape(-1))
    assert t.sq_norm() == 14.0 and t.nbytes == 36
    empty = SparseTensor((3,), np.zeros(0, np.int64), np.zeros(0, np.float32))
    assert empty.gather(np.array([0, 2])).tolist() == [0.0, 0.0] and empty.sq_norm() == 0.0


def test_a_dense_bfloat16_record_is_read_as_float32():
    update = {"w": (torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)}
    payload, _ = SparseQuantCodec(ratio=1.0).encode(update)  # every record dense
    for sparse in (False, True, "packed"):
        decoded = decode_payload(payload, reference=update, sparse=sparse)
        assert decoded["w"].dtype == torch.bfloat16  # numpy has no bfloat16
        exact = decoded["w"].float().numpy()
        for reader in (CompactUpdate(decoded), view(decoded)):
            out = np.zeros((64, 64), np.float32)
            reader.add_to("w", out, 1.0)
            assert out.tobytes() == exact.tobytes() and reader.is_finite()
            assert reader.gather("w", np.array([0, 5, 4095])).tolist() == exact.reshape(-1)[[0, 5, 4095]].tolist()
        assert CompactUpdate(decoded).norm() == pytest.approx(float(np.linalg.norm(exact)), rel=1e-6)


@pytest.mark.parametrize("form", ["sparse", "dense"])
def test_a_float32_overflow_of_the_squared_norm_is_inf_without_a_warning(form):
    big = np.full(8, 3e38, np.float32)  # finite values whose squares overflow float32
    tensor = SparseTensor((16,), np.arange(0, 16, 2), big) if form == "sparse" else DenseTensor(big)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tensor.sq_norm() == math.inf
        compact = CompactUpdate({"w": tensor} if form == "sparse" else {"w": big})
        assert compact.is_finite()  # the caller reads the values back to tell an overflow from an Inf


@pytest.mark.parametrize("form", ["dense", True, "packed"])
def test_the_kept_sample_is_what_a_fresh_gather_reads(form):
    from fedsegnet.aggregation.divergence import sample_positions

    payload = _payload(3)
    decoded = decode_payload(payload, sparse=form != "dense" and form)
    sample = sample_positions(SHAPES, sample_size=100)
    kept = CompactUpdate(decoded, sample=sample)
    fresh = CompactUpdate(decode_payload(payload, sparse=form != "dense" and form))
    for name, positions in sample.items():
        values = kept.gather(name, positions)
        assert not values.flags.writeable
        np.testing.assert_array_equal(values, fresh.gather(name, positions))
        np.testing.assert_array_equal(kept.gather(name, positions.copy()), values)  # equal positions, not only the same object
        other = positions[:-1]
        np.testing.assert_array_equal(kept.gather(name, other), fresh.gather(name, other))  # other positions: read from the tensor
    assert kept.nbytes == fresh.nbytes + 4 * sum(p.size for p in sample.values())
