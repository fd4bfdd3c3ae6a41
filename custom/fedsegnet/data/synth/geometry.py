"""Shape primitives of the synthetic phantoms, on a normalised voxel grid.

``u`` is the grid of normalised voxel coordinates in [-1, 1], shape (3, X, Y, Z) float32
(:func:`coords`). Shapes are level sets: a *level* is < 0 inside the shape. Every random choice
comes from the ``rng`` passed in.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["coords", "ellipsoid_level", "polyline_distance", "rotation", "sample_point", "smooth_field", "tube_mask"]


def coords(n: int) -> np.ndarray:
    """The normalised coordinate grid of an ``n``^3 volume: (3, n, n, n) float32, voxel centres."""
    ax = ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) / (n / 2.0)).astype(np.float32)
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"))


def smooth_field(rng: np.random.Generator, u: np.ndarray, wavelength: float, n_modes: int = 12) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field (random Fourier features, Gaussian spectrum).

    Returns:
        (X, Y, Z) float32.
    """
    freqs = (rng.normal(size=(n_modes, 3)) * (2.0 * np.pi / wavelength)).astype(np.float32)
    phases = rng.uniform(0.0, 2.0 * np.pi, n_modes).astype(np.float32)
    out = np.zeros(u.shape[1:], dtype=np.float32)
    for f, p in zip(freqs, phases):
        out += np.cos(f[0] * u[0] + f[1] * u[1] + f[2] * u[2] + p)
    out *= np.float32(math.sqrt(2.0 / n_modes))
    return out


def rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation: (3, 3) float32, determinant +1."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.astype(np.float32)


def ellipsoid_level(u: np.ndarray, centre, axes, rot: np.ndarray) -> np.ndarray:
    """Normalised radius minus one of a rotated ellipsoid: (X, Y, Z) float32, < 0 inside."""
    d = u - np.asarray(centre, dtype=np.float32)[:, None, None, None]
    d = np.einsum("ji,j...->i...", rot, d)
    a = np.asarray(axes, dtype=np.float32)[:, None, None, None]
    return np.sqrt(((d / a) ** 2).sum(0)) - 1.0


def polyline_distance(u: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance of every grid point to a polyline (``points``: (K, 3), K >= 2): (X, Y, Z) float32."""
    out = np.full(u.shape[1:], np.inf, dtype=np.float32)
    for p0, p1 in zip(points[:-1], points[1:]):
        v = (p1 - p0).astype(np.float32)
        d = u - p0.astype(np.float32)[:, None, None, None]
        t = np.clip(np.einsum("i,i...->...", v, d) / float(v @ v), 0.0, 1.0)
        np.minimum(out, np.sqrt(((d - v[:, None, None, None] * t) ** 2).sum(0)), out=out)
    return out


def tube_mask(u: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    """Voxels within ``radius`` of a polyline, computed inside the polyline's bounding box only.

    Returns:
        (X, Y, Z) bool.
    """
    n = u.shape[1]
    half = n / 2.0
    lo = np.floor((points.min(0) - radius) * half + (n - 1) / 2.0).astype(int)
    hi = np.ceil((points.max(0) + radius) * half + (n - 1) / 2.0).astype(int) + 1
    lo, hi = np.clip(lo, 0, n), np.clip(hi, 0, n)
    mask = np.zeros(u.shape[1:], dtype=bool)
    if np.any(hi <= lo):
        return mask
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    mask[box] = polyline_distance(u[(slice(None),) + box], points) < radius
    return mask


def sample_point(rng: np.random.Generator, u: np.ndarray, mask: np.ndarray, fallback) -> np.ndarray:
    """The coordinates (3,) of a random voxel of ``mask``, or ``fallback`` when the mask is empty."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return np.asarray(fallback, dtype=np.float32)
    k = idx[rng.integers(idx.size)]
    return u.reshape(3, -1)[:, k].copy()
