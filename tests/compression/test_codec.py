import copy
import logging
import math
import tracemalloc

import numpy as np
import pytest
import torch

from fedsegnet.compression import (
    ErrorFeedback,
    PayloadError,
    SparseQuantCodec,
    build_codec,
    decode_payload,
    payload_nbytes,
    select_topk,
)
from fedsegnet.compression.codec import pack_payload, stored_values, unpack_payload
from fedsegnet.errors import ConfigError


def _update(seed=0, scale=0.01):
    g = torch.Generator().manual_seed(seed)
    return {
        "enc.conv.weight": torch.randn(32, 16, 3, 3, 3, generator=g) * scale,
        "enc.norm.weight": torch.randn(32, generator=g) * scale,
        "head.weight": (torch.randn(3, 32, 1, 1, 1, generator=g) * scale).numpy(),
        "attn.qkv.weight": torch.randn(96, 32, generator=g) * scale,
    }


def _t(x):
    return torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x


SETTINGS = [
    dict(ratio=0.01),
    dict(ratio=0.05, bits=4, block=64, stochastic=True),
    dict(ratio=0.2, scope="global", selection="exact", dense_bits=8),
    dict(ratio=1.0, bits=32),
    dict(ratio=0.1, index_coding="bitmap", block=0),
]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("seed", [0, 1])
def test_sent_plus_residual_equals_update_plus_old_residual(kwargs, seed):
    codec = SparseQuantCodec(**kwargs)
    update = _update(seed)
    old = {k: torch.randn(v.shape) * 1e-3 for k, v in update.items()}
    payload, residual = codec.encode(update, old, generator=torch.Generator().manual_seed(seed))
    sent = decode_payload(payload, reference=update)
    for k, u in update.items():
        assert sent[k].shape == tuple(u.shape) and sent[k].dtype == np.float32
        assert residual[k].shape == tuple(u.shape) and residual[k].dtype == torch.float32
        torch.testing.assert_close(torch.from_numpy(sent[k]) + residual[k], _t(u) + old[k], rtol=0, atol=1e-6)


def test_encode_does_not_modify_inputs():
    update, residual = _update(), {k: torch.ones(v.shape) * 1e-3 for k, v in _update().items()}
    u0, r0 = copy.deepcopy(update), copy.deepcopy(residual)
    SparseQuantCodec(ratio=0.05, stochastic=True).encode(update, residual)
    for k in update:
        assert np.array_equal(np.asarray(update[k]), np.asarray(u0[k])) and torch.equal(residual[k], r0[k])


def test_sparse_tensors_send_about_ratio_and_small_ones_go_dense():
    update = _update()
    payload, _ = SparseQuantCodec(ratio=0.05, dense_below=2048).encode(update)
    recs = unpack_payload(payload)
    assert recs["enc.norm.weight"]["mode"] == "dense" and recs["head.weight"]["mode"] == "dense"
    assert recs["enc.conv.weight"]["mode"] == "sparse" and recs["attn.qkv.weight"]["mode"] == "sparse"
    n = update["enc.conv.weight"].numel()
    assert abs(recs["enc.conv.weight"]["count"] - 0.05 * n) <= 0.15 * 0.05 * n


def test_compression_is_large_at_one_percent():
    update = {"w": torch.randn(1_000_000) * 0.01}
    payload, _ = SparseQuantCodec(ratio=0.01, bits=8).encode(update)
    ratio = 4_000_000 / payload_nbytes(payload)
    assert 150 < ratio < 220, ratio  # ~1 byte of position + 1 byte of value per kept value


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_sampled_selection_finds_the_largest_values(scope):
    g = torch.Generator().manual_seed(0)
    flats = {"a": torch.randn(200_000, generator=g), "b": torch.randn(50_000, generator=g) * 3}
    exact = select_topk(flats, 0.01, scope, "exact")
    sampled = select_topk(flats, 0.01, scope, "sampled", generator=torch.Generator().manual_seed(1))
    for k in flats:
        assert torch.all(sampled[k][1:] > sampled[k][:-1])
        overlap = np.intersect1d(exact[k].numpy(), sampled[k].numpy()).size
        assert overlap >= 0.85 * min(exact[k].numel(), sampled[k].numel())
        assert abs(sampled[k].numel() - exact[k].numel()) <= 0.15 * exact[k].numel() + 1
    if scope == "global":  # one threshold: the tensor with larger values sends a larger share
        assert exact["b"].numel() / 50_000 > exact["a"].numel() / 200_000


def test_exact_selection_is_exact():
    flat = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    idx = select_topk({"w": flat}, 0.01, "tensor", "exact")["w"]
    top = torch.topk(flat.abs(), 100).indices.sort().values
    assert torch.equal(idx, top)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(ratio=0), "ratio"),
        (dict(ratio=1.5), "ratio"),
        (dict(bits=5), "bits"),
        (dict(dense_bits=2), "bits"),
        (dict(block=-1), "block"),
        (dict(scope="layer"), "scope"),
        (dict(selection="fast"), "selection"),
        (dict(index_coding="zip"), "index_coding"),
        (dict(dense_below=-3), "dense_below"),
        (dict(sample_size=0), "sample_size"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SparseQuantCodec(**kwargs)


def test_registry():
    assert isinstance(build_codec("sparse_quant", ratio=0.1), SparseQuantCodec)
    with pytest.raises(ValueError, match="codec='gzip'"):
        build_codec("gzip")


def test_residual_that_does_not_match_is_an_error():
    update = _update()
    with pytest.raises(ValueError, match="residual"):
        SparseQuantCodec().encode(update, {"other": torch.zeros(3)})


def test_integer_update_is_an_error():
    with pytest.raises(ValueError, match="update\\['n'\\]: dtype int64"):
        SparseQuantCodec().encode({"n": torch.zeros(3, dtype=torch.int64)})


# --------------------------------------------------------------------------- malformed payloads
def _payload():
    update = _update()
    payload, _ = SparseQuantCodec(ratio=0.05, dense_bits=16).encode(update)
    return update, payload


def _row(p, name):
    return p["names"].index(name)


def _break(payload, case):
    p = copy.deepcopy(payload)
    conv, norm = _row(p, "enc.conv.weight"), _row(p, "enc.norm.weight")
    if case == "version":
        p["version"] = 99
    elif case == "format":
        p["format"] = "other"
    elif case == "truncated_values":
        p["values"] = p["values"][:-5]
    elif case == "truncated_index":
        p["index"] = p["index"][:-3]
    elif case == "truncated_scales":
        p["scales"] = p["scales"][:-1]
    elif case == "shape":  # the conv weight's dims reversed
        start = int(p["table"][:conv, 7].sum())
        p["shapes"][start : start + 5] = p["shapes"][start : start + 5][::-1].copy()
    elif case == "index_range":  # the conv weight declared with fewer values than its positions reach
        start = int(p["table"][:conv, 7].sum())
        p["shapes"][start + 4] = 1
    elif case == "nan":  # a float16 NaN in the dense norm weight
        start = int(p["table"][:norm, 6].sum())
        p["values"][start : start + 2] = np.array([np.nan], np.float16).view(np.uint8)
    elif case == "nan_scale":
        p["scales"][0] = np.inf
    elif case == "missing":
        row = _row(p, "head.weight")
        start, nd = int(p["table"][:row, 7].sum()), int(p["table"][row, 7])
        before = (p["table"][:row, 5].sum(), p["table"][:row, 6].sum())
        n_idx, n_val = int(p["table"][row, 5]), int(p["table"][row, 6])
        assert n_idx == 0 and p["table"][row, 0] == 1  # dense, 16 bits: no scales to remove
        p["values"] = np.delete(p["values"], np.arange(before[1], before[1] + n_val))
        p["shapes"] = np.delete(p["shapes"], np.arange(start, start + nd))
        p["table"] = np.delete(p["table"], row, axis=0)
        del p["names"][row]
    elif case == "extra":
        p["names"][_row(p, "head.weight")] = "evil"
    elif case == "mode":
        p["table"][conv, 0] = 7
    elif case == "table":
        p["table"] = p["table"][:, :5]
    elif case == "names":
        p["names"] = "enc.conv.weight"
    return p


@pytest.mark.parametrize(
    "case,match",
    [
        ("version", "unknown version 99"),
        ("format", "field 'format'"),
        ("truncated_values", "field 'values' has \\d+ entries, the table declares"),
        ("truncated_index", "field 'index' has \\d+ entries"),
        ("truncated_scales", "field 'scales' has \\d+ entries"),
        ("shape", "enc.conv.weight: shape \\[3, 3, 3, 16, 32\\] differs from the model's"),
        ("index_range", "enc.conv.weight: .*out of range"),
        ("nan", "enc.norm.weight: values contain NaN"),
        ("nan_scale", "scales contain NaN"),
        ("missing", "1 missing \\['head.weight'\\]"),
        ("extra", "1 unexpected \\['evil'\\]"),
        ("mode", "enc.conv.weight: mode code 7"),
        ("table", "field 'table' has shape"),
        ("names", "field 'names'"),
    ],
)
def test_malformed_payload_is_rejected_with_the_reason(case, match):
    update, payload = _payload()
    reference = update if case != "index_range" else None
    with pytest.raises(PayloadError, match=match):
        decode_payload(_break(payload, case), reference=reference)


def test_payload_not_a_dict():
    with pytest.raises(PayloadError, match="payload must be a dict"):
        decode_payload([1, 2, 3])


def _empty_sparse(shape):
    """A payload of one sparse tensor that sends nothing but declares ``shape``."""
    record = {
        "shape": list(shape), "dtype": "float32", "mode": "sparse", "count": 0, "index_coding": "varint",
        "index": np.zeros(0, np.uint8), "bits": 8, "block": 256, "values": np.zeros(0, np.uint8),
        "scales": np.zeros(0, np.float32),
    }  # fmt: skip
    return pack_payload({"w": record}, 256)


def test_huge_declared_shape_is_refused_before_allocating():
    payload = _empty_sparse([2**31 - 1, 2**31 - 1, 2**31 - 1])  # 72 bytes of arrays, 2**93 values declared
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match="more than the decoder's bound of 268435456 .*largest: w"):
            decode_payload(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_max_values_is_the_bound_without_a_reference():
    assert decode_payload(_empty_sparse([10, 100]), max_values=1000)["w"].shape == (10, 100)
    with pytest.raises(PayloadError, match="declares 1001 values, more than the decoder's bound of 1000"):
        decode_payload(_empty_sparse([1001]), max_values=1000)
    # with a reference, its shapes are the bound, whatever max_values says
    assert decode_payload(_empty_sparse([1001]), reference={"w": (1001,)}, max_values=10)["w"].shape == (1001,)


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_bad_max_values_names_the_argument(bad):
    with pytest.raises(ConfigError, match="max_values"):
        decode_payload(_empty_sparse([4]), max_values=bad)


def test_code_times_huge_scale_is_rejected_naming_the_tensor():
    update, _ = _payload()
    payload, _ = SparseQuantCodec(ratio=0.05, bits=8).encode(update)
    payload["scales"][:] = 3e38  # finite scales; 127 steps of one overflow float32
    with pytest.raises(PayloadError, match="enc.conv.weight: 8-bit codes times scales overflow float32"):
        decode_payload(payload, reference=update)


def test_float32_value_declared_float16_is_rejected_naming_the_tensor():
    update = {"w": torch.full((8,), 1e6), "b": torch.zeros(4)}
    payload, _ = SparseQuantCodec(ratio=1.0, dense_bits=32).encode(update)
    payload["table"][payload["names"].index("w"), 1] = 2  # dtype code of float16: max 65504
    with pytest.raises(PayloadError, match="w: decoded values overflow to Inf as float16"):
        decode_payload(payload, reference=update)


# --------------------------------------------------------------------------- error feedback
def _flat(d):
    return torch.cat([_t(v).reshape(-1) for v in d.values()])


@pytest.mark.parametrize("ratio,bits", [(0.01, 8), (0.05, 4)])
def test_error_feedback_conserves_the_sum_of_updates(ratio, bits):
    ef = ErrorFeedback(SparseQuantCodec(ratio=ratio, bits=bits, stochastic=True), name="site-1")
    total_update, total_sent = 0, 0
    for rnd in range(8):
        update = _update(seed=rnd)
        payload = ef.compress(update, generator=torch.Generator().manual_seed(rnd))
        total_update = total_update + _flat(update).double()
        total_sent = total_sent + _flat(decode_payload(payload)).double()
    torch.testing.assert_close(total_sent + _flat(ef.residual).double(), total_update, rtol=0, atol=1e-5)


def test_residual_stays_bounded():
    ef = ErrorFeedback(SparseQuantCodec(ratio=0.05, bits=8, dense_below=0))
    norms = []
    for rnd in range(120):
        ef.compress({"w": torch.randn(20_000, generator=torch.Generator().manual_seed(rnd)) * 0.01})
        norms.append(ef.last_residual_norm / ef.last_update_norm)
    # grows while values below the threshold accumulate, then levels off: the last 40 rounds are
    # no larger than the 40 before, and far below the sqrt(rounds) of an unsent random walk
    assert max(norms[80:]) < 1.1 * max(norms[40:80])
    assert max(norms) < 0.5 * math.sqrt(120)


def test_error_feedback_state_round_trip(tmp_path):
    ef = ErrorFeedback(SparseQuantCodec(ratio=0.05), name="site-1")
    ef.compress(_update(0))
    ef.save(tmp_path / "ef.pt")
    other = ErrorFeedback(SparseQuantCodec(ratio=0.05), name="site-1")
    assert other.load(tmp_path / "ef.pt")
    assert other.rounds == 1 and set(other.residual) == set(ef.residual)
    for k in ef.residual:
        assert torch.equal(other.residual[k], ef.residual[k])
    # restored: the next payload equals the one the first instance makes
    a, b = ef.compress(_update(1)), other.compress(_update(1))
    np.testing.assert_array_equal(a["values"], b["values"])
    np.testing.assert_array_equal(a["index"], b["index"])


def test_unreadable_state_is_reset_with_a_warning(tmp_path, caplog):
    path = tmp_path / "ef.pt"
    path.write_bytes(b"not a torch file")
    ef = ErrorFeedback(SparseQuantCodec(), name="site-7")
    with caplog.at_level(logging.WARNING):
        assert not ef.load(path)
    assert "site-7" in caplog.text and str(path) in caplog.text and ef.residual == {}
    with pytest.raises(ValueError, match="version"):
        ef.load_state_dict({"version": 42})


@pytest.mark.parametrize("bad", ["shape", "nan"])
def test_mismatched_or_nonfinite_residual_is_dropped_with_a_warning(bad, caplog):
    ef = ErrorFeedback(SparseQuantCodec(ratio=0.05), name="site-3")
    ef.compress(_update(0))
    if bad == "shape":
        ef.residual["enc.conv.weight"] = torch.zeros(5)
    else:
        ef.residual["enc.conv.weight"][0] = float("nan")
    with caplog.at_level(logging.WARNING):
        payload = ef.compress(_update(1))
    assert "site-3" in caplog.text and "zero residual" in caplog.text
    assert all(torch.isfinite(r).all() for r in ef.residual.values())
    assert set(decode_payload(payload)) == set(_update())


# --------------------------------------------------------------------------- payload versions
def as_version_1(payload: dict) -> dict:
    """The same records as a version-1 payload (8 table columns, every value stored raw)."""
    tensors = {}
    for name, rec in unpack_payload(payload).items():
        count = rec["count"] if rec["mode"] == "sparse" else rec["numel"]
        values = stored_values(rec["values"], rec["value_coding"], rec["bits"], count, name)
        tensors[name] = {**rec, "values": values, "value_coding": "raw"}
    return pack_payload(tensors, payload["block"], payload["codec"], version=1)


@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_version_2_deflates_codes_and_version_1_still_decodes_to_the_same_update(kwargs):
    update = _update(3)
    payload, _ = SparseQuantCodec(**kwargs).encode(update, generator=torch.Generator().manual_seed(3))
    old = as_version_1(payload)
    assert payload["version"] == 2 and payload["table"].shape[1] == 9 and old["version"] == 1 and old["table"].shape[1] == 8
    assert payload["values"].size <= old["values"].size
    for sparse in (False, True, "packed"):
        new_out, old_out = decode_payload(payload, sparse=sparse), decode_payload(old, sparse=sparse)
        for k in update:
            a, b = (v if isinstance(v, np.ndarray) else v.to_dense() for v in (new_out[k], old_out[k]))
            assert a.tobytes() == b.tobytes(), (sparse, k)


def test_top_k_codes_are_stored_deflated_when_smaller():
    payload, _ = SparseQuantCodec(ratio=0.1, bits=4).encode(_update(0))
    row = payload["names"].index("enc.conv.weight")
    assert payload["table"][row, 8] == 1  # deflate
    assert payload["table"][row, 6] < (payload["table"][row, 2] + 1) // 2  # fewer bytes than the raw codes


def test_bad_value_coding_and_overlong_values_stream_are_refused_naming_the_tensor():
    payload, _ = SparseQuantCodec(ratio=0.1, bits=4).encode(_update(0))
    row = payload["names"].index("enc.conv.weight")
    bad = copy.deepcopy(payload)
    bad["table"][row, 8] = 5
    with pytest.raises(PayloadError, match="enc.conv.weight: value coding code 5"):
        decode_payload(bad)
    bad = copy.deepcopy(payload)
    bad["table"][row, 2] -= 2  # fewer values declared than the stream holds
    with pytest.raises(PayloadError, match="enc.conv.weight: .*(longer than|holds|count)"):
        decode_payload(bad, sparse="packed")
    with pytest.raises(ValueError, match="version 1 stores values raw"):
        pack_payload({"w": {**unpack_payload(payload)["enc.conv.weight"], "index_coding": "deflate"}}, 256, version=1)
