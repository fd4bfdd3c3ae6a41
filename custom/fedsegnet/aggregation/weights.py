"""Bounded weights: normalise per-site weights to sum 1 with every weight between a floor and a cap.

AAM (:mod:`.aam`) bounds the prior shares (what sites report: case count x label-kind trust) to
at most its ``cap`` before the scores, and the final weights to at least its ``floor`` after them:
the cap limits what reporting buys, the floor keeps every accepted site in the round.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bounded_weights(raw: Sequence[float], floor: float = 0.0, cap: float = 1.0) -> np.ndarray:
    """Normalise non-negative weights to sum 1 with every weight in ``[floor, cap]``.

    Weights pinned at a bound stay there; the rest of the mass is shared among the others in
    proportion to their raw weights (repeated until no bound is crossed). Bounds that cannot hold
    for K weights are relaxed to ``floor <= 1/K <= cap``.

    Args:
        raw: K finite weights >= 0 (all zero means equal).
        floor: lowest weight. Defaults to 0.0.
        cap: highest weight. Defaults to 1.0.

    Returns:
        float64 array of K weights summing to 1.

    Raises:
        ValueError: empty, negative or non-finite weights, or ``floor > cap``.
    """
    w = np.asarray(raw, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"raw={list(np.atleast_1d(w))!r}: need one or more finite weights >= 0")
    if floor > cap:
        raise ValueError(f"floor={floor!r} > cap={cap!r}")
    k = w.size
    floor, cap = min(floor, 1.0 / k), max(cap, 1.0 / k)
    w = np.ones(k) if w.sum() <= 0 else w
    out = np.zeros(k)
    free = np.ones(k, dtype=bool)
    for _ in range(2 * k + 1):  # each pass pins at least one more weight, or ends
        mass = 1.0 - out[~free].sum()
        total = w[free].sum()
        out[free] = w[free] / total * mass if total > 0 else mass / free.sum()
        high = free & (out > cap + 1e-12)
        low = free & (out < floor - 1e-12)
        if high.any():  # pin the largest first: the mass they give back may lift others over the floor
            out[high] = cap
            free &= ~high
        elif low.any():
            out[low] = floor
            free &= ~low
        else:
            break
        if not free.any():
            break
    return out / out.sum()
