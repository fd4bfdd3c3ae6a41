"""Robust centres of site updates: coordinate-wise median and trimmed mean, and the weighted mean.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018: per coordinate, the median (or the mean after dropping the
``beta`` share of largest and smallest values) of K updates tolerates up to about half (``beta``)
of the updates being arbitrary.

Every function takes ``updates: list[dict[str, array or tensor]]`` (same names and shapes), never
modifies them, and returns ``dict[str, numpy.ndarray]`` (float32) of the same shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch


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
    """Weighted mean of updates.

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
    w = torch.as_tensor(w / w.sum(), dtype=torch.float32)
    return {
        n: torch.tensordot(w, _stack(updates, n), dims=1).numpy() for n in updates[0]
    }


def aggregate_median(updates: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """Coordinate-wise median (the mean of the two middle values for an even count).

    Works one tensor at a time (K copies of one tensor in memory, never K models); sorts instead of
    ``torch.quantile``, which refuses inputs of more than 16M values (32 sites x a 1M-value tensor).

    Raises:
        ValueError: no updates or differing names.
    """
    _check(updates)
    k = len(updates)
    out = {}
    for n in updates[0]:
        stacked = _stack(updates, n)
        if k == 1:
            out[n] = stacked[0].numpy()
            continue
        ordered = torch.sort(stacked, dim=0).values
        out[n] = ((ordered[(k - 1) // 2] + ordered[k // 2]) * 0.5).numpy()
    return out


def aggregate_trimmed_mean(updates: Sequence[Mapping], beta: float = 0.2) -> dict[str, np.ndarray]:
    """Coordinate-wise trimmed mean: drop the ``floor(beta * K)`` largest and smallest values per coordinate.

    Args:
        updates: K updates with the same names and shapes.
        beta: share trimmed at each end, in [0, 0.5). Defaults to 0.2.

    Raises:
        ValueError: no updates, differing names, or ``beta`` outside [0, 0.5).
    """
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta={beta!r}: must be in [0, 0.5)")
    _check(updates)
    k = len(updates)
    cut = int(math.floor(beta * k))
    out = {}
    for n in updates[0]:
        stacked = torch.sort(_stack(updates, n), dim=0).values
        out[n] = stacked[cut : k - cut].mean(dim=0).numpy()
    return out
