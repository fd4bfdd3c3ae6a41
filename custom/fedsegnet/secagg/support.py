"""Flat model vectors and the public seed of a round plan's random blocks.

Secure aggregation works on one vector per model: the concatenation of its tensors in sorted name
order (:func:`flatten`, :func:`unflatten`; :func:`layout_of` gives the ``((name, shape), ...)``
:data:`Layout`), the same at the server and every site. A round's plan
(:mod:`~fedsegnet.secagg.plan`) cuts that vector into blocks and draws some of them at random from
public information only: :func:`support_seed` turns the job's public round seed and the round into
the 32-byte ChaCha20 PRG seed (:func:`~fedsegnet.secagg.masking.expand`) of that draw, so any site can
recompute and check the plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from fedsegnet.secagg.errors import SecAggError

Layout = tuple[tuple[str, tuple[int, ...]], ...]
"""``((name, shape), ...)`` in sorted name order."""


def _as_array(value, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise SecAggError(f"update[{name!r}]: must be a float tensor or array, got {arr.dtype}")
    return arr


def layout_of(update: Mapping) -> Layout:
    """The layout (sorted names and shapes) of ``{name: tensor or array}``."""
    return tuple((k, tuple(_as_array(update[k], k).shape)) for k in sorted(update))


def flatten(update: Mapping) -> tuple[np.ndarray, Layout]:
    """``update`` as one float64 vector in sorted name order, and its layout; ``update`` is not modified."""
    layout = layout_of(update)
    parts = [_as_array(update[k], k).astype(np.float64).reshape(-1) for k, _ in layout]
    return (np.concatenate(parts) if parts else np.zeros(0)), layout


def unflatten(vector: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten` (float64 arrays of the layout's shapes).

    Raises:
        SecAggError: ``vector`` does not have the layout's number of values.
    """
    sizes = [int(np.prod(shape)) for _, shape in layout]
    if vector.ndim != 1 or vector.size != sum(sizes):
        raise SecAggError(f"vector: {vector.size} values, the layout has {sum(sizes)}")
    out, start = {}, 0
    for (name, shape), size in zip(layout, sizes):
        out[name] = vector[start : start + size].reshape(shape).copy()
        start += size
    return out


def support_seed(round_seed: bytes, round: int) -> bytes:
    """The 32-byte PRG seed of the round plan's random blocks: SHA-256 of a label, the round and the public seed."""
    if not isinstance(round_seed, (bytes, bytearray)):
        raise SecAggError(f"round_seed: must be bytes, got {type(round_seed).__name__}", round)
    return hashlib.sha256(b"fedsegnet.secagg.support|" + str(int(round)).encode() + b"|" + bytes(round_seed)).digest()
