"""One synthetic case: body, organ, lesions, confounders, rendering and acquisition.

* **Anatomy.** A body (deformed ellipsoid, air outside) holds an *organ* (class 1: union of 2-3
  randomly placed and rotated ellipsoids whose boundary is deformed by smooth noise) and 1-2
  *lesions* in 90 % of cases (class 2: deformed ellipsoids centred on organ voxels, so they lie
  inside the organ or bulge out of its boundary).
* **Confounders.** Structures that no intensity window separates from the classes, but shape and
  texture do: vessels (thin winding tubes as bright as lesions, through body and organ), nodules
  (small bright spots, lesion intensity, anywhere in the body) and "bowel" blobs (coarse mottled
  texture whose intensities span body and organ). Intensity distributions of all classes overlap.
* **Acquisition.** Mild partial-volume blur, a smooth multiplicative bias field and strong Gaussian
  noise: the organ/body and lesion/organ contrasts (0.3) are about 1.25 noise standard deviations,
  so single voxels are ambiguous while a neighbourhood is not.

Multi-channel images mimic multi-sequence MRI (BraTS: T1, T2, FLAIR, T1c): every channel shows the
same anatomy with its own class contrasts (e.g. dark lesions with a bright core in T2,
ring-enhancing lesions in T1c) and its own noise.

:func:`make_case` builds a case of the default scenario; :func:`assemble` paints lesions,
confounders and acquisition around any organ, which is how the ``organs`` scenario's hosts
(:mod:`fedsegnet.data.synth.organs`) share everything but the organ.
"""

from __future__ import annotations

import numpy as np

from fedsegnet.data.synth.geometry import coords, ellipsoid_level, rotation, sample_point, smooth_field, tube_mask

__all__ = ["LABELS", "assemble", "lobed_level", "make_body", "make_case"]

LABELS = {0: "background", 1: "organ", 2: "lesion"}
"""Class id -> name of the synthetic data."""

# Tissue intensities per channel, before bias, noise and site scale/shift. Channel 0 is T1-like;
# the others mimic further MRI sequences with different class contrasts (BraTS-style 4 channels).
_CONTRASTS = (
    {"air": 0.0, "body": 0.30, "organ": 0.60, "rim": 0.90, "core": 0.90, "vessel": 0.90, "nodule": 0.90, "blob": 0.47},
    {"air": 0.0, "body": 0.38, "organ": 0.50, "rim": 0.32, "core": 0.70, "vessel": 0.15, "nodule": 0.62, "blob": 0.50},
    {"air": 0.0, "body": 0.55, "organ": 0.40, "rim": 0.66, "core": 0.52, "vessel": 0.30, "nodule": 0.35, "blob": 0.42},
    {"air": 0.0, "body": 0.30, "organ": 0.60, "rim": 0.90, "core": 0.62, "vessel": 0.90, "nodule": 0.80, "blob": 0.60},
)
_BLUR = 0.1  # partial-volume blur: weight of each neighbour along an axis
_RIM = 0.4  # rim thickness as a share of the lesion radius


def _blur(x: np.ndarray) -> np.ndarray:
    """Partial-volume blur: separable [1/4, 1/2, 1/4] kernel on the last three axes."""
    for axis in (-3, -2, -1):
        x = (1 - 2 * _BLUR) * x + _BLUR * (np.roll(x, 1, axis) + np.roll(x, -1, axis))
    return x


def make_body(rng: np.random.Generator, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The body: a deformed ellipsoid. Returns ``(level, mask)`` (level < 0 inside)."""
    body_axes = np.array([0.88, 0.76, 0.92]) * rng.uniform(0.95, 1.05, 3)
    body_f = ellipsoid_level(u, np.zeros(3, dtype=np.float32), body_axes, np.eye(3, dtype=np.float32))
    body_f += 0.05 * smooth_field(rng, u, 0.5)
    return body_f, body_f < 0


def lobed_level(
    rng: np.random.Generator, u: np.ndarray, ss: float, lobes=(2, 4), axes=(0.38, 0.55), spread=0.12, deform=0.12
) -> tuple[np.ndarray, np.ndarray]:
    """Union of ``lobes`` (``[min, max)``) rotated ellipsoids, boundary deformed by smooth noise.

    Returns ``(centre, level)``; the default organ and the ``lobed`` host.
    """
    centre = rng.uniform(-0.15, 0.15, 3)
    organ_f = np.full(u.shape[1:], np.inf, dtype=np.float32)
    for _ in range(int(rng.integers(*lobes))):
        c = centre + rng.normal(0.0, spread, 3) * ss
        np.minimum(organ_f, ellipsoid_level(u, c, rng.uniform(*axes, 3) * ss, rotation(rng)), out=organ_f)
    organ_f += deform * smooth_field(rng, u, 0.45)
    return centre, organ_f


def _make_lesions(rng: np.random.Generator, u: np.ndarray, organ: np.ndarray, body: np.ndarray, centre, style: dict):
    """Lesions centred on ``organ`` voxels (inside it or bulging out), the same model for every host.

    Returns:
        ``(lesions, rims, gains)``: lists of boolean masks, rim masks (ring enhancement) and
        contrast factors.
    """
    ss = float(style["structure_scale"])
    lo, hi = style["lesion_count"]
    n_lesions = int(rng.integers(lo, hi + 1)) if rng.random() < float(style["lesion_prob"]) else 0
    lesions, rims, lesion_gain = [], [], []
    for _ in range(n_lesions):
        c = sample_point(rng, u, organ, centre)
        radius = rng.uniform(0.2, 0.28) * ss
        f = ellipsoid_level(u, c, radius * rng.uniform(0.75, 1.3, 3), rotation(rng))
        f += 0.12 * smooth_field(rng, u, 0.25)
        lesions.append((f < 0) & body)
        rims.append(lesions[-1] & (f > -_RIM))  # ring enhancement: bright rim, near-organ core
        lesion_gain.append(rng.uniform(0.8, 1.2) * float(style["lesion_contrast"]))
    return lesions, rims, lesion_gain


def _make_vessels(rng: np.random.Generator, u: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Thin winding tubes through body and organ (lesion intensity)."""
    origin = np.zeros(3, dtype=np.float32)
    vessels = np.zeros(u.shape[1:], dtype=bool)
    for _ in range(int(rng.integers(4, 9))):
        p = sample_point(rng, u, body, origin)
        d = rng.normal(size=3)
        pts = [p]
        for _ in range(6):
            d = d / np.linalg.norm(d) + rng.normal(0.0, 0.45, 3)
            d = d / np.linalg.norm(d)
            pts.append(pts[-1] + 0.22 * d)
        vessels |= tube_mask(u, np.array(pts), rng.uniform(0.045, 0.07))
    return vessels & body


def _make_nodules_and_blobs(rng, u, body, body_f, organ_f, ss: float) -> tuple[list, list]:
    """Nodules (small bright spots anywhere in the body) and bowel blobs (away from the organ)."""
    origin = np.zeros(3, dtype=np.float32)
    away = body & (organ_f > 0.7) & (body_f < -0.15)
    nodules = []
    for _ in range(int(rng.integers(4, 9))):
        c = sample_point(rng, u, body, origin)
        f = ellipsoid_level(u, c, rng.uniform(0.05, 0.08) * rng.uniform(0.8, 1.2, 3), rotation(rng))
        nodules.append((f < 0) & body)
    blobs = []
    for _ in range(int(rng.integers(2, 4))):
        c = sample_point(rng, u, away, origin)
        f = ellipsoid_level(u, c, rng.uniform(0.15, 0.24, 3) * ss, rotation(rng))
        f += 0.2 * smooth_field(rng, u, 0.25)
        blobs.append((f < 0) & body & (organ_f > 0.3))
    return nodules, blobs


def _union(masks: list, shape) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        out |= m
    return out


def _channel_contrasts(ch: int) -> dict:
    t = _CONTRASTS[ch % len(_CONTRASTS)]
    if ch >= len(_CONTRASTS):  # further channels: jittered copies of the 4 base contrasts
        jitter = np.random.default_rng([ch, 17]).uniform(-0.05, 0.05, len(t))
        t = {k: v + j for (k, v), j in zip(t.items(), jitter)}
    return t


def _acquire(rng: np.random.Generator, img: np.ndarray, bias: np.ndarray, style: dict) -> np.ndarray:
    """Acquisition of one channel: partial-volume blur, bias field, noise, scanner scale/shift."""
    img = _blur(img) * bias
    img += float(style["noise_sd"]) * rng.standard_normal(img.shape, dtype=np.float32)
    return img * float(style["intensity_scale"]) + float(style["intensity_shift"])


def assemble(rng, u, style: dict, channels: int, *, body, body_f, organ, organ_f, centre, host=None, capsule=None):
    """Lesions, confounders, textures, rendering and acquisition around a given organ (or host).

    ``host`` None paints the default organ; a host spec (see
    :data:`fedsegnet.data.synth.organs.HOST_SPECS`) sets the organ's intensity relative to the body,
    its texture and its capsule (``capsule`` mask). Lesions keep the default organ-referenced
    intensities either way (same appearance in every host).

    Args:
        rng: the case's generator (advanced here).
        u: (3, X, Y, Z) coordinate grid (:func:`~fedsegnet.data.synth.geometry.coords`).
        style: a site style (:func:`~fedsegnet.data.synth.styles.site_style`).
        channels: image channels, >= 1.
        body: (X, Y, Z) bool body mask; ``body_f`` its level.
        organ: (X, Y, Z) bool organ (class 1) mask; ``organ_f`` its level; ``centre`` (3,) its centre.
        host: a host spec or None (the default organ). Defaults to None.
        capsule: (X, Y, Z) bool capsule mask of a host, or None. Defaults to None.

    Returns:
        dict with ``image`` (C, X, Y, Z) float32, ``label`` (X, Y, Z) uint8 (:data:`LABELS`) and
        ``structures`` (boolean masks: ``organ``, lists ``lesions``, ``nodules``, ``blobs``).
    """
    ss = float(style["structure_scale"])
    lesions, rims, lesion_gain = _make_lesions(rng, u, organ, body, centre, style)
    vessels = _make_vessels(rng, u, body)
    nodules, blobs = _make_nodules_and_blobs(rng, u, body, body_f, organ_f, ss)

    tex_wavelength, tex_modes, tex_amp = (0.12, 12, 0.02) if host is None else host["texture"]
    body_tex = smooth_field(rng, u, 0.2)
    blob_tex = smooth_field(rng, u, 0.15, n_modes=24)
    organ_tex = smooth_field(rng, u, tex_wavelength, n_modes=tex_modes)
    organ_shift = rng.normal(0.0, 0.02)
    bias = np.exp(float(style["bias_strength"]) * smooth_field(rng, u, 0.9, n_modes=6)).astype(np.float32)

    shape = u.shape[1:]
    lesion_any, blob_any, nodule_any = _union(lesions, shape), _union(blobs, shape), _union(nodules, shape)
    image = np.empty((channels,) + shape, dtype=np.float32)
    for ch in range(channels):
        t = _channel_contrasts(ch)
        img = np.full(shape, t["air"], dtype=np.float32)
        img[body] = (t["body"] + 0.04 * body_tex)[body]
        img[blob_any] = (t["blob"] + 0.2 * blob_tex)[blob_any]
        lesion_ref = t["organ"] + organ_shift  # lesions: the same intensities in every host
        if host is None:
            organ_level = lesion_ref
        else:
            organ_level = t["body"] + host["contrast"] * (t["organ"] - t["body"]) + organ_shift
        img[organ] = (organ_level + tex_amp * organ_tex)[organ]
        if capsule is not None:
            capsule_level = t["body"] + host["capsule_contrast"] * (t["organ"] - t["body"]) + organ_shift
            img[capsule] = (capsule_level + tex_amp * organ_tex)[capsule]
        img[vessels] = t["vessel"]
        img[nodule_any] = t["nodule"]
        for m, r, g in zip(lesions, rims, lesion_gain):
            img[m] = lesion_ref + (t["core"] - t["organ"]) * g
            img[r] = lesion_ref + (t["rim"] - t["organ"]) * g
        image[ch] = _acquire(rng, img, bias, style)

    label = np.zeros(shape, dtype=np.uint8)
    label[organ] = 1
    label[lesion_any] = 2
    return {
        "image": image,
        "label": label,
        "structures": {"organ": organ, "lesions": lesions, "nodules": nodules, "blobs": blobs},
    }


def make_case(rng: np.random.Generator, n: int, style: dict, channels: int) -> dict:
    """Generate one case of the default scenario in RAS voxel order.

    Returns:
        dict with ``image`` (C, n, n, n) float32, ``label`` (n, n, n) uint8 and ``structures``
        (boolean masks: ``organ``, lists ``lesions``, ``nodules``, ``blobs``).
    """
    u = coords(n)
    body_f, body = make_body(rng, u)
    # organ: union of 2-3 rotated ellipsoids, boundary deformed by smooth noise
    centre, organ_f = lobed_level(rng, u, float(style["structure_scale"]))
    organ = (organ_f < 0) & body
    return assemble(rng, u, style, channels, body=body, body_f=body_f, organ=organ, organ_f=organ_f, centre=centre)
