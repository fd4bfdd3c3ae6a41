"""Lossless encodings of the sorted positions a sparse update keeps.

Three encodings, chosen per tensor by size (:func:`encode_indices` picks the smallest):

- ``varint``: gaps between consecutive positions (minus one) as LEB128 variable-length integers
  (7 bits per byte, high bit = "more bytes follow"); about 1 byte per kept value when at least one
  value in ~128 is kept, as in Deep Gradient Compression-style top-k (Lin et al., ICLR 2018).
- ``bitmap``: one bit per position of the tensor (``numpy.packbits``); smallest when many are kept.
- ``raw``: little-endian ``uint32`` positions (``uint64`` for tensors past 2**32 values).
- ``deflate``: the ``varint`` stream compressed with zlib (DEFLATE, Python's standard library):
  varint gaps of top-k positions are far from uniform bytes, and DEFLATE's Huffman stage brings
  them close to their entropy. The encoder uses zlib's ``Z_RLE`` strategy (Huffman codes plus runs
  of equal bytes, no general string matching): on top-k gaps it is smaller than the default
  level-6 search (which finds few repeats worth a match) and faster (it searches for none). Any
  DEFLATE stream decodes.

Every encoding is a 1-D ``uint8`` array, so a payload serialises as plain byte arrays. Decoding
checks everything a malformed payload can get wrong and raises :class:`PayloadError` saying what.
"""

from __future__ import annotations

import zlib

import numpy as np

from fedsegnet.errors import FedSegNetError

INDEX_CODINGS = ("varint", "bitmap", "raw", "deflate")
_DEFLATE_LEVEL = 6
_DEFLATE_STRATEGY = zlib.Z_RLE
DEFLATE_MIN_BYTES = 64  # below this, zlib's header costs more than it saves
_MAX_VARINT_BYTES = 10


class PayloadError(FedSegNetError, ValueError):
    """A payload cannot be decoded: the message names the tensor (or field) and the problem."""


def _as_uint(values) -> np.ndarray:
    """Non-negative integers as ``uint32`` when they fit (half the memory traffic), else ``uint64``."""
    g = np.asarray(values)
    if g.dtype in (np.uint8, np.uint16, np.uint32):
        return g
    if g.size and int(g.max()) < 2**32:
        return g.astype(np.uint32)
    return g.astype(np.uint64)


def varint_nbytes(gaps: np.ndarray) -> np.ndarray:
    """Bytes each non-negative integer takes as a LEB128 varint (``int8`` array, same length)."""
    g = _as_uint(gaps)
    nb = np.ones(g.shape, dtype=np.int8)
    top = int(g.max()) if g.size else 0
    for shift in range(7, 64, 7):
        if top < 1 << shift:  # no value needs more bytes
            break
        nb += g >= g.dtype.type(1 << shift)
    return nb


def varint_encode(values: np.ndarray) -> np.ndarray:
    """LEB128-encode non-negative integers (vectorised).

    Args:
        values: 1-D non-negative integers.

    Returns:
        1-D ``uint8`` array.
    """
    g = _as_uint(values)
    if g.size == 0:
        return np.zeros(0, dtype=np.uint8)
    nb = varint_nbytes(g)
    longest = int(nb.max())
    if longest == 1:  # every value below 128: the bytes are the values
        return g.astype(np.uint8)
    ends = np.cumsum(nb, dtype=np.int64)
    starts = ends - nb
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    # first bytes of every value, then the k-th bytes of the values that long (fewer each time)
    out[starts] = (g & 0x7F).astype(np.uint8) | ((nb > 1).view(np.uint8) << 7)
    sel = np.flatnonzero(nb > 1)
    for k in range(1, longest):
        gk, nk = g[sel], nb[sel]
        out[starts[sel] + k] = ((gk >> (7 * k)) & 0x7F).astype(np.uint8) | ((nk > k + 1).view(np.uint8) << 7)
        sel = sel[nk > k + 1]
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
    ends = np.flatnonzero(b < 0x80)
    if ends.size != count:
        raise PayloadError(f"{name}: index stream holds {ends.size} positions, the payload says {count}")
    if ends.size == b.size:  # every varint one byte long
        return b.astype(np.uint64)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    longest = int(lengths.max())
    if longest > _MAX_VARINT_BYTES:
        raise PayloadError(f"{name}: index stream has a varint longer than {_MAX_VARINT_BYTES} bytes")
    # first bytes of every varint, then the k-th bytes of those that long (fewer each time)
    vals = (b[starts] & 0x7F).astype(np.uint64)
    sel = np.flatnonzero(lengths > 1)
    for k in range(1, longest):
        vals[sel] |= (b[starts[sel] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        sel = sel[lengths[sel] > k + 1]
    return vals


def _as_bytes(data, name: str) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if not isinstance(data, np.ndarray) or data.ndim != 1 or data.dtype != np.uint8:
        desc = f"{type(data).__name__}" + (f" {data.dtype} {data.shape}" if isinstance(data, np.ndarray) else "")
        raise PayloadError(f"{name}: index data must be a 1-D uint8 array, got {desc}")
    return data


def _raw_dtype(numel: int) -> np.dtype:
    return np.dtype("<u4") if numel <= 2**32 else np.dtype("<u8")


def _gaps(idx: np.ndarray) -> np.ndarray:
    """Gaps minus one between consecutive sorted unique positions (the first from -1)."""
    gaps = np.diff(idx, prepend=-1)
    gaps -= 1
    return gaps


def deflate(data: np.ndarray) -> np.ndarray:
    """``data`` (1-D ``uint8``) compressed with zlib's DEFLATE, strategy ``Z_RLE`` (1-D ``uint8``)."""
    z = zlib.compressobj(_DEFLATE_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS, 9, _DEFLATE_STRATEGY)
    return np.frombuffer(z.compress(data) + z.flush(), dtype=np.uint8)


def inflate(data: np.ndarray, max_bytes: int, name: str, what: str) -> np.ndarray:
    """Decompress a DEFLATE stream of at most ``max_bytes`` bytes, never inflating past that bound.

    Args:
        data: the stream (1-D ``uint8``).
        max_bytes: the most bytes it may hold (a longer one, or a zip bomb, is refused one byte past it).
        name: tensor name for error messages.
        what: what the stream holds, for error messages (``"index"``, ``"values"``).

    Returns:
        1-D ``uint8`` array of at most ``max_bytes`` bytes.

    Raises:
        PayloadError: the stream is corrupt, truncated or longer than ``max_bytes``.
    """
    inflater = zlib.decompressobj()
    try:
        out = np.frombuffer(inflater.decompress(data.tobytes(), max_bytes + 1), dtype=np.uint8)
    except zlib.error as e:
        raise PayloadError(f"{name}: deflate {what} stream is corrupt ({e})") from None
    if not inflater.eof or inflater.unconsumed_tail or out.size > max_bytes:
        raise PayloadError(f"{name}: deflate {what} stream is truncated or longer than the {max_bytes} bytes declared")
    return out


def index_nbytes(indices: np.ndarray, numel: int) -> dict[str, int]:
    """Size in bytes of each encoding of ``indices`` (sorted, unique) in a tensor of ``numel`` values."""
    idx = np.asarray(indices, dtype=np.int64)
    return _sizes(idx, _gaps(idx), numel)


def _sizes(idx: np.ndarray, gaps: np.ndarray, numel: int) -> dict[str, int]:
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
    gaps = _gaps(idx) if coding in ("auto", "varint", "deflate") else None
    if coding == "auto":
        sizes = _sizes(idx, gaps, numel)
        coding = min(sizes, key=lambda c: (sizes[c], INDEX_CODINGS.index(c)))
        if coding == "varint" and sizes["varint"] >= DEFLATE_MIN_BYTES:
            data = varint_encode(gaps)
            packed = deflate(data)
            return ("deflate", packed) if packed.size < data.size else ("varint", data)
    if coding == "varint":
        return coding, varint_encode(gaps)
    if coding == "deflate":
        return coding, deflate(varint_encode(gaps))
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
        b = inflate(b, max_stream, name, "index")
        coding = "varint"
    if coding == "varint":
        gaps = varint_decode(b, count, name, max_bytes=max_stream)
        if gaps.size and int(gaps.max()) >= numel:
            raise PayloadError(f"{name}: index out of range (a gap of {int(gaps.max())} in a tensor of {numel} values)")
        gaps += np.uint64(1)  # in place: gaps is a new array; below numel, so no overflow
        idx = np.cumsum(gaps.view(np.int64), out=gaps.view(np.int64))
        idx -= 1
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
