"""Keep site updates as they arrived: sparse where they were sparse, one dense tensor at a time on demand.

A top-k update decoded by the server is mostly zeros (90% at the default ratio 0.1). Keeping K such
updates dense until the round ends costs K full models; :class:`CompactUpdate` keeps each mostly-zero
tensor as (flat positions, values), 12 bytes per sent value, and gives a dense ``float32`` copy of one
tensor when it is read. The robust centres and the weighted combination read one tensor of every
update at a time, so the peak is K copies of the largest tensor, not K models. The decoder's sparse
form (:func:`~fedsegnet.compression.decode_payload` with ``sparse=True``: a
:class:`~fedsegnet.compression.codec.SparseTensor` per top-k tensor) is kept as it comes, without a
dense pass.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from fedsegnet.compression.codec import SparseTensor


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class CompactUpdate(Mapping):
    """A read-only ``{name: float32 array}`` mapping that stores mostly-zero tensors sparsely.

    Args:
        update: ``{name: array, tensor or SparseTensor}``; not modified. Dense tensors are kept by
            reference when they are already ``float32`` numpy arrays (no copy), else converted
            once; a :class:`~fedsegnet.compression.codec.SparseTensor` (sorted unique positions)
            keeps its positions and values (by reference when int64 and float32) unless it is
            denser than ``max_density``.
        max_density: tensors with at most this share of non-zeros are stored as positions and
            values. Defaults to 0.5 (where a sparse copy is smaller than a dense one).

    Raises:
        ValueError: ``max_density`` outside [0, 1].
    """

    def __init__(self, update: Mapping, max_density: float = 0.5):
        if not 0.0 <= max_density <= 1.0:
            raise ValueError(f"max_density={max_density!r}: must be in [0, 1]")
        self.max_density = max_density
        self._dense: dict[str, np.ndarray] = {}
        self._sparse: dict[str, tuple[tuple[int, ...], np.ndarray, np.ndarray]] = {}
        self._order: list[str] = []
        for name, value in update.items():
            self._order.append(name)
            if isinstance(value, SparseTensor):
                size = int(np.prod(value.shape, dtype=np.int64))
                if value.index.size <= max_density * size:
                    index = np.asarray(value.index, dtype=np.int64)
                    self._sparse[name] = (value.shape, index, np.asarray(value.values, dtype=np.float32))
                else:
                    self._dense[name] = value.to_dense()
                continue
            arr = _as_numpy(value)
            flat = arr.reshape(-1)
            floating = np.issubdtype(arr.dtype, np.floating)
            if arr.size and floating and np.count_nonzero(flat) <= max_density * arr.size:
                nz = np.flatnonzero(flat != 0)  # through a bool mask: ~2.5x faster than on the floats
                # int64 positions (12 bytes per value with the float32 value): what torch's index_add_ takes as is
                self._sparse[name] = (tuple(arr.shape), nz, flat[nz].astype(np.float32, copy=False))
            else:
                self._dense[name] = arr if arr.dtype == np.float32 else arr.astype(np.float32)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._dense:
            return self._dense[name]
        shape, index, values = self._sparse[name]
        out = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=np.float32)
        out[index] = values
        return out.reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name) -> bool:
        return name in self._dense or name in self._sparse

    def gather(self, name: str, positions: np.ndarray) -> np.ndarray:
        """Values of one tensor at flat ``positions`` (sorted or not), without densifying it."""
        if name in self._dense:
            return self._dense[name].reshape(-1)[positions]
        _, index, values = self._sparse[name]
        out = np.zeros(len(positions), dtype=np.float32)
        if index.size:
            at = np.searchsorted(index, positions)
            at_ok = np.minimum(at, index.size - 1)
            hit = index[at_ok] == positions
            out[hit] = values[at_ok[hit]]
        return out

    def add_to(self, name: str, out: np.ndarray, factor: float) -> None:
        """``out += factor * self[name]`` in place (``out``: float32, the tensor's shape), touching only stored values."""
        flat = out.reshape(-1)
        if name in self._dense:
            flat += np.float32(factor) * self._dense[name].reshape(-1)
        else:
            _, index, values = self._sparse[name]
            # torch's index_add_ is ~5x faster than numpy's fancy-index += (measured); writes through to ``out``
            torch.from_numpy(flat).index_add_(0, torch.from_numpy(index), torch.from_numpy(values), alpha=float(factor))

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one tensor without materialising it."""
        return tuple(self._dense[name].shape) if name in self._dense else self._sparse[name][0]

    @functools.cached_property
    def _finite(self) -> bool:
        return all(np.isfinite(a).all() for a in self._dense.values()) and all(
            np.isfinite(v).all() for _, _, v in self._sparse.values()
        )

    @functools.cached_property
    def _norm(self) -> float:
        total = sum(float(np.dot(a.reshape(-1), a.reshape(-1))) for a in self._dense.values())
        total += sum(float(np.dot(v, v)) for _, _, v in self._sparse.values())
        return float(np.sqrt(total))

    def is_finite(self) -> bool:
        """Whether every stored value is finite (read once; the update is read-only)."""
        return self._finite

    def norm(self) -> float:
        """L2 norm over all tensors (float64 accumulation; computed once: the gate at accept, the gate
        of the round and the divergence signal all ask)."""
        return self._norm

    @property
    def nbytes(self) -> int:
        """Bytes held: dense arrays plus positions and values of the sparse ones."""
        return sum(a.nbytes for a in self._dense.values()) + sum(i.nbytes + v.nbytes for _, i, v in self._sparse.values())

    @property
    def dense_nbytes(self) -> int:
        """Bytes the same update takes as dense float32 tensors."""
        return 4 * sum(int(np.prod(self.shape(n), dtype=np.int64)) for n in self._order)
