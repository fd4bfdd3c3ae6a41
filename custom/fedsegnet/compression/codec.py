"""The update codec: ``encode(update, residual) -> (payload, residual)``, ``decode(payload) -> update``.

:class:`SparseQuantCodec` is FedSegNet's communication compression (the FedSegNet paper's gradient
sparsification + quantization): per tensor it sends the top ``ratio`` of values by magnitude
(:mod:`~fedsegnet.compression.sparsify`), their positions in the smallest lossless encoding
(:mod:`~fedsegnet.compression.index_coding`) and the values quantized to ``bits`` with per-block
scales (:mod:`~fedsegnet.compression.quantize`). Tensors with fewer than ``dense_below`` values
(norms, biases) go dense at ``dense_bits``. What was not sent, and the quantization error of what
was, is returned as the new residual (error feedback, Seide et al. 2014; Karimireddy et al. 2019):
adding it to the next update loses nothing over rounds.

Payload format (version :data:`PAYLOAD_VERSION`): a few flat arrays, whatever the number of
tensors, so FLARE's serializer pays its per-array overhead a fixed number of times rather than once
per tensor field (which, for a model of many small tensors, outweighs the data at 1%)::

    {"format": "fedsegnet.payload", "version": 2, "codec": {...settings...}, "block": int,
     "names":  [name, ...],                       # T tensors
     "table":  int32[T, 9]: mode (0 sparse, 1 dense), dtype code, count (values sent),
               index coding (0 varint, 1 bitmap, 2 raw, 3 deflate, -1 none), bits, index bytes,
               value bytes, ndim, value coding (0 raw, 1 deflate),
     "shapes": int32[sum of ndims],
     "index":  uint8[...],   # every tensor's encoded positions, concatenated
     "values": uint8[...],   # every tensor's codes (4/8 bits) or float16/float32 bytes, as stored, concatenated
     "scales": float32[...]} # every tensor's block scales, concatenated

Version 2 adds the value coding: a tensor's 4/8-bit codes are stored DEFLATE-compressed (zlib,
``Z_RLE``: Huffman codes of the code pairs) when that is smaller, as it is for top-k codes, which
crowd into the outer quantization levels (``benchmarks/entropy_coding.py``). Version 1 (8 table
columns, values always raw) still decodes.

:func:`decode_payload` checks every field against the format (and, given reference shapes, against
the model) and raises :class:`PayloadError` naming the tensor and the problem.

What the decoder guarantees, whatever bytes it is given: it returns a finite update of bounded
size or raises :class:`PayloadError`. The bound is checked on the declared sizes before anything is
allocated: with reference shapes, exactly the reference's names and shapes; without, at most
``max_values`` values over all tensors (:data:`MAX_PAYLOAD_VALUES` by default). Working memory is
linear in the values declared (tens of bytes per value at most) plus the payload's own size.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import numpy as np
import torch

from fedsegnet.compression.index_coding import (
    DEFLATE_MIN_BYTES,
    INDEX_CODINGS,
    PayloadError,
    decode_indices,
    deflate,
    encode_indices,
    inflate,
)
from fedsegnet.compression.quantize import QUANT_BITS, as_declared, check_bits, dequantize, quantize
from fedsegnet.compression.sparsify import SCOPES, SELECTIONS, select_topk, thread_map, workers_for
from fedsegnet.errors import ConfigError, check_int

PAYLOAD_FORMAT = "fedsegnet.payload"
PAYLOAD_VERSION = 2
READ_VERSIONS = (1, 2)
"""Payload versions :func:`decode_payload` reads (the encoder writes :data:`PAYLOAD_VERSION`)."""
MAX_PAYLOAD_VALUES = 2**28
"""Most values (over all tensors) a payload decoded without reference shapes may declare:
268,435,456, i.e. 1 GiB as float32, four times the largest registered network (UNETR, about 92
million parameters). :func:`decode_payload` takes ``max_values`` to change it."""
_DTYPES = ("float32", "float64", "float16", "bfloat16")
SPARSE_FORMS = (False, True, "packed")
"""What :func:`decode_payload` takes as ``sparse``: top-k tensors dense, as
:class:`SparseTensor`, or as :class:`~fedsegnet.compression.packed.PackedTensor`."""


def as_flat_tensor(value, name: str = "tensor") -> torch.Tensor:
    """A 1-D float32 CPU tensor view (or copy, when a cast is needed) of ``value`` (tensor or array)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
    elif isinstance(value, np.ndarray):
        t = torch.from_numpy(value if value.flags.writeable else value.copy())
    else:
        raise TypeError(f"{name}: expected a tensor or numpy array, got {type(value).__name__}")
    return t.to(device="cpu", dtype=torch.float32).reshape(-1)


def seeded_generator(seed: int, *parts) -> torch.Generator:
    """A ``torch.Generator`` seeded from ``seed`` and labels (e.g. site, round, direction).

    The seed is the CRC-32 of ``"seed:part:part..."``, so each (seed, labels) pair has its own
    reproducible random stream.
    """
    key = ":".join(str(p) for p in (seed, *parts))
    return torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))


def update_norm(tensors: Mapping) -> float:
    """L2 norm of an update over all its tensors (tensors or arrays; one pass each, no copies)."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(as_flat_tensor(t, name))) ** 2 for name, t in tensors.items()))


class SparseQuantCodec:
    """Top-k sparsification + per-block quantization with error feedback.

    Args:
        ratio: share of each tensor's values sent (1.0 = dense). Defaults to 0.1.
        bits: bits per sent value: 4, 8, 16 or 32. Defaults to 4.
        block: values per quantization scale (0 = one scale per tensor). Defaults to 256.
        scope: top-k ``"tensor"`` (within each tensor) or ``"global"`` (one threshold). Defaults to
            ``"tensor"``.
        selection: ``"sampled"`` threshold or ``"exact"`` ``torch.topk``. Defaults to ``"sampled"``.
        dense_below: tensors with fewer values go dense. Defaults to 2048.
        dense_bits: bits of dense tensors: 4, 8, 16 or 32. Defaults to 8.
        stochastic: stochastic rounding (unbiased). Defaults to False.
        index_coding: ``"auto"`` (smallest per tensor) or one of ``varint``, ``bitmap``, ``raw``.
            Defaults to ``"auto"``.
        sample_size: sample size of the sampled threshold. Defaults to 100_000.

    Raises:
        ValueError: an argument is out of range or not one of its options (the message names it).
    """

    def __init__(
        self,
        ratio: float = 0.1,
        bits: int = 4,
        block: int = 256,
        scope: str = "tensor",
        selection: str = "sampled",
        dense_below: int = 2048,
        dense_bits: int = 8,
        stochastic: bool = False,
        index_coding: str = "auto",
        sample_size: int = 100_000,
    ):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValueError(f"ratio={ratio!r}: must be a number in (0, 1]")
        check_bits(bits)
        check_bits(dense_bits)
        if not isinstance(block, int) or block < 0:
            raise ValueError(f"block={block!r}: must be an int >= 0 (0 = one scale per tensor)")
        if scope not in SCOPES:
            raise ValueError(f"scope={scope!r}: unknown (valid: {', '.join(SCOPES)})")
        if selection not in SELECTIONS:
            raise ValueError(f"selection={selection!r}: unknown (valid: {', '.join(SELECTIONS)})")
        if not isinstance(dense_below, int) or dense_below < 0:
            raise ValueError(f"dense_below={dense_below!r}: must be an int >= 0")
        if index_coding != "auto" and index_coding not in INDEX_CODINGS:
            raise ValueError(f"index_coding={index_coding!r}: unknown (valid: auto, {', '.join(INDEX_CODINGS)})")
        if not isinstance(sample_size, int) or sample_size < 1:
            raise ValueError(f"sample_size={sample_size!r}: must be an int >= 1")
        self.ratio = float(ratio)
        self.bits = int(bits)
        self.block = int(block)
        self.scope = scope
        self.selection = selection
        self.dense_below = int(dense_below)
        self.dense_bits = int(dense_bits)
        self.stochastic = bool(stochastic)
        self.index_coding = index_coding
        self.sample_size = int(sample_size)

    def config(self) -> dict:
        """The constructor arguments (JSON-able); ``SparseQuantCodec(**codec.config())`` rebuilds it."""
        return {
            "ratio": self.ratio, "bits": self.bits, "block": self.block, "scope": self.scope,
            "selection": self.selection, "dense_below": self.dense_below, "dense_bits": self.dense_bits,
            "stochastic": self.stochastic, "index_coding": self.index_coding, "sample_size": self.sample_size,
        }  # fmt: skip

    def __repr__(self) -> str:
        return f"SparseQuantCodec({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"

    def encode(
        self,
        update: Mapping,
        residual: Mapping | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[dict, dict[str, torch.Tensor]]:
        """Encode ``update + residual``.

        Args:
            update: ``{name: tensor or array}`` of float values (any shapes). Not modified.
            residual: the residual returned by the previous call (same names and sizes), or None.
                Not modified.
            generator: random source for sampling and stochastic rounding. Defaults to None.

        Returns:
            ``(payload, residual)``: the payload (module docstring) and the new residual
            ``{name: float32 tensor of the update's shape}``, i.e. ``update + residual - decode(payload)``.

        Raises:
            ValueError: ``residual`` does not match ``update`` (names or sizes), or a value is not
                a floating-point tensor or array.
        """
        residual = residual or {}
        if residual and (set(residual) != set(update)):
            raise ValueError(
                f"residual: names differ from the update's (missing {sorted(set(update) - set(residual))[:3]}, "
                f"extra {sorted(set(residual) - set(update))[:3]})"
            )
        flats, shapes, dtypes = {}, {}, {}
        for name, value in update.items():
            dtype = str(value.dtype).replace("torch.", "")
            if dtype not in _DTYPES:
                raise ValueError(f"update[{name!r}]: dtype {dtype} is not a float type (valid: {', '.join(_DTYPES)})")
            shapes[name], dtypes[name] = list(value.shape), dtype
            flat = as_flat_tensor(value, name)
            if name in residual:
                r = as_flat_tensor(residual[name], f"residual[{name!r}]")
                if r.numel() != flat.numel():
                    raise ValueError(f"residual[{name!r}]: {r.numel()} values, the update has {flat.numel()}")
                # a new array, which becomes the residual below; numpy's one-thread add (the same
                # IEEE sums as torch's) is several times faster than torch's on a busy 2-core CPU
                flats[name] = torch.from_numpy(np.add(flat.numpy(), r.numpy()))
            else:
                flats[name] = torch.from_numpy(flat.numpy().copy())
        # tensors are coded on torch's thread budget, one per thread; stochastic rounding draws
        # from ``generator`` in tensor order, so it stays on one
        workers = 1 if self.stochastic else workers_for(sum(f.numel() for f in flats.values()))
        sparse = [n for n, f in flats.items() if self.ratio < 1 and f.numel() >= max(self.dense_below, 1)]
        picks = select_topk(
            {n: flats[n] for n in sparse}, self.ratio, self.scope, self.selection, self.sample_size, generator, workers
        )
        records = thread_map(
            lambda name: self._encode_tensor(name, flats[name], picks.get(name), shapes[name], dtypes[name], generator),
            list(flats), workers=workers,
        )  # fmt: skip
        tensors = dict(zip(flats, records))
        payload = pack_payload(tensors, self.block, self.config())
        new_residual = {n: flats[n].view(shapes[n]) for n in flats}
        return payload, new_residual

    def _encode_tensor(self, name: str, flat: torch.Tensor, pick, shape: list, dtype: str, generator) -> dict:
        """One tensor's record (top-k when ``pick`` holds its positions, else dense); what is not
        sent is left in ``flat`` (the residual, updated in place)."""
        if pick is not None:
            idx = pick.numpy()
            x = flat.numpy()  # numpy's take and put: faster than torch's indexing on CPU
            vals = x[idx]
            codes, scales = quantize(torch.from_numpy(vals), self.bits, self.block, self.stochastic, generator)
            sent = dequantize(codes, scales, idx.size, self.bits, self.block, name).numpy()
            np.subtract(vals, sent, out=vals)
            x[idx] = vals  # what is left becomes the residual
            coding, index = encode_indices(idx, flat.numel(), self.index_coding)
            return {
                "shape": shape, "dtype": dtype, "mode": "sparse", "count": int(idx.size), "index_coding": coding,
                "index": index, "bits": self.bits, "block": self.block, "scales": scales, **_stored(codes, self.bits),
            }  # fmt: skip
        codes, scales = quantize(flat, self.dense_bits, self.block, self.stochastic, generator)
        flat -= dequantize(codes, scales, flat.numel(), self.dense_bits, self.block, name)
        return {
            "shape": shape, "dtype": dtype, "mode": "dense", "count": int(flat.numel()),
            "bits": self.dense_bits, "block": self.block, "scales": scales, **_stored(codes, self.dense_bits),
        }  # fmt: skip

    def decode(
        self,
        payload: Mapping,
        reference: Mapping | None = None,
        as_numpy: bool = True,
        max_values: int = MAX_PAYLOAD_VALUES,
    ) -> dict:
        """Decode a payload (any codec settings; they travel in the payload). See :func:`decode_payload`."""
        return decode_payload(payload, reference=reference, as_numpy=as_numpy, max_values=max_values)


def _stored(codes: np.ndarray, bits: int) -> dict:
    """``values`` and ``value_coding`` of a record: 4/8-bit codes DEFLATE-compressed when that is smaller."""
    if bits in (4, 8) and codes.size >= DEFLATE_MIN_BYTES:
        packed = deflate(codes)
        if packed.size < codes.size:
            return {"values": packed, "value_coding": "deflate"}
    return {"values": codes, "value_coding": "raw"}


def is_payload(data) -> bool:
    """True when ``data`` looks like a FedSegNet payload (has the format marker)."""
    return isinstance(data, Mapping) and isinstance(data.get("format"), str) and data["format"] == PAYLOAD_FORMAT


_MODES = ("sparse", "dense")
_INT32_MAX = 2**31 - 1
_TABLE_COLUMNS = ("mode", "dtype", "count", "index_coding", "bits", "index_bytes", "value_bytes", "ndim", "value_coding")
VALUE_CODINGS = ("raw", "deflate")
_TABLE_WIDTH = {1: 8, 2: 9}  # table columns per version (version 1 has no value coding)


def pack_payload(
    tensors: Mapping[str, Mapping], block: int, codec: Mapping | None = None, version: int = PAYLOAD_VERSION
) -> dict:
    """Pack per-tensor records into the flat payload format of the module docstring.

    Args:
        tensors: ``{name: record}`` with ``shape, dtype, mode, count, [index_coding, index], bits,
            values, scales`` and optionally ``value_coding`` (``"raw"`` by default; ``values``
            holds the stored bytes).
        block: values per scale.
        codec: the codec's settings, carried in the payload. Defaults to None.
        version: payload version to write, one of :data:`READ_VERSIONS`. Defaults to
            :data:`PAYLOAD_VERSION`.

    Returns:
        The payload.

    Raises:
        ValueError: an unknown ``version``, a value coding version 1 cannot hold, or sizes past int32.
    """
    if version not in READ_VERSIONS:
        raise ValueError(f"version={version!r}: unknown (valid: {', '.join(map(str, READ_VERSIONS))})")
    names = list(tensors)
    table = np.zeros((len(names), _TABLE_WIDTH[version]), dtype=np.int64)
    shapes, index, values, scales = [], [], [], []
    for i, name in enumerate(names):
        rec = tensors[name]
        vals = np.ascontiguousarray(rec["values"]).view(np.uint8).reshape(-1)
        idx = rec.get("index")
        idx = np.zeros(0, np.uint8) if idx is None else idx
        coding = INDEX_CODINGS.index(rec["index_coding"]) if rec["mode"] == "sparse" else -1
        value_coding = VALUE_CODINGS.index(rec.get("value_coding", "raw"))
        if version == 1 and value_coding:
            raise ValueError(f"{name}: payload version 1 stores values raw, not {rec['value_coding']!r}")
        row = (
            _MODES.index(rec["mode"]), _DTYPES.index(rec["dtype"]), rec["count"], coding, rec["bits"],
            idx.size, vals.size, len(rec["shape"]), value_coding,
        )  # fmt: skip
        table[i] = row[: table.shape[1]]
        shapes.extend(rec["shape"])
        index.append(idx)
        values.append(vals)
        scales.append(rec["scales"])
    if table.size and (table.max() > _INT32_MAX or max(shapes, default=0) > _INT32_MAX):
        raise ValueError(f"a tensor is too large for payload version {version} (sizes must fit in int32)")
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)  # noqa: E731
    return {
        "format": PAYLOAD_FORMAT, "version": int(version), "codec": dict(codec or {}), "block": int(block),
        "names": names, "table": table.astype(np.int32), "shapes": np.asarray(shapes, dtype=np.int32),
        "index": cat(index, np.uint8), "values": cat(values, np.uint8), "scales": cat(scales, np.float32),
    }  # fmt: skip


def _array(payload: Mapping, field: str, dtype, ndim: int = 1) -> np.ndarray:
    arr = payload.get(field)
    if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(dtype) or arr.ndim != ndim:
        got = f"{arr.dtype.name} array of {arr.ndim} dims" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise PayloadError(f"payload: field {field!r} must be a {ndim}-D {np.dtype(dtype).name} array, got {got}")
    return np.ascontiguousarray(arr)  # a strided view cannot be reinterpreted as floats


def _short(value) -> str:
    """``repr(value)`` on one line, at most 60 characters (a field's value in an error message)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def unpack_payload(payload: Mapping) -> dict[str, dict]:
    """Split a payload into per-tensor records, checking the format, version and buffer sizes.

    Raises:
        PayloadError: not a payload, unknown version, missing fields, or buffers shorter or longer
            than the table declares (truncated arrays).
    """
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload must be a dict, got {type(payload).__name__}")
    if not is_payload(payload):
        raise PayloadError(f"payload: field 'format' is {_short(payload.get('format'))}, expected {PAYLOAD_FORMAT!r}")
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version not in READ_VERSIONS:
        raise PayloadError(
            f"payload: unknown version {_short(version)} (this FedSegNet reads versions {', '.join(map(str, READ_VERSIONS))})"
        )
    width = _TABLE_WIDTH[int(version)]
    names = payload.get("names")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise PayloadError("payload: field 'names' must be a list of tensor names")
    if len(set(names)) != len(names):
        raise PayloadError("payload: field 'names' repeats a tensor name")
    block = payload.get("block")
    if not isinstance(block, (int, np.integer)) or isinstance(block, bool) or block < 0:
        raise PayloadError(f"payload: field 'block' must be an int >= 0, got {_short(block)}")
    table = _array(payload, "table", np.int32, 2).astype(np.int64)
    if table.shape != (len(names), width):
        raise PayloadError(f"payload: field 'table' has shape {table.shape}, expected ({len(names)}, {width}) in version {version}")
    if width < len(_TABLE_COLUMNS):  # version 1: every value stored raw
        table = np.concatenate([table, np.zeros((len(names), len(_TABLE_COLUMNS) - width), np.int64)], axis=1)
    shapes, index = _array(payload, "shapes", np.int32).astype(np.int64), _array(payload, "index", np.uint8)
    values, scales = _array(payload, "values", np.uint8), _array(payload, "scales", np.float32)
    if (table[:, [2, 5, 6, 7]] < 0).any() or (shapes < 0).any():
        raise PayloadError("payload: negative counts or sizes in fields 'table' or 'shapes'")
    for field, arr, need in (
        ("shapes", shapes, int(table[:, 7].sum())),
        ("index", index, int(table[:, 5].sum())),
        ("values", values, int(table[:, 6].sum())),
    ):
        if arr.size != need:
            raise PayloadError(f"payload: field {field!r} has {arr.size} entries, the table declares {need} (truncated?)")
    records, o_shape, o_idx, o_val, o_scale = {}, 0, 0, 0, 0
    for name, (mode, dtype, count, coding, bits, n_idx, n_val, ndim, value_coding) in zip(names, table.tolist()):
        if mode not in (0, 1):
            raise PayloadError(f"{name}: mode code {mode} (valid: 0 sparse, 1 dense)")
        if not 0 <= dtype < len(_DTYPES):
            raise PayloadError(f"{name}: dtype code {dtype} (valid: 0..{len(_DTYPES) - 1})")
        if mode == 0 and not 0 <= coding < len(INDEX_CODINGS):
            raise PayloadError(f"{name}: index coding code {coding} (valid: 0..{len(INDEX_CODINGS) - 1})")
        if bits not in QUANT_BITS:
            raise PayloadError(f"{name}: value bits {bits} (valid: {', '.join(map(str, QUANT_BITS))})")
        if not 0 <= value_coding < len(VALUE_CODINGS):
            raise PayloadError(f"{name}: value coding code {value_coding} (valid: 0 raw, 1 deflate)")
        shape = shapes[o_shape : o_shape + ndim].tolist()
        numel = math.prod(shape)  # a Python int: no overflow, nothing allocated
        n_vals = count if mode == 0 else numel
        n_scales = 0 if bits in (16, 32) or n_vals == 0 else (1 if block == 0 else -(-n_vals // int(block)))
        records[name] = {
            "shape": shape, "numel": numel, "dtype": _DTYPES[dtype], "mode": _MODES[mode], "count": count,
            "index_coding": INDEX_CODINGS[coding] if mode == 0 else None, "index": index[o_idx : o_idx + n_idx],
            "bits": bits, "block": int(block), "values": values[o_val : o_val + n_val],
            "value_coding": VALUE_CODINGS[value_coding], "scales": scales[o_scale : o_scale + n_scales],
        }  # fmt: skip
        o_shape, o_idx, o_val, o_scale = o_shape + ndim, o_idx + n_idx, o_val + n_val, o_scale + n_scales
    if o_scale != scales.size:
        raise PayloadError(f"payload: field 'scales' has {scales.size} entries, the tensors need {o_scale} (truncated?)")
    return records


def stored_values(values: np.ndarray, value_coding: str, bits: int, count: int, name: str) -> np.ndarray:
    """A record's stored value bytes as :func:`~fedsegnet.compression.quantize.dequantize` takes them.

    Args:
        values: the stored bytes (1-D ``uint8``).
        value_coding: one of :data:`VALUE_CODINGS`.
        bits: bits per value (4, 8: codes; 16, 32: floats).
        count: values the record holds.
        name: tensor name for error messages.

    Returns:
        ``uint8`` codes, or the ``float16``/``float32`` values (a view).

    Raises:
        PayloadError: a corrupt, truncated or overlong DEFLATE stream, or bytes that are not a whole
            number of floats.
    """
    if value_coding == "deflate":  # never inflated past what ``count`` values take
        need = count * bits // 8 if bits in (16, 32) else (count if bits == 8 else (count + 1) // 2)
        values = inflate(values, need, name, "values")
    if bits in (16, 32):
        width = bits // 8
        if values.size % width:
            raise PayloadError(f"{name}: {values.size} value bytes is not a whole number of float{bits} values")
        return values.view(np.float16 if bits == 16 else np.float32)
    return values


class SparseTensor:
    """One decoded top-k tensor as it was sent: flat positions and values, never densified.

    Args:
        shape: the tensor's shape.
        index: 1-D ``int64`` flat positions, sorted and unique, in ``[0, prod(shape))``.
        values: 1-D ``float32`` values at those positions (finite; already rounded to the
            declared dtype).
    """

    __slots__ = ("shape", "index", "values")

    def __init__(self, shape, index: np.ndarray, values: np.ndarray):
        self.shape = tuple(int(v) for v in shape)
        self.index, self.values = index, values

    @property
    def size(self) -> int:
        """Values of the whole tensor, as ``numpy.ndarray.size`` (not only the sent ones)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes held: the positions and the values (12 per sent value)."""
        return self.index.nbytes + self.values.nbytes

    def sq_norm(self) -> float:
        """Squared L2 norm of the sent values (``float(numpy.dot(values, values))``, float32 accumulation).

        Returns:
            The sum of squares; ``inf`` when it overflows float32 (past about 3.4e38), without a
            warning: the caller tells an overflow from a non-finite value.
        """
        with np.errstate(over="ignore"):
            return float(np.dot(self.values, self.values))

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Values at flat ``positions``, without densifying.

        Args:
            positions: 1-D integer flat positions in ``[0, size)`` (sorted or not).

        Returns:
            1-D ``float32`` array of ``len(positions)`` values (0 where nothing was sent).
        """
        out = np.zeros(len(positions), dtype=np.float32)
        if self.index.size:
            at = np.minimum(np.searchsorted(self.index, positions), self.index.size - 1)
            hit = self.index[at] == positions
            out[hit] = self.values[at[hit]]
        return out

    def add_to(self, flat_out: np.ndarray, factor: float) -> None:
        """``flat_out += factor * tensor`` in place, touching only the sent positions.

        Args:
            flat_out: 1-D ``float32`` array of ``size`` values (written through).
            factor: the weight (applied as float32 by ``torch.Tensor.index_add_``, ~5x faster
                than numpy's fancy-index ``+=``).
        """
        torch.from_numpy(flat_out).index_add_(0, torch.from_numpy(self.index), torch.from_numpy(self.values), alpha=float(factor))

    def to_dense(self) -> np.ndarray:
        """The dense ``float32`` array, zeros where nothing was sent."""
        flat = np.zeros(math.prod(self.shape), dtype=np.float32)
        flat[self.index] = self.values
        return flat.reshape(self.shape)

    def __repr__(self) -> str:
        return f"SparseTensor(shape={list(self.shape)}, count={self.index.size})"


def check_sparse_form(sparse) -> bool | str:
    """``sparse`` when it is one of :data:`SPARSE_FORMS`, else :class:`ConfigError` naming ``sparse``."""
    if not (isinstance(sparse, bool) or sparse == "packed"):
        raise ConfigError("sparse", sparse, "unknown form of top-k tensors", SPARSE_FORMS)
    return sparse


def decode_payload(
    payload: Mapping,
    reference: Mapping | None = None,
    as_numpy: bool = True,
    max_values: int = MAX_PAYLOAD_VALUES,
    sparse: bool | str = False,
) -> dict:
    """Decode and check a payload: a finite update of bounded size, or :class:`PayloadError`.

    Every declared size is checked before anything is allocated: against ``reference`` when given
    (exactly its names and shapes), else against ``max_values``.

    Args:
        payload: what :meth:`SparseQuantCodec.encode` returned (possibly after serialisation).
        reference: ``{name: shape or array}`` the payload must match exactly (same names, same
            shapes), e.g. the global model. Defaults to None (no check; ``max_values`` bounds it).
        as_numpy: return numpy arrays (else torch tensors; bfloat16 is always a tensor). Defaults
            to True.
        max_values: most values the payload may declare over all its tensors when no
            ``reference`` is given (with one, the reference's shapes are the bound). Defaults to
            :data:`MAX_PAYLOAD_VALUES`.
        sparse: how top-k tensors are returned: ``False``, a dense array; ``True``, a
            :class:`SparseTensor` (its positions and values, what
            :class:`~fedsegnet.aggregation.CompactUpdate` keeps); ``"packed"``, a
            :class:`~fedsegnet.compression.packed.PackedTensor` (the record as received, checked
            in full now, decoded when read). Dense records are returned as arrays either way.
            Defaults to False.

    Returns:
        ``{name: float array of the recorded shape and dtype}``, with zeros where nothing was sent
        (with ``sparse``, top-k tensors as :class:`SparseTensor` or ``PackedTensor``); every value
        finite in its declared dtype.

    Raises:
        PayloadError: unknown format or version, missing or malformed fields, wrong shapes or
            names against ``reference``, more than ``max_values`` values declared, truncated
            arrays, indices out of range, NaN/Inf in scales or values, or values that overflow to
            Inf (a code times a huge scale, or a float32 value declared float16).
        ConfigError: ``max_values`` is not an integer >= 0, or ``sparse`` is not one of
            :data:`SPARSE_FORMS`.
    """
    max_values = check_int("max_values", max_values, 0)
    check_sparse_form(sparse)
    records = unpack_payload(payload)
    if reference is not None:
        missing = sorted(set(reference) - set(records))
        extra = sorted(set(records) - set(reference))
        if missing or extra:
            raise PayloadError(
                f"payload: tensor names differ from the model's: {len(missing)} missing {missing[:3]}, "
                f"{len(extra)} unexpected {extra[:3]}"
            )
        for name, rec in records.items():
            ref_shape = [int(v) for v in getattr(reference[name], "shape", reference[name])]
            if rec["shape"] != ref_shape:
                raise PayloadError(f"{name}: shape {rec['shape']} differs from the model's {ref_shape}")
    else:
        total = sum(rec["numel"] for rec in records.values())
        if total > max_values:
            largest = max(records, key=lambda n: records[n]["numel"])
            raise PayloadError(
                f"payload: declares {total} values, more than the decoder's bound of {max_values} "
                f"(largest: {largest} of shape {records[largest]['shape']})"
            )
    decoded = thread_map(
        lambda name: _decode_record(name, records[name], as_numpy, sparse), list(records),
        workers=workers_for(sum(rec["numel"] for rec in records.values())),
    )  # fmt: skip  # tensors one per thread (numpy and zlib release the GIL); the first bad one in order raises
    return dict(zip(records, decoded))


def _decode_record(name: str, rec: dict, as_numpy: bool, sparse: bool | str):
    """One checked record of :func:`unpack_payload` decoded as :func:`decode_payload` returns it."""
    numel, count = rec["numel"], rec["count"]
    if rec["mode"] == "dense":
        if count != numel:
            raise PayloadError(f"{name}: dense record has count {count} for {numel} values")
        values = stored_values(rec["values"], rec["value_coding"], rec["bits"], numel, name)
        flat = dequantize(values, rec["scales"], numel, rec["bits"], rec["block"], name).numpy()
    elif sparse == "packed":
        from fedsegnet.compression.packed import PackedTensor  # packed.py reads through SparseTensor

        return PackedTensor(
            name, rec["shape"], rec["dtype"], count, rec["index_coding"], rec["index"], rec["bits"], rec["block"],
            rec["values"], rec["scales"], rec["value_coding"],
        )  # fmt: skip
    else:
        idx = decode_indices(rec["index_coding"], rec["index"], count, numel, name)
        values = stored_values(rec["values"], rec["value_coding"], rec["bits"], count, name)
        vals = dequantize(values, rec["scales"], count, rec["bits"], rec["block"], name)
        if sparse:  # the values rounded as the dense path rounds them, then float32 (exact)
            declared = as_declared(vals.numpy(), rec["dtype"], name, as_numpy=False)
            values = declared.float().numpy() if declared.dtype != torch.float32 else declared.numpy()
            return SparseTensor(rec["shape"], idx, values)
        flat = np.zeros(numel, dtype=np.float32)  # finite: zeros and the checked values
        flat[idx] = vals.numpy()
    return as_declared(flat.reshape(rec["shape"]), rec["dtype"], name, as_numpy)


def payload_nbytes(payload: Mapping) -> int:
    """Bytes of the arrays in a payload (what dominates its serialised size; excludes field names)."""
    return int(sum(payload[k].nbytes for k in ("table", "shapes", "index", "values", "scales")))


CODECS = {"sparse_quant": SparseQuantCodec}
"""Registry: codec name -> class, so job JSON picks a codec by name."""


def build_codec(name: str = "sparse_quant", **kwargs) -> SparseQuantCodec:
    """Build a registered codec by name.

    Raises:
        ValueError: unknown ``name`` (lists the valid ones) or a bad argument.
    """
    if name not in CODECS:
        raise ValueError(f"codec={name!r}: unknown (valid: {', '.join(sorted(CODECS))})")
    return CODECS[name](**kwargs)
