"""The update codec: ``encode(update, residual) -> (payload, residual)``, ``decode(payload) -> update``.

:class:`SparseQuantCodec` is FedSegNet's communication compression (the FedSegNet paper's gradient
sparsification + quantization): per tensor it sends the top ``ratio`` of values by magnitude
(:mod:`~fedsegnet.compression.sparsify`), their positions in the smallest lossless encoding
(:mod:`~fedsegnet.compression.index_coding`) and the values quantized to ``bits`` with per-block
scales (:mod:`~fedsegnet.compression.quantize`). Tensors with fewer than ``dense_below`` values
(norms, biases) go dense at ``dense_bits``. What was not sent, and the quantization error of what
was, is returned as the new residual (error feedback, Seide et al. 2014; Karimireddy et al. 2019):
adding it to the next update loses nothing over rounds.

Payload format (version :data:`PAYLOAD_VERSION`), a dict of plain values and 1-D numpy arrays::

    {"format": "fedsegnet.payload", "version": 1, "codec": {...settings...},
     "tensors": {name: {"shape": [..], "dtype": "float32", "mode": "sparse" | "dense",
                        "count": int,                                   # values sent
                        "index_coding": "varint" | "bitmap" | "raw",    # sparse only
                        "index": uint8[...],                            # sparse only
                        "bits": 4 | 8 | 16 | 32, "block": int,
                        "values": uint8[...] | float16[...] | float32[...],
                        "scales": float32[n_blocks]}}}

:func:`decode_payload` checks every field against the format (and, given reference shapes, against
the model) and raises :class:`PayloadError` naming the tensor and the problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from fedsegnet.compression.index_coding import INDEX_CODINGS, PayloadError, decode_indices, encode_indices
from fedsegnet.compression.quantize import check_bits, dequantize, quantize
from fedsegnet.compression.sparsify import SCOPES, SELECTIONS, select_topk

PAYLOAD_FORMAT = "fedsegnet.payload"
PAYLOAD_VERSION = 1
_DTYPES = ("float32", "float64", "float16", "bfloat16")


def as_flat_tensor(value, name: str = "tensor") -> torch.Tensor:
    """A 1-D float32 CPU tensor view (or copy, when a cast is needed) of ``value`` (tensor or array)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
    elif isinstance(value, np.ndarray):
        t = torch.from_numpy(value if value.flags.writeable else value.copy())
    else:
        raise TypeError(f"{name}: expected a tensor or numpy array, got {type(value).__name__}")
    return t.to(device="cpu", dtype=torch.float32).reshape(-1)


class SparseQuantCodec:
    """Top-k sparsification + per-block quantization with error feedback.

    Args:
        ratio: share of each tensor's values sent (1.0 = dense). Defaults to 0.01.
        bits: bits per sent value: 4, 8, 16 or 32. Defaults to 8.
        block: values per quantization scale (0 = one scale per tensor). Defaults to 256.
        scope: top-k ``"tensor"`` (within each tensor) or ``"global"`` (one threshold). Defaults to
            ``"tensor"``.
        selection: ``"sampled"`` threshold or ``"exact"`` ``torch.topk``. Defaults to ``"sampled"``.
        dense_below: tensors with fewer values go dense. Defaults to 2048.
        dense_bits: bits of dense tensors: 4, 8, 16 or 32. Defaults to 16.
        stochastic: stochastic rounding (unbiased). Defaults to False.
        index_coding: ``"auto"`` (smallest per tensor) or one of ``varint``, ``bitmap``, ``raw``.
            Defaults to ``"auto"``.
        sample_size: sample size of the sampled threshold. Defaults to 100_000.

    Raises:
        ValueError: an argument is out of range or not one of its options (the message names it).
    """

    def __init__(
        self,
        ratio: float = 0.01,
        bits: int = 8,
        block: int = 256,
        scope: str = "tensor",
        selection: str = "sampled",
        dense_below: int = 2048,
        dense_bits: int = 16,
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
                flats[name] = flat + r  # a new tensor: becomes the residual below
            else:
                flats[name] = flat.clone()
        sparse = [n for n, f in flats.items() if self.ratio < 1 and f.numel() >= max(self.dense_below, 1)]
        picks = select_topk(
            {n: flats[n] for n in sparse}, self.ratio, self.scope, self.selection, self.sample_size, generator
        )
        tensors = {}
        for name, flat in flats.items():
            if name in picks:
                idx = picks[name]
                codes, scales = quantize(flat[idx], self.bits, self.block, self.stochastic, generator)
                sent = dequantize(codes, scales, idx.numel(), self.bits, self.block, name)
                flat[idx] -= sent  # what is left becomes the residual
                coding, index = encode_indices(idx.numpy(), flat.numel(), self.index_coding)
                tensors[name] = {
                    "shape": shapes[name], "dtype": dtypes[name], "mode": "sparse", "count": int(idx.numel()),
                    "index_coding": coding, "index": index, "bits": self.bits, "block": self.block,
                    "values": codes, "scales": scales,
                }  # fmt: skip
            else:
                codes, scales = quantize(flat, self.dense_bits, self.block, self.stochastic, generator)
                flat -= dequantize(codes, scales, flat.numel(), self.dense_bits, self.block, name)
                tensors[name] = {
                    "shape": shapes[name], "dtype": dtypes[name], "mode": "dense", "count": int(flat.numel()),
                    "bits": self.dense_bits, "block": self.block, "values": codes, "scales": scales,
                }  # fmt: skip
        payload = {"format": PAYLOAD_FORMAT, "version": PAYLOAD_VERSION, "codec": self.config(), "tensors": tensors}
        new_residual = {n: flats[n].view(shapes[n]) for n in flats}
        return payload, new_residual

    def decode(self, payload: Mapping, reference: Mapping | None = None, as_numpy: bool = True) -> dict:
        """Decode a payload (any codec settings; they travel in the payload). See :func:`decode_payload`."""
        return decode_payload(payload, reference=reference, as_numpy=as_numpy)


def is_payload(data) -> bool:
    """True when ``data`` looks like a FedSegNet payload (has the format marker)."""
    return isinstance(data, Mapping) and data.get("format") == PAYLOAD_FORMAT


def _shape_of(rec: Mapping, name: str) -> tuple[list[int], int]:
    shape = rec.get("shape")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(s, (int, np.integer)) and s >= 0 for s in shape):
        raise PayloadError(f"{name}: field 'shape' must be a list of non-negative ints, got {shape!r}")
    return [int(s) for s in shape], int(math.prod(shape))


def decode_payload(payload: Mapping, reference: Mapping | None = None, as_numpy: bool = True) -> dict:
    """Decode and check a payload.

    Args:
        payload: what :meth:`SparseQuantCodec.encode` returned (possibly after serialisation).
        reference: ``{name: shape or array}`` the payload must match exactly (same names, same
            shapes), e.g. the global model. Defaults to None (no check).
        as_numpy: return numpy arrays (else torch tensors). Defaults to True.

    Returns:
        ``{name: float array of the recorded shape and dtype}``, with zeros where nothing was sent.

    Raises:
        PayloadError: unknown format or version, missing or malformed fields, wrong shapes or
            names against ``reference``, truncated arrays, indices out of range, NaN/Inf.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload must be a dict, got {type(payload).__name__}")
    if payload.get("format") != PAYLOAD_FORMAT:
        raise PayloadError(f"payload: field 'format' is {payload.get('format')!r}, expected {PAYLOAD_FORMAT!r}")
    version = payload.get("version")
    if version != PAYLOAD_VERSION:
        raise PayloadError(f"payload: unknown version {version!r} (this FedSegNet reads version {PAYLOAD_VERSION})")
    tensors = payload.get("tensors")
    if not isinstance(tensors, Mapping):
        raise PayloadError(f"payload: field 'tensors' must be a dict, got {type(tensors).__name__}")
    if reference is not None:
        missing = sorted(set(reference) - set(tensors))
        extra = sorted(set(tensors) - set(reference))
        if missing or extra:
            raise PayloadError(
                f"payload: tensor names differ from the model's: {len(missing)} missing {missing[:3]}, "
                f"{len(extra)} unexpected {extra[:3]}"
            )
    out = {}
    for name, rec in tensors.items():
        if not isinstance(rec, Mapping):
            raise PayloadError(f"{name}: record must be a dict, got {type(rec).__name__}")
        shape, numel = _shape_of(rec, name)
        if reference is not None:
            ref = reference[name]
            ref_shape = list(getattr(ref, "shape", ref))
            if shape != ref_shape:
                raise PayloadError(f"{name}: shape {shape} differs from the model's {ref_shape}")
        dtype = rec.get("dtype")
        if dtype not in _DTYPES:
            raise PayloadError(f"{name}: field 'dtype' is {dtype!r} (valid: {', '.join(_DTYPES)})")
        mode, count = rec.get("mode"), rec.get("count")
        bits, block = rec.get("bits"), rec.get("block")
        if not isinstance(block, (int, np.integer)) or block < 0:
            raise PayloadError(f"{name}: field 'block' must be an int >= 0, got {block!r}")
        if mode == "dense":
            if count != numel:
                raise PayloadError(f"{name}: dense record has count {count!r} for {numel} values")
            flat = dequantize(rec.get("values"), rec.get("scales"), numel, bits, int(block), name)
        elif mode == "sparse":
            idx = decode_indices(rec.get("index_coding"), rec.get("index"), count, numel, name)
            vals = dequantize(rec.get("values"), rec.get("scales"), int(count), bits, int(block), name)
            flat = torch.zeros(numel, dtype=torch.float32)
            flat[torch.from_numpy(idx)] = vals
        else:
            raise PayloadError(f"{name}: field 'mode' is {mode!r} (valid: sparse, dense)")
        t = flat.view(shape).to(getattr(torch, dtype))
        out[name] = t.numpy() if as_numpy and dtype != "bfloat16" else t
    return out


def payload_nbytes(payload: Mapping) -> int:
    """Bytes of the arrays in a payload (what dominates its serialised size; excludes field names)."""
    total = 0
    for rec in payload.get("tensors", {}).values():
        for key in ("index", "values", "scales"):
            arr = rec.get(key)
            if isinstance(arr, np.ndarray):
                total += arr.nbytes
    return total


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
