"""Reading site updates: one interface over plain dicts and updates kept sparse as they arrived.

A top-k update decoded by the server is mostly zeros (90% at the default ratio 0.1). Keeping K such
updates dense until the round ends costs K full models; :class:`CompactUpdate` keeps each mostly-zero
tensor as a sparse tensor object and gives a dense ``float32`` copy of one tensor when it is read.
The robust centres and the weighted combination read one tensor of every update at a time, so the
peak is K copies of the largest tensor, not K models. The decoder's sparse forms
(:func:`~fedsegnet.compression.decode_payload` with ``sparse``: a
:class:`~fedsegnet.compression.codec.SparseTensor` or a
:class:`~fedsegnet.compression.packed.PackedTensor` per top-k tensor) are kept as they come, without
a dense pass.

Two interfaces, both written down here:

* **A sparse tensor object** (what :class:`CompactUpdate` stores and delegates to; ``SparseTensor``
  and ``PackedTensor`` have it, and any object that has it plugs in): ``shape`` (tuple),
  ``gather(positions) -> float32 array`` (values at 1-D sorted flat positions, 0 where nothing was
  sent), ``add_to(flat_out, factor)`` (``flat_out += factor * tensor`` in place, ``flat_out`` a 1-D
  ``float32`` array of the tensor's size), ``sq_norm() -> float`` (squared L2 norm, float32
  accumulation: non-finite when a value is), ``nbytes`` (bytes held); optionally ``release()``
  (drop a decoded copy held beside the stored form: ``PackedTensor``'s warm decode), which
  :class:`CompactUpdate` calls once it has read what it keeps.
* **An update reader** (what the gate, the divergence signal and the weighted sum read every update
  through): ``shape(name)``, ``gather(name, positions)``, ``add_to(name, out, factor)`` (``out``
  a ``float32`` array of the tensor's shape), ``norm()`` (L2 norm over all tensors) and
  ``is_finite()``. :class:`CompactUpdate` is one (it can keep the values at a given sample of
  positions, read once when it is made, and answers ``gather`` at those positions from them); :func:`view` gives one for any update, wrapping a
  plain ``{name: array or tensor}`` mapping as :class:`DictView` (no copy). :func:`view` is the one
  place that tells the two apart.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from fedsegnet.compression import update_norm
from fedsegnet.compression.codec import SparseTensor

SPARSE_METHODS = ("gather", "add_to", "sq_norm")
"""Methods a stored sparse tensor object has (besides the ``shape`` and ``nbytes`` attributes)."""


def _is_sparse_tensor(value) -> bool:
    return not isinstance(value, (np.ndarray, torch.Tensor)) and all(callable(getattr(value, m, None)) for m in SPARSE_METHODS)


def as_numpy(value) -> np.ndarray:
    """An array or tensor as a numpy array (a view where it can be).

    Args:
        value: a numpy array, a torch tensor (any device) or anything ``numpy.asarray`` reads.

    Returns:
        The array; a ``bfloat16`` tensor (a dtype numpy lacks: what the decoder returns for a
        dense bfloat16 record) as ``float32``, which holds every bfloat16 value exactly.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


class DenseTensor:
    """One dense ``float32`` array behind the sparse tensor object's interface (held by reference).

    Args:
        array: the ``float32`` array; not copied, not modified.
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return tuple(self.array.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the array."""
        return self.array.nbytes

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Values at flat ``positions`` (sorted or not)."""
        return self.array.reshape(-1)[positions]

    def add_to(self, flat_out: np.ndarray, factor: float) -> None:
        """``flat_out += factor * array`` in place (the factor as float32)."""
        flat_out += np.float32(factor) * self.array.reshape(-1)

    def sq_norm(self) -> float:
        """Squared L2 norm (float32 ``numpy.dot``; ``inf``, without a warning, when it overflows, as
        :meth:`~fedsegnet.compression.codec.SparseTensor.sq_norm`)."""
        flat = self.array.reshape(-1)
        with np.errstate(over="ignore"):
            return float(np.dot(flat, flat))


class DictView:
    """The update reader (see the module docstring) over a plain ``{name: array or tensor}`` mapping.

    Args:
        update: the mapping; not copied, not modified. A tensor is read as ``float32`` when asked for.
    """

    def __init__(self, update: Mapping):
        self._update = update

    def _tensor(self, name: str) -> DenseTensor:
        return DenseTensor(as_numpy(self._update[name]).astype(np.float32, copy=False))

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one tensor."""
        return tuple(np.shape(self._update[name]))

    def gather(self, name: str, positions: np.ndarray) -> np.ndarray:
        """Values of one tensor at flat ``positions`` (``float32``)."""
        return self._tensor(name).gather(positions)

    def add_to(self, name: str, out: np.ndarray, factor: float) -> None:
        """``out += factor * update[name]`` in place (``out``: C-contiguous float32, the tensor's shape)."""
        self._tensor(name).add_to(out.reshape(-1), factor)

    def norm(self) -> float:
        """L2 norm over all tensors (:func:`~fedsegnet.compression.update_norm`)."""
        return update_norm(self._update)

    def is_finite(self) -> bool:
        """Whether every value is finite."""
        return all(np.isfinite(as_numpy(v)).all() for v in self._update.values())


class CompactUpdate(Mapping):
    """A read-only ``{name: float32 array}`` mapping that stores mostly-zero tensors sparsely.

    It is an update reader (module docstring) and delegates every read of a stored tensor to its
    object: a sparse tensor object, or a :class:`DenseTensor` for the dense ones.

    Args:
        update: ``{name: array, tensor or sparse tensor object}``; not modified. Dense tensors are
            kept by reference when they are already ``float32`` numpy arrays (no copy), else
            converted once; a sparse tensor object (``SparseTensor``, ``PackedTensor``, anything
            with the interface of the module docstring) is kept as it is unless it holds more
            than ``12 * max_density`` bytes per value of the whole tensor (what int64 positions
            and float32 values of that share of values take), then it is densified.
        max_density: tensors with at most this share of non-zeros are stored sparsely. Defaults
            to 0.5.
        sample: ``{name: 1-D sorted flat positions}`` whose values are read now and kept (the
            divergence sample, :func:`~fedsegnet.aggregation.divergence.sample_positions`):
            :meth:`gather` at those same positions returns them without reading the tensor again.
            A ``PackedTensor`` is read from the decode its check made, then every stored object
            is released. Defaults to None (nothing kept).

    Raises:
        ValueError: ``max_density`` outside [0, 1].
    """

    def __init__(self, update: Mapping, max_density: float = 0.5, sample: Mapping | None = None):
        if not 0.0 <= max_density <= 1.0:
            raise ValueError(f"max_density={max_density!r}: must be in [0, 1]")
        self.max_density = max_density
        self._tensors: dict = {}
        self._sample: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        sample = sample or {}

        def keep_sample(name: str, tensor) -> None:
            if name in sample:
                values = tensor.gather(sample[name])
                values.flags.writeable = False
                self._sample[name] = (sample[name], values)

        for name, value in update.items():
            if _is_sparse_tensor(value):
                keep_sample(name, value)
                getattr(value, "release", lambda: None)()  # what it keeps is read: the bytes below are what it holds from now on
                size = math.prod(value.shape)
                if value.nbytes <= 12 * max_density * size:
                    self._tensors[name] = value
                else:
                    flat = np.zeros(size, dtype=np.float32)
                    value.add_to(flat, 1.0)
                    self._tensors[name] = DenseTensor(flat.reshape(value.shape))
                continue
            arr = as_numpy(value)
            flat = arr.reshape(-1)
            floating = np.issubdtype(arr.dtype, np.floating)
            if arr.size and floating and np.count_nonzero(flat) <= max_density * arr.size:
                nz = np.flatnonzero(flat != 0)  # through a bool mask: ~2.5x faster than on the floats
                # int64 positions (12 bytes per value with the float32 value): what torch's index_add_ takes as is
                self._tensors[name] = SparseTensor(arr.shape, nz, flat[nz].astype(np.float32, copy=False))
            else:
                self._tensors[name] = DenseTensor(arr if arr.dtype == np.float32 else arr.astype(np.float32))
            keep_sample(name, self._tensors[name])

    def __getitem__(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        if isinstance(tensor, DenseTensor):
            return tensor.array
        out = np.zeros(math.prod(tensor.shape), dtype=np.float32)
        tensor.add_to(out, 1.0)
        return out.reshape(tensor.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name) -> bool:
        return name in self._tensors

    def gather(self, name: str, positions: np.ndarray) -> np.ndarray:
        """Values of one tensor at flat ``positions`` (sorted), without densifying it (the kept sample,
        read-only, when ``positions`` are its positions)."""
        kept = self._sample.get(name)
        if kept is not None and (kept[0] is positions or np.array_equal(kept[0], positions)):
            return kept[1]
        return self._tensors[name].gather(positions)

    def add_to(self, name: str, out: np.ndarray, factor: float) -> None:
        """``out += factor * self[name]`` in place (``out``: C-contiguous float32, the tensor's shape), touching only stored values."""
        self._tensors[name].add_to(out.reshape(-1), factor)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one tensor without materialising it."""
        return tuple(self._tensors[name].shape)

    @functools.cached_property
    def _finite(self) -> bool:
        # a non-finite value makes the squared norm non-finite; a finite one that overflows is read back to tell
        return all(math.isfinite(t.sq_norm()) or bool(np.isfinite(self[n]).all()) for n, t in self._tensors.items())

    @functools.cached_property
    def _norm(self) -> float:
        dense = [isinstance(t, DenseTensor) for t in self._tensors.values()]  # dense ones summed first, then the sparse
        total = sum(t.sq_norm() for t, d in zip(self._tensors.values(), dense) if d)
        total += sum(t.sq_norm() for t, d in zip(self._tensors.values(), dense) if not d)
        return float(np.sqrt(total))

    def is_finite(self) -> bool:
        """Whether every stored value is finite (read once; the update is read-only)."""
        return self._finite

    def norm(self) -> float:
        """L2 norm over all tensors (float32 sums of squares added in float64; computed once: the gate at
        accept, the gate of the round and the divergence signal all ask)."""
        return self._norm

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tensors (dense arrays, sparse objects) and the kept sample's values."""
        return sum(t.nbytes for t in self._tensors.values()) + sum(v.nbytes for _, v in self._sample.values())

    @property
    def dense_nbytes(self) -> int:
        """Bytes the same update takes as dense float32 tensors."""
        return 4 * sum(math.prod(self.shape(n)) for n in self._tensors)


def view(update: Mapping) -> CompactUpdate | DictView:
    """The update reader of an update: a :class:`CompactUpdate` as it is, any other mapping as a :class:`DictView`.

    Args:
        update: ``{name: array or tensor}``, a :class:`CompactUpdate` or a :class:`DictView`; not copied.

    Returns:
        An object with ``shape``, ``gather``, ``add_to``, ``norm`` and ``is_finite`` (module docstring).
    """
    return update if isinstance(update, (CompactUpdate, DictView)) else DictView(update)
