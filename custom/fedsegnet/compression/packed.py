"""A top-k tensor of a received payload, kept as it was sent and decoded on demand.

A decoded top-k tensor (:class:`~fedsegnet.compression.codec.SparseTensor`: int64 positions and
float32 values) takes 12 bytes per sent value; the payload it came from takes about 1 (4-bit codes
and entropy-coded positions). :class:`PackedTensor` keeps one tensor's encoded positions, codes
and scales as received and decodes them when read, so a server holding K updates holds K payloads,
not K decoded copies of the sent values.

It keeps the decoder's contract (:mod:`fedsegnet.compression.codec`): the record is decoded and
checked in full when the tensor is made, and every bad byte raises
:class:`~fedsegnet.compression.index_coding.PayloadError` naming the tensor there, never at a later
read. The arrays are copied at that check, so nothing that changes the payload afterwards changes
what is read. The check's decode is kept *warm* until the first read or :meth:`PackedTensor.release`
(the server reads one site's divergence sample from it at ``accept``, then releases it): a record
is decoded twice in a round, at the check and for the weighted sum, and one site's decode is held
at a time. A read decodes the :class:`~fedsegnet.compression.codec.SparseTensor` that
:func:`~fedsegnet.compression.decode_payload` with ``sparse=True`` returns and asks it, so results
are bit for bit those of the SparseTensor path.
"""

from __future__ import annotations

import math

import numpy as np

from fedsegnet.compression.codec import SparseTensor, stored_values
from fedsegnet.compression.index_coding import decode_indices
from fedsegnet.compression.quantize import as_declared, dequantize


class PackedTensor:
    """One top-k record of a payload, checked once and decoded when read.

    Args:
        name: the tensor's name (in error messages).
        shape: the tensor's shape.
        dtype: the declared dtype (``float32``, ``float64``, ``float16`` or ``bfloat16``); values
            are rounded to it, then read as float32.
        count: number of values sent.
        index_coding: the positions' coding (one of
            :data:`~fedsegnet.compression.index_coding.INDEX_CODINGS`).
        index: the encoded positions (1-D ``uint8``).
        bits: bits per sent value (4, 8, 16, 32).
        block: values per scale (0 = one scale).
        values: the stored value bytes (1-D ``uint8``: codes, or float16/float32 bytes for 16/32 bits).
        scales: the block scales (1-D ``float32``; empty for 16/32 bits).
        value_coding: how ``values`` is stored, one of
            :data:`~fedsegnet.compression.codec.VALUE_CODINGS` (kept so, inflated when read).
            Defaults to ``"raw"``.

    Raises:
        PayloadError: any part of the record is malformed (positions out of range or not
            increasing, truncated streams, codes out of range, NaN/Inf scales or values, values
            that overflow the declared dtype); the message names the tensor.
    """

    __slots__ = (
        "name", "shape", "dtype", "count", "index_coding", "bits", "block", "value_coding", "_index", "_codes", "_scales",
        "_sq_norm", "_warm",
    )  # fmt: skip

    def __init__(self, name: str, shape, dtype: str, count: int, index_coding: str, index, bits: int, block: int,
                 values, scales, value_coding: str = "raw"):  # fmt: skip
        self.name, self.shape, self.dtype = name, tuple(int(v) for v in shape), dtype
        self.count, self.index_coding, self.bits, self.block = count, index_coding, bits, block
        self.value_coding = value_coding
        self._index, self._codes, self._scales = (_frozen_copy(a) for a in (index, values, scales))
        self._warm: SparseTensor | None = self._decode()  # the full check, once; raises PayloadError naming the tensor
        self._sq_norm = self._warm.sq_norm()

    def _decode(self) -> SparseTensor:
        """The tensor as ``decode_payload(sparse=True)`` gives it: sorted int64 positions, float32 values."""
        idx = decode_indices(self.index_coding, self._index, self.count, self.size, self.name)
        codes = stored_values(self._codes, self.value_coding, self.bits, self.count, self.name)
        vals = dequantize(codes, self._scales, self.count, self.bits, self.block, self.name).numpy()
        if self.dtype in ("float16", "bfloat16"):  # rounded as the dense path rounds them, then float32 (exact)
            vals = as_declared(vals, self.dtype, self.name, as_numpy=False).float().numpy()
        return SparseTensor(self.shape, idx, vals)

    def _read(self) -> SparseTensor:
        """The decoded tensor: the check's warm decode the first time (then released), else a fresh decode."""
        tensor, self._warm = self._warm, None
        return tensor if tensor is not None else self._decode()

    def release(self) -> None:
        """Drop the check's warm decode (if still held); later reads decode again."""
        self._warm = None

    @property
    def size(self) -> int:
        """Values of the whole tensor, as ``numpy.ndarray.size`` (not only the sent ones)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes held: the encoded positions, the stored codes and the scales, plus the warm decode while it is held."""
        warm = self._warm.nbytes if self._warm is not None else 0
        return self._index.nbytes + self._codes.nbytes + self._scales.nbytes + warm

    def sq_norm(self) -> float:
        """Squared L2 norm of the sent values (:meth:`SparseTensor.sq_norm`, computed at the check; ``inf`` on
        a float32 overflow)."""
        return self._sq_norm

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Values at flat ``positions`` (:meth:`SparseTensor.gather` of the decoded tensor).

        Args:
            positions: 1-D integer flat positions in ``[0, size)``.

        Returns:
            1-D ``float32`` array of ``len(positions)`` values (0 where nothing was sent).
        """
        return self._read().gather(positions)

    def add_to(self, flat_out: np.ndarray, factor: float) -> None:
        """``flat_out += factor * tensor`` in place, touching only the sent positions
        (:meth:`SparseTensor.add_to` of the decoded tensor).

        Args:
            flat_out: 1-D ``float32`` array of ``size`` values (written through).
            factor: the weight.
        """
        self._read().add_to(flat_out, factor)

    def to_dense(self) -> np.ndarray:
        """The dense ``float32`` array of ``shape``, zeros where nothing was sent."""
        return self._read().to_dense()

    def __repr__(self) -> str:
        return f"PackedTensor(shape={list(self.shape)}, count={self.count}, bits={self.bits}, nbytes={self.nbytes})"


def _frozen_copy(array: np.ndarray) -> np.ndarray:
    """A read-only copy: what was checked is what every read decodes."""
    out = np.array(array, copy=True)
    out.flags.writeable = False
    return out
