"""Seeded fuzzing of the decoder's contract: whatever bytes it is given, :func:`decode_payload`
returns a finite update of bounded size or raises :class:`PayloadError`, and nothing else.

Valid payloads come from the real encoder under several settings (sparse/dense, 4/8/16/32 bits,
per-block and per-tensor scales, tensor/global scope, every index coding), each as the encoder
writes it (version 2, codes deflated where smaller) and re-packed as version 1; each case applies one
to three seeded mutations (flipped or replaced bytes in each array field, table entries, shapes,
dtype codes, scales set to Inf/NaN/huge, truncated or grown arrays, dropped, added or retyped
fields, changed names, version, format and block) and decodes the result three times: against the
model's shapes, with no reference under ``max_values``, and against the model's shapes with top-k
tensors packed (:class:`~fedsegnet.compression.packed.PackedTensor`), each then read every way, so
a bad byte the decoder let through into a packed tensor would fail at the read.

Stated bounds, checked on every case:

- with the reference: the update has exactly the model's names and shapes;
- without: at most ``MAX_VALUES`` (4 times the model's size) values over all tensors;
- memory: the decoder's peak traced allocation (tracemalloc; the decoder allocates through numpy,
  which reports to it) stays under ``BYTES_PER_VALUE`` bytes per value of the bound, plus
  ``BYTES_PER_PAYLOAD_BYTE`` per byte of the payload's arrays, plus ``SLACK_BYTES``. A decoder
  that allocated what a mutated shape declares (up to 2**31 - 1 per dim) would pass it by
  gigabytes. Valid payloads peak at about a fifth of it.
"""

import copy
import tracemalloc
import warnings

import numpy as np
import pytest
import torch

from fedsegnet.compression import PayloadError, SparseQuantCodec, decode_payload
from fedsegnet.compression.packed import PackedTensor

from .test_codec import as_version_1

SEED = 20240611
CASES = 600
BYTES_PER_VALUE = 32
BYTES_PER_PAYLOAD_BYTE = 16
SLACK_BYTES = 256 * 1024
ARRAYS = ("table", "shapes", "index", "values", "scales")


def _model() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "enc.conv.weight": torch.randn(16, 8, 3, 3, 3, generator=g) * 0.02,
        "enc.norm.weight": torch.randn(16, generator=g),
        "attn.qkv.weight": (torch.randn(48, 16, generator=g) * 0.02).to(torch.float16),
        "head.weight": torch.randn(3, 16, 1, 1, 1, generator=g).double(),
        "head.bias": torch.zeros(3),
        "scalar": torch.tensor(0.5),
    }


MODEL = _model()
SHAPES = {k: tuple(v.shape) for k, v in MODEL.items()}
MODEL_VALUES = sum(v.numel() for v in MODEL.values())
MAX_VALUES = 4 * MODEL_VALUES

SETTINGS = [
    dict(ratio=0.05, bits=4),
    dict(ratio=0.2, bits=8, scope="global", selection="exact", index_coding="varint"),
    dict(ratio=0.3, bits=4, block=0, index_coding="bitmap", stochastic=True),
    dict(ratio=0.1, bits=16, index_coding="raw"),
    dict(ratio=0.5, bits=32, block=7, index_coding="deflate"),
    dict(ratio=1.0, dense_bits=4, block=64),
    dict(ratio=0.02, bits=8, dense_bits=16, scope="global"),
]


@pytest.fixture(scope="module")
def payloads():
    out = []
    for i, kwargs in enumerate(SETTINGS):
        payload, _ = SparseQuantCodec(dense_below=256, **kwargs).encode(MODEL, generator=torch.Generator().manual_seed(i))
        out.extend([payload, as_version_1(payload)])  # what the encoder writes (version 2), and version 1
    return out


INTERESTING_INTS = [-(2**31), -1, 0, 1, 2, 3, 4, 7, 8, 16, 31, 32, 255, 256, 65535, 2**20, 2**31 - 1]
INTERESTING_FLOATS = [np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 3e38, 1e30, 1e6, 65504.0, 0.0, -0.0, 1e-45]


def _bytes_of(arr: np.ndarray) -> np.ndarray:
    return arr.view(np.uint8).reshape(-1)


# mutation -> weight: most go deep into the arrays (a broken header is caught at once)
MUTATIONS = {
    "flip": 3, "replace": 3, "table": 3, "shapes": 2, "dtype": 1, "scales": 2, "truncate": 1, "grow": 1,
    "drop": 0.5, "add": 0.5, "retype": 1, "names": 1, "block": 1, "header": 0.5,
}  # fmt: skip
MUTATION_WEIGHTS = np.array(list(MUTATIONS.values())) / sum(MUTATIONS.values())


def _like(value, ndim: int, kind: str) -> bool:
    """``value`` is a contiguous array of ``ndim`` dims and dtype kind ``kind`` (earlier mutations
    may have retyped a field; then this mutation does something else)."""
    return isinstance(value, np.ndarray) and value.ndim == ndim and value.dtype.kind == kind and value.size > 0


def _mutate(p: dict, rng: np.random.Generator) -> str:
    """Apply one random mutation to ``p`` in place; return what it did."""
    with np.errstate(all="ignore"):
        return _mutate_once(p, rng)


def _mutate_once(p: dict, rng: np.random.Generator) -> str:
    kind = rng.choice(list(MUTATIONS), p=MUTATION_WEIGHTS)
    field = str(rng.choice(ARRAYS))
    arr = p.get(field)
    if kind in ("flip", "replace") and isinstance(arr, np.ndarray) and arr.size and arr.flags.c_contiguous:
        raw = _bytes_of(arr)
        at = rng.integers(0, raw.size, size=int(rng.integers(1, 4)))
        if kind == "flip":
            raw[at] ^= np.uint8(1 << int(rng.integers(0, 8)))
        else:
            raw[at] = rng.integers(0, 256, size=at.size, dtype=np.uint8)
        return f"{kind} bytes {at.tolist()} of {field}"
    if kind == "table" and _like(p.get("table"), 2, "i"):
        t = p["table"]
        r, c = int(rng.integers(0, t.shape[0])), int(rng.integers(0, t.shape[1]))
        t[r, c] = rng.choice(INTERESTING_INTS) if rng.random() < 0.7 else t[r, c] + rng.integers(-3, 4)
        return f"table[{r}, {c}] = {t[r, c]}"
    if kind == "shapes" and _like(p.get("shapes"), 1, "i"):
        i = int(rng.integers(0, p["shapes"].size))
        p["shapes"][i] = rng.choice(INTERESTING_INTS)
        return f"shapes[{i}] = {p['shapes'][i]}"
    if kind == "dtype" and _like(p.get("table"), 2, "i") and p["table"].shape[1] > 1:
        r = int(rng.integers(0, p["table"].shape[0]))
        p["table"][r, 1] = int(rng.integers(-1, 5))
        return f"dtype code of row {r} = {p['table'][r, 1]}"
    if kind == "scales" and _like(p.get("scales"), 1, "f"):
        at = rng.integers(0, p["scales"].size, size=int(rng.integers(1, p["scales"].size + 1)))
        p["scales"][at] = rng.choice(INTERESTING_FLOATS)
        return f"scales{at.tolist()[:4]} = {p['scales'][at[0]]}"
    if kind == "truncate" and isinstance(arr, np.ndarray) and arr.ndim and arr.size:
        n = int(rng.integers(0, arr.shape[0]))
        p[field] = arr[:n].copy()
        return f"{field} truncated to {n}"
    if kind == "grow" and isinstance(arr, np.ndarray) and arr.ndim:
        extra = rng.integers(0, 256, size=(int(rng.integers(1, 9)), *arr.shape[1:])).astype(arr.dtype)
        p[field] = np.concatenate([arr, extra])
        return f"{field} grown by {extra.shape[0]}"
    if kind == "drop":
        key = str(rng.choice(list(p)))
        del p[key]
        return f"dropped {key}"
    if kind == "add":
        p[f"extra{int(rng.integers(0, 9))}"] = np.zeros(int(rng.integers(0, 5)), np.uint8)
        return "added a field"
    if kind == "retype":
        key = str(rng.choice([*ARRAYS, "names", "block", "version", "codec"]))
        value = p.get(key)
        options = [
            None, "text", 3, 2.5, b"\x00\x01", [1, 2, 3],
            np.zeros((2, 2), np.uint8), np.zeros(4, np.float64), np.zeros(4, np.int64), np.zeros(4, ">i4"),
        ]  # fmt: skip
        if isinstance(value, np.ndarray):
            options += [value.tolist(), value.astype(np.int64), value.reshape(1, -1), value[::2], value.tobytes()]
        choice = options[int(rng.integers(0, len(options)))]
        p[key] = choice
        return f"{key} retyped to {type(choice).__name__}"
    if kind == "names":
        names = list(p.get("names") or [])
        op = int(rng.integers(0, 5))
        if op == 0 and names:
            names.pop(int(rng.integers(0, len(names))))
        elif op == 1:
            names.append("evil")
        elif op == 2 and names:
            names[int(rng.integers(0, len(names)))] = names[0]  # a repeat
        elif op == 3 and names:
            names[int(rng.integers(0, len(names)))] = 7
        elif names:
            names[int(rng.integers(0, len(names)))] = "renamed"
        p["names"] = names
        return f"names op {op}"
    if kind == "block":
        p["block"] = [0, -1, 1, 2**40, 2**64, 1.5, "256", True, np.int64(3), None][int(rng.integers(0, 10))]
        return f"block = {p['block']!r}"
    key = str(rng.choice(["version", "format"]))
    p[key] = [0, 2, "1", None, "fedsegnet.payload", 1.0][int(rng.integers(0, 6))]
    return f"{key} = {p[key]!r}"


def _decode_traced(payload, **kwargs):
    """``(update or None, PayloadError or None, peak traced bytes)``; any other exception propagates,
    and so does a warning (numpy overflow, say), raised as an error."""
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                return decode_payload(payload, **kwargs), None, tracemalloc.get_traced_memory()[1]
            except PayloadError as e:
                return None, e, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _array_bytes(payload) -> int:
    return sum(v.nbytes for k, v in payload.items() if k in ARRAYS and isinstance(v, np.ndarray))


def _read(value):
    """``value``, or a packed tensor read every way (dense, added, gathered) as its dense array."""
    if not isinstance(value, PackedTensor):
        return value
    out = np.zeros(value.size, np.float32)
    value.add_to(out, 1.0)
    dense = value.to_dense()
    assert np.array_equal(out, dense.reshape(-1)) and np.array_equal(value.gather(np.arange(value.size)), out)
    with np.errstate(over="ignore"):
        assert np.isclose(value.sq_norm(), float(np.dot(out, out)), rtol=1e-5)
    return dense


def _finite(value) -> bool:
    t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    return bool(torch.isfinite(t.float()).all())


def test_every_mutated_payload_decodes_to_a_bounded_finite_update_or_raises_payload_error(payloads):
    rng = np.random.default_rng(SEED)
    outcomes = {"decoded": 0, "rejected": 0}
    for case in range(CASES):
        p = copy.deepcopy(payloads[case % len(payloads)])
        done = [_mutate(p, rng) for _ in range(int(rng.integers(1, 4)))]
        what = f"case {case} (setting {case % len(payloads)}, version {payloads[case % len(payloads)]['version']}): {'; '.join(done)}"
        for reference, values_bound, sparse in ((SHAPES, MODEL_VALUES, False), (None, MAX_VALUES, False), (SHAPES, MODEL_VALUES, "packed")):
            try:
                out, err, peak = _decode_traced(p, reference=reference, max_values=MAX_VALUES, sparse=sparse)
                out = out and {k: _read(v) for k, v in out.items()}  # a packed tensor never fails later
            except Exception as e:  # noqa: BLE001 - anything but PayloadError breaks the contract
                pytest.fail(f"{what}: {type(e).__name__}: {e}")
            memory_bound = BYTES_PER_VALUE * values_bound + BYTES_PER_PAYLOAD_BYTE * _array_bytes(p) + SLACK_BYTES
            assert peak <= memory_bound, f"{what}: peak {peak} bytes > bound {memory_bound}"
            if err is not None:
                assert str(err) and "\n" not in str(err), what
                outcomes["rejected"] += 1
                continue
            outcomes["decoded"] += 1
            if reference is not None:
                assert {k: tuple(v.shape) for k, v in out.items()} == SHAPES, what
            assert sum(int(np.prod(v.shape)) for v in out.values()) <= values_bound, what
            assert all(_finite(v) for v in out.values()), what
    # the mutations reach both outcomes: some leave a valid payload, most break it
    assert outcomes["rejected"] > CASES and outcomes["decoded"] > 10, outcomes


@pytest.mark.parametrize("setting", range(2 * len(SETTINGS)))
def test_valid_payloads_decode_within_the_stated_bounds(payloads, setting):
    p = payloads[setting]
    out, err, peak = _decode_traced(p, reference=SHAPES)
    assert err is None and {k: tuple(v.shape) for k, v in out.items()} == SHAPES
    # valid payloads use a fraction of the memory bound the fuzz test allows
    assert peak <= (BYTES_PER_VALUE * MODEL_VALUES + BYTES_PER_PAYLOAD_BYTE * _array_bytes(p) + SLACK_BYTES) / 3, peak
