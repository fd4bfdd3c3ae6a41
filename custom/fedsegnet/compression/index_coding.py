"""Lossless encodings of the sorted positions a sparse update keeps.

Three encodings, chosen per tensor by size (:func:`encode_indices` picks the smallest):

- ``varint``: gaps between consecutive positions (minus one) as LEB128 variable-length integers
  (7 bits per byte, high bit = "more bytes follow"); about 1 byte per kept value when at least one
  value in ~128 is kept, as in Deep Gradient Compression-style top-k (Lin et al., ICLR 2018).
- ``bitmap``: one bit per position of the tensor (``numpy.packbits``); smallest when many are kept.
- ``raw``: little-endian ``uint32`` positions (``uint64`` for tensors past 2**32 values).
- ``deflate``: the ``varint`` stream compressed with zlib (DEFLATE, Python's standard library):
  varint gaps of top-k positions are far from uniform bytes, and DEFLATE's Huffman stage brings
  them close to their entropy (``python benchmarks/index_coding.py``: 35% smaller at 10% kept,
  6-11% at 1%), for a few ms per MB.

Every encoding is a 1-D ``uint8`` array, so a payload serialises as plain byte arrays. Decoding
checks everything a malformed payload can get wrong and raises :class:`PayloadError` saying what.
"""

from __future__ import annotations

import zlib

import numpy as np

from fedsegnet.errors import FedSegNetError

INDEX_CODINGS = ("varint", "bitmap", "raw", "deflate")
_DEFLATE_LEVEL = 6
_DEFLATE_MIN_BYTES = 64  # below this, zlib's header costs more than it saves
_MAX_VARINT_BYTES = 10


class PayloadError(FedSegNetError, ValueError):
    """A payload cannot be decoded: the message names the tensor (or field) and the problem."""


def varint_nbytes(gaps: np.ndarray) -> np.ndarray:
    """Bytes each non-negative integer takes as a LEB128 varint (``int8`` array, same length)."""
    g = np.asarray(gaps, dtype=np.uint64)
    nb = np.ones(g.shape, dtype=np.int8)
    for shift in range(7, 64, 7):
        nb += g >= np.uint64(1 << shift)
    return nb


def varint_encode(values: np.ndarray) -> np.ndarray:
    """LEB128-encode non-negative integers (vectorised).

    Args:
        values: 1-D non-negative integers.

    Returns:
        1-D ``uint8`` array.
    """
    g = np.asarray(values, dtype=np.uint64)
    if g.size == 0:
        return np.zeros(0, dtype=np.uint8)
    nb = varint_nbytes(g)
    ends = np.cumsum(nb, dtype=np.int64)
    starts = ends - nb
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    for k in range(int(nb.max())):
        sel = nb > k
        chunk = (g[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (nb[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + k] = (chunk | more).astype(np.uint8)
    return out


def varint_decode(data: np.ndarray, count: int, name: str = "tensor", max_bytes: int | None = None) -> np.ndarray:
    """Decode ``count`` LEB128 varints from ``data``.

    Args:
        data: the stream (1-D ``uint8``).
        count: how many varints it must hold.
        name: tensor name used in error messages. Defaults to ``"tensor"``.
        max_bytes: longest stream accepted, checked before anything proportional to it is
            allocated. Defaults to None (no bound).

    Raises:
        PayloadError: the stream is truncated, longer than ``max_bytes``, holds a different number
            of values, or a value is longer than 10 bytes.
    """
    b = _as_bytes(data, name)
    if count == 0:
        if b.size:
            raise PayloadError(f"{name}: index stream has {b.size} byte(s) but the count is 0")
        return np.zeros(0, dtype=np.uint64)
    if b.size == 0 or b[-1] & 0x80:
        raise PayloadError(f"{name}: index stream is truncated (its last varint is unfinished)")
    if max_bytes is not None and b.size > max_bytes:
        raise PayloadError(f"{name}: index stream has {b.size} bytes, more than {count} positions can take ({max_bytes})")
    ends = np.flatnonzero((b & 0x80) == 0)
    if ends.size != count:
        raise PayloadError(f"{name}: index stream holds {ends.size} positions, the payload says {count}")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > _MAX_VARINT_BYTES:
        raise PayloadError(f"{name}: index stream has a varint longer than {_MAX_VARINT_BYTES} bytes")
    pos = np.arange(b.size, dtype=np.int64) - np.repeat(starts, lengths)
    vals = (b & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    return np.add.reduceat(vals, starts)


def _as_bytes(data, name: str) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if not isinstance(data, np.ndarray) or data.ndim != 1 or data.dtype != np.uint8:
        desc = f"{type(data).__name__}" + (f" {data.dtype} {data.shape}" if isinstance(data, np.ndarray) else "")
        raise PayloadError(f"{name}: index data must be a 1-D uint8 array, got {desc}")
    return data


def _raw_dtype(numel: int) -> np.dtype:
    return np.dtype("<u4") if numel <= 2**32 else np.dtype("<u8")


def index_nbytes(indices: np.ndarray, numel: int) -> dict[str, int]:
    """Size in bytes of each encoding of ``indices`` (sorted, unique) in a tensor of ``numel`` values."""
    idx = np.asarray(indices, dtype=np.int64)
    gaps = np.diff(idx, prepend=-1) - 1
    return {
        "varint": int(varint_nbytes(gaps).sum(dtype=np.int64)),
        "bitmap": (int(numel) + 7) // 8,
        "raw": int(idx.size) * _raw_dtype(numel).itemsize,
    }


def encode_indices(indices: np.ndarray, numel: int, coding: str = "auto") -> tuple[str, np.ndarray]:
    """Encode sorted unique positions in ``[0, numel)``.

    Args:
        indices: 1-D sorted, unique, non-negative integers below ``numel``.
        numel: number of values of the tensor the positions index.
        coding: ``"auto"`` (the smallest of :data:`INDEX_CODINGS`) or one of them. Defaults to ``"auto"``.

    Returns:
        ``(coding, data)`` with ``data`` a 1-D ``uint8`` array.

    Raises:
        ValueError: ``coding`` is unknown.
    """
    if coding != "auto" and coding not in INDEX_CODINGS:
        raise ValueError(f"coding={coding!r}: unknown index coding (valid: auto, {', '.join(INDEX_CODINGS)})")
    idx = np.asarray(indices, dtype=np.int64)
    if coding == "auto":
        sizes = index_nbytes(idx, numel)
        coding = min(sizes, key=lambda c: (sizes[c], INDEX_CODINGS.index(c)))
        if coding == "varint" and sizes["varint"] >= _DEFLATE_MIN_BYTES:
            data = varint_encode(np.diff(idx, prepend=-1) - 1)
            packed = np.frombuffer(zlib.compress(data.tobytes(), _DEFLATE_LEVEL), dtype=np.uint8)
            return ("deflate", packed) if packed.size < data.size else ("varint", data)
    if coding == "varint":
        return coding, varint_encode(np.diff(idx, prepend=-1) - 1)
    if coding == "deflate":
        data = varint_encode(np.diff(idx, prepend=-1) - 1)
        return coding, np.frombuffer(zlib.compress(data.tobytes(), _DEFLATE_LEVEL), dtype=np.uint8)
    if coding == "bitmap":
        bits = np.zeros(int(numel), dtype=bool)
        bits[idx] = True
        return coding, np.packbits(bits)
    return coding, np.ascontiguousarray(idx.astype(_raw_dtype(numel))).view(np.uint8)


def decode_indices(coding: str, data, count: int, numel: int, name: str = "tensor") -> np.ndarray:
    """Inverse of :func:`encode_indices`, checking the result.

    Args:
        coding: one of :data:`INDEX_CODINGS`.
        data: the encoded positions (1-D ``uint8``).
        count: how many positions the payload declares.
        numel: number of values of the tensor.
        name: tensor name used in error messages. Defaults to ``"tensor"``.

    Returns:
        1-D ``int64`` sorted unique positions, all in ``[0, numel)``.

    Raises:
        PayloadError: unknown coding, wrong length, truncated data, positions out of range or not
            strictly increasing.
    """
    b = _as_bytes(data, name)
    if not isinstance(count, (int, np.integer)) or count < 0 or count > numel:
        raise PayloadError(f"{name}: count {count!r} is not an integer in [0, {numel}]")
    count = int(count)
    # every gap is below numel, so a varint of this tensor takes at most this many bytes
    max_stream = count * max(1, -(-max(int(numel) - 1, 0).bit_length() // 7))
    if coding == "deflate":
        inflater = zlib.decompressobj()
        try:  # a larger output is not a valid stream (or a zip bomb): stop one byte past the bound
            b = np.frombuffer(inflater.decompress(b.tobytes(), max_stream + 1), dtype=np.uint8)
        except zlib.error as e:
            raise PayloadError(f"{name}: deflate index stream is corrupt ({e})") from None
        if not inflater.eof or inflater.unconsumed_tail:
            raise PayloadError(f"{name}: deflate index stream is truncated or longer than {count} positions allow")
        coding = "varint"
    if coding == "varint":
        gaps = varint_decode(b, count, name, max_bytes=max_stream)
        if gaps.size and int(gaps.max()) >= numel:
            raise PayloadError(f"{name}: index out of range (a gap of {int(gaps.max())} in a tensor of {numel} values)")
        idx = np.cumsum(gaps.astype(np.int64) + 1) - 1
    elif coding == "bitmap":
        expected = (numel + 7) // 8
        if b.size != expected:
            raise PayloadError(f"{name}: bitmap has {b.size} bytes, a tensor of {numel} values needs {expected}")
        pad = (-numel) % 8
        if pad and int(b[-1]) & ((1 << pad) - 1):
            raise PayloadError(f"{name}: bitmap sets bits past the end of the tensor (index out of range)")
        idx = np.flatnonzero(np.unpackbits(b, count=numel))
        if idx.size != count:
            raise PayloadError(f"{name}: bitmap marks {idx.size} positions, the payload says {count}")
    elif coding == "raw":
        dt = _raw_dtype(numel)
        if b.size != count * dt.itemsize:
            raise PayloadError(f"{name}: raw index data has {b.size} bytes, {count} positions need {count * dt.itemsize}")
        idx = b.view(dt).astype(np.int64)
        if idx.size and (int(idx.max()) >= numel):
            raise PayloadError(f"{name}: index {int(idx.max())} out of range for a tensor of {numel} values")
        if idx.size > 1 and not (np.diff(idx) > 0).all():
            raise PayloadError(f"{name}: raw positions are not strictly increasing")
    else:
        raise PayloadError(f"{name}: unknown index coding {coding!r} (valid: {', '.join(INDEX_CODINGS)})")
    if idx.size and (idx[-1] >= numel or idx[0] < 0):
        raise PayloadError(f"{name}: index {int(idx[-1])} out of range for a tensor of {numel} values")
    return idx
