"""The round's shared support: the coordinates every site sends, chosen from public information.

Pairwise masks cancel only when every site sends the same coordinates, so under secure aggregation
per-site top-k (whose positions reveal the site's largest changes) gives way to one support per
round that the server picks from what it already knows: the previous round's aggregate (it built
it, and every site received it as the new global model) and a public round seed. :func:`choose_support`
takes the ``topk`` largest coordinates of that aggregate and fills up to ``size`` with coordinates drawn
uniformly at random (without replacement) from the rest, through the ChaCha20 PRG
(:func:`~fedsegnet.secagg.masking.expand`) and a stable sort, so any site can recompute and check it.
Nothing about one site's update enters the choice. What a site's update has outside the support
stays in its error-feedback residual (:mod:`~fedsegnet.secagg.error_feedback`).

Coordinates index the flat concatenation of a model's tensors in sorted name order
(:func:`flatten`, :func:`unflatten`), the same at the server and every site.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from fedsegnet.secagg.errors import SecAggError
from fedsegnet.secagg.masking import expand

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
    """The 32-byte PRG seed of the support's random part: SHA-256 of a label, the round and the public seed."""
    if not isinstance(round_seed, (bytes, bytearray)):
        raise SecAggError(f"round_seed: must be bytes, got {type(round_seed).__name__}", round)
    return hashlib.sha256(b"fedsegnet.secagg.support|" + str(int(round)).encode() + b"|" + bytes(round_seed)).digest()


def choose_support(
    numel: int,
    size: int,
    round: int,
    round_seed: bytes,
    previous_aggregate: np.ndarray | None = None,
    topk: int = 0,
) -> np.ndarray:
    """The coordinates every site of ``round`` sends.

    Args:
        numel: values in the model (the flat length).
        size: coordinates in the support, 1..numel.
        round: the round number.
        round_seed: public bytes (e.g. the job's seed and the round, or the ledger's tree head).
        previous_aggregate: the previous round's aggregate update, flat ``(numel,)``. Defaults to None
            (round 0: no top-k part).
        topk: how many of ``size`` are the aggregate's largest ``|value|`` (ties by lower index).
            Defaults to 0.

    Returns:
        Sorted unique int64 indices of shape ``(size,)``.

    Raises:
        SecAggError: naming the field: sizes out of range, ``topk`` without an aggregate, an
            aggregate of the wrong shape or with NaN/Inf.
    """
    for field, value, low, high in (("numel", numel, 1, 2**40), ("size", size, 1, numel), ("topk", topk, 0, size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise SecAggError(f"{field}={value!r}: must be an integer in {low}..{high}", round)
    chosen = np.zeros(0, dtype=np.int64)
    if topk:
        if previous_aggregate is None:
            raise SecAggError(f"topk={topk}: needs the previous aggregate (none given)", round)
        agg = np.asarray(previous_aggregate, dtype=np.float64)
        if agg.shape != (numel,) or not np.isfinite(agg).all():
            raise SecAggError(f"previous_aggregate: must be finite of shape ({numel},), got {agg.shape}", round)
        chosen = np.argsort(-np.abs(agg), kind="stable")[:topk].astype(np.int64)
    rest = np.setdiff1d(np.arange(numel, dtype=np.int64), chosen, assume_unique=True)
    keys = expand(support_seed(round_seed, round), rest.size)
    extra = rest[np.argsort(keys, kind="stable")[: size - topk]]
    return np.sort(np.concatenate([chosen, extra]))


def check_support(support, numel: int, round: int | None = None) -> np.ndarray:
    """``support`` as sorted unique int64 indices below ``numel``.

    Raises:
        SecAggError: not 1-D integers, unsorted or repeated, or out of ``[0, numel)``.
    """
    s = np.asarray(support)
    if s.ndim != 1 or not np.issubdtype(s.dtype, np.integer) or s.size == 0:
        raise SecAggError("support: must be a non-empty 1-D integer array", round)
    if s[0] < 0 or s[-1] >= numel or (s.size > 1 and not (np.diff(s) > 0).all()):
        raise SecAggError(f"support: must be sorted, unique and in [0, {numel})", round)
    return s.astype(np.int64)
