"""The divergence signal of AAM: each update's direction against a robust centre of the others, and its size.

For each accepted update, the cosine distance ``c_i`` to a robust centre of the *other* sites'
updates (leave-one-out coordinate-wise trimmed mean or median: an update cannot pull its own
reference towards itself; an update of random direction is near-orthogonal to every other update,
while honest updates correlate with each other), and the norm ratio ``r_i = ||u_i|| / rho`` to the
round's reference norm (:func:`~fedsegnet.aggregation.gate.reference_norm`). Both are measured by
the server on the update itself, so a site cannot fake them. AAM (:mod:`.aam`) turns them into
penalties.

The K leave-one-out centres come from one sort per coordinate (:func:`_leave_one_out_centres`); the
inclusive centre (``leave_one_out=False``) is :func:`~fedsegnet.aggregation.robust.coordinate_centre`,
the centre the robust aggregation rules use. The centre and the cosines are computed on a fixed,
seeded sample of coordinates (:func:`sample_positions`).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Mapping

import numpy as np
import torch

from fedsegnet.aggregation.compact import view
from fedsegnet.aggregation.gate import reference_norm
from fedsegnet.aggregation.robust import check_centre, coordinate_centre


@functools.lru_cache(maxsize=4096)
def _sample_positions(name: str, size: int, share: float) -> np.ndarray:
    """A fixed (seeded by the tensor name), sorted sample of flat positions of one tensor (cached: reused every round)."""
    if share >= 1.0:
        return np.arange(size)
    m = max(1, int(math.ceil(size * share)))
    rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
    positions = np.unique(rng.integers(0, size, size=m))  # sorted; a few repeats dropped
    positions.setflags(write=False)
    return positions


def sample_positions(shapes: Mapping[str, tuple], sample_size: int = 250_000) -> dict[str, np.ndarray]:
    """The fixed coordinate sample the divergence signal reads, per tensor (the same every site and round).

    Args:
        shapes: ``{name: shape}`` of the tensors compared (the round's shared keys).
        sample_size: coordinates in all, spread over the tensors in proportion to their sizes
            (0 = all). Defaults to 250_000.

    Returns:
        ``{name: 1-D sorted int64 flat positions}`` (read-only; seeded by the tensor name; every
        position when the tensors hold at most ``sample_size`` values or ``sample_size`` is 0).
    """
    sizes = {n: int(np.prod(shape, dtype=np.int64)) for n, shape in shapes.items()}
    total = sum(sizes.values())
    share = 1.0 if not sample_size or total <= sample_size else sample_size / total
    return {n: _sample_positions(n, size, share) for n, size in sizes.items()}


def _leave_one_out_centres(stacked: torch.Tensor, centre: str, beta: float) -> torch.Tensor:
    """Per site, the robust centre of the *other* rows of ``stacked`` (K x n, K >= 2), from one sort.

    Returns:
        ``(K, n)`` contiguous tensor of ``stacked``'s dtype: row ``i`` is the centre without row ``i``
        (every site's centre in one pass over the ``(n, K)`` sort, the same values as site by site).
    """
    k = stacked.shape[0]
    values, index = torch.sort(stacked.T.contiguous(), dim=1)  # (n, K) sorted per coordinate
    n = values.shape[0]
    rank = torch.empty_like(index)
    rank.scatter_(1, index, torch.arange(k).expand(n, k).contiguous())  # rank[c, i]: position of row i
    others = k - 1
    if centre == "median":
        m1, m2 = (others - 1) // 2, others // 2  # middle positions among the others
        f1, f2 = m1 + (m1 >= rank).long(), m2 + (m2 >= rank).long()  # the same positions in the full sort
        return ((values.gather(1, f1) + values.gather(1, f2)) * 0.5).T.contiguous()
    cut = int(math.floor(beta * others))
    lo_keep, hi_keep = cut, others - cut  # kept positions [lo_keep, hi_keep) among the others
    prefix = torch.cat([torch.zeros(n, 1, dtype=values.dtype), torch.cumsum(values, dim=1)], dim=1)
    inside = (rank >= lo_keep) & (rank <= hi_keep)  # the removed value sits in the kept span: one more from above
    lo = torch.where(rank < lo_keep, lo_keep + 1, lo_keep)
    hi = torch.where(rank <= hi_keep, hi_keep + 1, hi_keep)
    total = prefix.gather(1, hi) - prefix.gather(1, lo)
    total = total - torch.where(inside, values.gather(1, rank), torch.zeros((), dtype=values.dtype))
    return (total / (hi_keep - lo_keep)).T.contiguous()


def divergence_signals(
    updates: Mapping[str, Mapping],
    centre: str = "trimmed_mean",
    beta: float = 0.25,
    sample_size: int = 250_000,
    reference: float | None = None,
    leave_one_out: bool = True,
) -> dict[str, dict[str, float]]:
    """Cosine distance of each update to a robust centre of the others, and its norm ratio to the reference norm.

    With ``leave_one_out`` (the default) each update is compared with the centre of the *other*
    updates: an update cannot pull its own reference towards itself (with 4 sites, Gaussian noise
    of ordinary norm kept a similarity of 0.14-0.19 to a centre that included it, against 0.4-0.6
    for honest updates; against the others' centre it is near 0). With 2 updates each one's centre
    is the other one, so both get the same similarity (two sites cannot tell who points wrong).

    The centre and the cosines are computed on a fixed sample of coordinates (the same positions
    for every site and round, seeded by tensor name, about ``sample_size`` in all, spread over the
    tensors in proportion to their sizes): a cosine over 250k coordinates estimates the full one
    to about 0.01 even at 10% density, and the cost no longer grows with the model. Norms are exact.
    Every update is read through :func:`~fedsegnet.aggregation.compact.view`:
    :class:`~fedsegnet.aggregation.compact.CompactUpdate` inputs are read without densifying them,
    from the sample they kept when they were made (:func:`sample_positions`) when they kept it.

    Args:
        updates: ``{site: {name: array}}`` with the same names and shapes; not modified.
        centre: ``"trimmed_mean"`` (drop ``floor(beta * K)`` values at each end per coordinate)
            or ``"median"``. Defaults to ``"trimmed_mean"``.
        beta: trimmed share per end for ``"trimmed_mean"``, in [0, 0.5). Defaults to 0.25.
        sample_size: coordinates used for the centre and the cosines (0 = all). Defaults to 250_000.
        reference: the norm the ratios are taken to. Defaults to None
            (:func:`~fedsegnet.aggregation.gate.reference_norm` of these updates, no history).
        leave_one_out: compare each update with the centre of the others (else with the centre of
            all, itself included). Defaults to True.

    Returns:
        ``{site: {"cos_dist": in [0, 2], "norm": float, "norm_ratio": float}}``. With one update,
        or when the centre is zero, the cosine distance is 0.

    Raises:
        ValueError: no updates, an unknown centre or a bad ``beta``.
    """
    check_centre(centre, beta)
    sites = list(updates)
    if not sites:
        raise ValueError("updates: need at least one update")
    k = len(sites)
    readers = [view(updates[s]) for s in sites]
    sample = sample_positions({n: readers[0].shape(n) for n in updates[sites[0]]}, sample_size)
    dots = np.zeros(k)
    sq = np.zeros(k)
    centre_sq = np.zeros(k)
    for name, positions in sample.items():
        stacked = torch.from_numpy(np.stack([u.gather(name, positions) for u in readers])).double()
        sq += (stacked**2).sum(dim=1).numpy()
        if k == 1:
            continue
        if leave_one_out:
            for i, c in enumerate(_leave_one_out_centres(stacked, centre, beta)):
                dots[i] += float(stacked[i] @ c)
                centre_sq[i] += float(c @ c)
        else:
            c = coordinate_centre(stacked, centre, beta)
            dots += (stacked @ c).numpy()
            centre_sq += float(c @ c)
    norms = np.array([u.norm() for u in readers])
    sample_norms = np.sqrt(sq)
    ref = reference_norm(norms.tolist()) if reference is None else float(reference)
    out = {}
    for i, s in enumerate(sites):
        denom = sample_norms[i] * math.sqrt(centre_sq[i])
        cos = float(dots[i] / denom) if denom > 0 and k > 1 else 1.0
        out[s] = {
            "cos_dist": float(min(2.0, max(0.0, 1.0 - cos))),
            "norm": float(norms[i]),
            "norm_ratio": float(norms[i] / ref) if ref and ref > 0 else 1.0,
        }
    return out
