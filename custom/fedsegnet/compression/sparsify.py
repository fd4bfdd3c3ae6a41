"""Top-k sparsification: which values of an update to send.

Two selections of the ``ratio`` share of largest-magnitude values:

- ``exact``: ``torch.topk`` on the magnitudes (global scope concatenates every tensor first). Exact
  count, but a full partial sort: seconds for tens of millions of values on a 2-core CPU.
- ``sampled``: estimate the magnitude threshold of the top ``ratio`` from a uniform random sample of
  the values (``torch.kthvalue`` on the sample), then keep every value at or above it with one
  comparison pass, as in Deep Gradient Compression's sampled top-k (Lin et al., ICLR 2018). The
  kept count matches ``ratio`` up to sampling error (about ``sqrt(ratio / sample_size)`` relative),
  at the cost of a few memory passes.

``scope="tensor"`` selects the top ``ratio`` within each tensor (every layer sends something);
``scope="global"`` uses one threshold over all tensors (layers with larger updates send more).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

SELECTIONS = ("sampled", "exact")
SCOPES = ("tensor", "global")


def _k(numel: int, ratio: float) -> int:
    return max(1, min(numel, int(math.ceil(numel * ratio))))


def _sample_abs(flats: list[torch.Tensor], size: int, generator: torch.Generator | None) -> torch.Tensor:
    """``size`` magnitudes drawn uniformly (with replacement) from the concatenation of ``flats``."""
    numels = torch.tensor([f.numel() for f in flats], dtype=torch.int64)
    ends = torch.cumsum(numels, 0)
    total = int(ends[-1])
    pos = torch.randint(0, total, (size,), generator=generator, dtype=torch.int64)
    if len(flats) == 1:  # the same draws and values as below, without the bucketing
        return flats[0][pos].abs().to(torch.float32)
    which = torch.bucketize(pos, ends, right=True)
    starts = ends - numels
    out = torch.empty(size, dtype=torch.float32)
    for i, flat in enumerate(flats):
        sel = which == i
        if sel.any():
            out[sel] = flat[pos[sel] - starts[i]].abs().to(torch.float32)
    return out


def sampled_threshold(
    flats: list[torch.Tensor], ratio: float, sample_size: int = 100_000, generator: torch.Generator | None = None
) -> float:
    """Magnitude above which about ``ratio`` of all values of ``flats`` lie, estimated from a sample.

    Args:
        flats: 1-D float tensors (read only).
        ratio: share of values to keep, in (0, 1].
        sample_size: values sampled; raised so the sample holds at least 64 values above the
            threshold. Defaults to 100_000.
        generator: random source. Defaults to None (torch's global one).

    Returns:
        The threshold (a Python float, >= 0).
    """
    total = sum(f.numel() for f in flats)
    size = max(int(sample_size), int(math.ceil(64 / ratio)))
    if size >= total:
        mags = torch.cat([f.abs().to(torch.float32) for f in flats])
    else:
        mags = _sample_abs(flats, size, generator)
    keep = _k(mags.numel(), ratio)
    return float(torch.kthvalue(mags, mags.numel() - keep + 1).values)


_CHUNK = 1 << 16  # values compared at a time: the masks stay in cache


def _mask_indices(flat: torch.Tensor, threshold: float) -> torch.Tensor:
    """Sorted positions of the values of magnitude >= ``threshold`` (of the non-zero ones when it is 0).

    numpy on a float32 view, a chunk at a time (the masks never leave the cache): faster on CPU
    than ``torch.nonzero`` over a full-size mask. ``threshold`` is compared as a
    float32 (it is one: a value's magnitude).
    """
    if flat.dtype != torch.float32 or flat.device.type != "cpu":
        flat = flat.detach().to(device="cpu", dtype=torch.float32)
    x = flat.detach().numpy()
    t = np.float32(threshold)
    mask, mags = np.empty(min(x.size, _CHUNK), bool), np.empty(min(x.size, _CHUNK), np.float32)
    parts = []
    for start in range(0, x.size, _CHUNK):
        v = x[start : start + _CHUNK]
        m = mask[: v.size]
        if threshold > 0:  # |v| >= t: v >= t or v <= -t (NaN neither), in two passes
            np.greater_equal(np.abs(v, out=mags[: v.size]), t, out=m)
        else:
            np.not_equal(v, 0, out=m)
        nz = np.flatnonzero(m)
        nz += start
        parts.append(nz)
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.int64))


def select_topk(
    flats: dict[str, torch.Tensor],
    ratio: float,
    scope: str = "tensor",
    selection: str = "sampled",
    sample_size: int = 100_000,
    generator: torch.Generator | None = None,
    workers: int = 1,
) -> dict[str, torch.Tensor]:
    """Positions of the largest-magnitude values to send.

    Args:
        flats: ``{name: 1-D float tensor}`` (read only).
        ratio: share of values to keep, in (0, 1].
        scope: ``"tensor"`` or ``"global"`` (see the module docstring). Defaults to ``"tensor"``.
        selection: ``"sampled"`` or ``"exact"``. Defaults to ``"sampled"``.
        sample_size: values sampled for the sampled threshold over the whole update (shared among
            tensors in proportion to their size for ``scope="tensor"``; each tensor draws at least
            ``64 / ratio``). Defaults to 100_000.
        generator: random source for sampling. Defaults to None.
        workers: threads that compare the tensors with their sampled thresholds (the thresholds
            are drawn in order first, so the result does not depend on it). Defaults to 1.

    Returns:
        ``{name: 1-D int64 tensor}`` of sorted positions (possibly empty for ``scope="global"``).

    Raises:
        ValueError: ``ratio``, ``scope`` or ``selection`` is invalid.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio={ratio!r}: must be in (0, 1]")
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}: unknown (valid: {', '.join(SCOPES)})")
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r}: unknown (valid: {', '.join(SELECTIONS)})")
    if not flats:
        return {}
    names = list(flats)
    if selection == "exact":
        if scope == "tensor":
            return {
                n: torch.sort(torch.topk(flats[n].abs(), _k(flats[n].numel(), ratio), sorted=False).indices).values
                for n in names
            }
        cat = torch.cat([flats[n].abs() for n in names])
        top = torch.sort(torch.topk(cat, _k(cat.numel(), ratio), sorted=False).indices).values
        out, start = {}, 0
        for n in names:
            end = start + flats[n].numel()
            lo, hi = torch.searchsorted(top, torch.tensor([start, end]))
            out[n] = top[lo:hi] - start
            start = end
        return out
    if scope == "tensor":
        # one sample budget for the whole update, shared in proportion to tensor size
        total = sum(f.numel() for f in flats.values())
        thresholds = [
            sampled_threshold([flats[n]], ratio, math.ceil(sample_size * flats[n].numel() / total), generator) for n in names
        ]
    else:
        thresholds = [sampled_threshold([flats[n] for n in names], ratio, sample_size, generator)] * len(names)
    return dict(zip(names, thread_map(_mask_indices, [flats[n] for n in names], thresholds, workers=workers)))


_PARALLEL_MIN_VALUES = 1 << 20  # below this, starting threads costs more than they save


def workers_for(n_values: int) -> int:
    """Threads to code ``n_values`` values on: torch's thread budget for a large update, else 1."""
    return torch.get_num_threads() if n_values >= _PARALLEL_MIN_VALUES else 1


def thread_map(fn, *iterables, workers: int = 1) -> list:
    """``list(map(fn, *iterables))``, on ``workers`` threads when more than one (numpy and zlib
    release the GIL on large arrays); results in order, the first exception in order raised."""
    if workers <= 1:
        return list(map(fn, *iterables))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, *iterables))
