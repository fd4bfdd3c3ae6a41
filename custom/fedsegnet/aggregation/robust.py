"""Robust centres of site updates: coordinate-wise median and trimmed mean, and the weighted sum and mean.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018: per coordinate, the median (or the mean after dropping the
``beta`` share of largest and smallest values) of K updates tolerates up to about half (``beta``)
of the updates being arbitrary.

Every ``aggregate_*`` function takes ``updates: list[dict[str, array or tensor]]`` or
:class:`~fedsegnet.aggregation.compact.CompactUpdate` (same names and shapes), never modifies them,
and returns ``dict[str, numpy.ndarray]`` (float32) of the same shapes. :func:`coordinate_centre` is
the centre of one stacked tensor, which the divergence signal (:mod:`.divergence`) also uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedsegnet.aggregation.compact import view

CENTRES = ("trimmed_mean", "median")
"""The coordinate-wise centres :func:`coordinate_centre` computes."""


def check_centre(centre: str, beta: float) -> None:
    """Refuse an unknown centre or a trimmed share outside [0, 0.5).

    Args:
        centre: one of :data:`CENTRES`.
        beta: the share trimmed at each end (checked for every centre).

    Raises:
        ValueError: ``centre`` unknown or ``beta`` outside [0, 0.5) (the message names it).
    """
    if centre not in CENTRES:
        raise ValueError(f"centre={centre!r}: unknown (valid: {', '.join(CENTRES)})")
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta={beta!r}: must be in [0, 0.5)")


def coordinate_centre(stacked: torch.Tensor, centre: str, beta: float = 0.0) -> torch.Tensor:
    """Coordinate-wise median or trimmed mean of K stacked values per coordinate.

    Sorts instead of ``torch.quantile``, which refuses inputs of more than 16M values (32 sites x a
    1M-value tensor).

    Args:
        stacked: ``(K, ...)`` tensor, K >= 1, any floating dtype; not modified.
        centre: ``"median"`` (the mean of the two middle values for an even K) or
            ``"trimmed_mean"`` (the mean after dropping the ``floor(beta * K)`` largest and smallest).
        beta: share trimmed at each end for ``"trimmed_mean"``, in [0, 0.5). Defaults to 0.0.

    Returns:
        ``stacked.shape[1:]`` tensor of ``stacked``'s dtype.

    Raises:
        ValueError: an unknown centre or ``beta`` outside [0, 0.5).
    """
    check_centre(centre, beta)
    k = stacked.shape[0]
    if centre == "median" and k == 1:
        return stacked[0]
    ordered = torch.sort(stacked, dim=0).values
    if centre == "median":
        return (ordered[(k - 1) // 2] + ordered[k // 2]) * 0.5
    cut = int(math.floor(beta * k))
    return ordered[cut : k - cut].mean(dim=0)


def _stack(updates: Sequence[Mapping], name: str) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(u[name]), dtype=torch.float32) for u in updates])


def _check(updates: Sequence[Mapping]):
    if not updates:
        raise ValueError("updates: need at least one update")
    names = set(updates[0])
    for i, u in enumerate(updates[1:], start=1):
        if set(u) != names:
            raise ValueError(f"updates[{i}]: tensor names differ from updates[0]'s")


def aggregate_mean(updates: Sequence[Mapping], weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Weighted mean of updates: :func:`weighted_sum` with the weights normalised to sum 1.

    Args:
        updates: K updates with the same names and shapes.
        weights: K non-negative weights, not all zero (normalised here). Defaults to None (equal).

    Raises:
        ValueError: no updates, differing names, or bad weights (wrong count, negative, all zero, NaN).
    """
    _check(updates)
    w = np.ones(len(updates)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(updates),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights={list(np.atleast_1d(w))!r}: need {len(updates)} finite weights >= 0, not all 0")
    return weighted_sum(updates, (w / w.sum()).tolist())


def aggregate_median(updates: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """Coordinate-wise median (the mean of the two middle values for an even count).

    Works one tensor at a time (K copies of one tensor in memory, never K models).

    Raises:
        ValueError: no updates or differing names.
    """
    _check(updates)
    return {n: coordinate_centre(_stack(updates, n), "median").numpy() for n in updates[0]}


def aggregate_trimmed_mean(updates: Sequence[Mapping], beta: float = 0.2) -> dict[str, np.ndarray]:
    """Coordinate-wise trimmed mean: drop the ``floor(beta * K)`` largest and smallest values per coordinate.

    Args:
        updates: K updates with the same names and shapes.
        beta: share trimmed at each end, in [0, 0.5). Defaults to 0.2.

    Raises:
        ValueError: no updates, differing names, or ``beta`` outside [0, 0.5).
    """
    check_centre("trimmed_mean", beta)
    _check(updates)
    return {n: coordinate_centre(_stack(updates, n), "trimmed_mean", beta).numpy() for n in updates[0]}


def weighted_sum(updates: Sequence[Mapping], factors: Sequence[float]) -> dict[str, np.ndarray]:
    """``sum_i factors[i] * updates[i]`` per tensor (float32 result; inputs not modified).

    Every update is read through :func:`~fedsegnet.aggregation.compact.view`: a
    :class:`~fedsegnet.aggregation.compact.CompactUpdate` adds only its stored values (no dense
    copy); a plain mapping is read one tensor at a time.

    Args:
        updates: K updates with the same names and shapes.
        factors: K multipliers (not normalised here).

    Returns:
        ``{name: float32 array}``.

    Raises:
        ValueError: no updates, or not as many factors as updates.
    """
    if len(updates) != len(factors) or not updates:
        raise ValueError(f"need as many factors as updates (>0), got {len(factors)} for {len(updates)}")
    readers = [view(u) for u in updates]
    out = {}
    for name in updates[0]:
        acc = np.zeros(readers[0].shape(name), dtype=np.float32)
        for u, f in zip(readers, factors):
            u.add_to(name, acc, float(f))
        out[name] = acc
    return out
