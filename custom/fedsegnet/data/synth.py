"""Synthetic multi-site 3D segmentation data: the project's embedded default dataset.

Every command, test and demo of FedSegNet runs on data made here, so it is built to behave like a
real (noisy, low-dose CT or fast MRI) organ-and-lesion segmentation task in the ways that matter for
federated learning research:

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

Difficulty, measured (2 sites x 12 cases + 8 test cases at 48^3, seeds 0-2): the per-class
intensity-window baseline (:func:`fedsegnet.data.baseline.threshold_baseline`) reaches a mean
foreground Dice of 0.39-0.42, while a MONAI ``UNet(channels=(16, 32, 64), strides=(2, 2))`` trained
with DiceCE for 300 steps of 4 crops of 32^3 (one CPU thread, about a minute) reaches 0.81-0.86.

Non-IID sites (FedMix, Wicaksana et al. 2022; FedOAP; the FL-for-segmentation review) come from
per-site *styles* (scanner intensity scale/shift, noise, bias field, structure size, lesion load;
see :data:`STYLE_DEFAULTS`) and per-site *label corruption* (noisy, eroded/dilated or shifted
annotations, a missing class; see :func:`corrupt_label`). The shared test set always uses the
neutral style and clean labels.

**Organs scenario** (``scenario="organs"``; personalised FL, FedOAP): sites scan *different
organs*. Site ``i`` gets host type ``HOSTS[(i - 1) % len(HOSTS)]`` (:data:`HOSTS`: a large lobed
liver-like organ, a curved tube, a small round organ with a bright capsule, a dark flat plate with
a mottled texture) in place of the default organ, still labelled 1 ("organ"): hosts differ in
shape, size, texture and intensity relative to the body (brighter or darker than it), chosen so
that a model trained on one host segments another badly (a design goal; no training measured yet).
Shared across sites: the body, the lesions (class 2: the same generator, size range and rim/core
intensities, centred on host voxels), the confounders (vessels, nodules, blobs) and the
acquisition model; site styles apply on top of the host type.
Each site keeps its own labelled held-out test cases (``imagesTs``/``labelsTs``, the ``test``
split of its ``dataset.json``; the site's style, clean labels), and there is no shared test folder.

Multi-channel images (``channels=C``) mimic multi-sequence MRI (BraTS: T1, T2, FLAIR, T1c): every
channel shows the same anatomy with its own class contrasts (e.g. dark lesions with a bright core
in T2, ring-enhancing lesions in T1c) and its own noise.

Determinism: a case depends only on ``(seed, site index, case index)`` and the arguments (a site's
own test cases on a separate stream, ``(seed, site index, 7357, case index)``), so the
same call writes the same arrays and affines (gzip streams are written with mtime 0, so the bytes
match too).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from fedsegnet.data.baseline import threshold_baseline  # re-exported: the data's difficulty check
from fedsegnet.data.datalist import write_datalist
from fedsegnet.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "CORRUPTION_KINDS",
    "HOSTS",
    "LABELS",
    "SCENARIOS",
    "SITE_VARIATION",
    "STYLE_DEFAULTS",
    "corrupt_label",
    "parse_corrupt",
    "parse_site_style",
    "reorient_nifti",
    "site_style",
    "synthesize",
    "threshold_baseline",
]

LABELS = {0: "background", 1: "organ", 2: "lesion"}
"""Class id -> name of the synthetic data."""

CORRUPTION_KINDS = ("label_noise", "erode", "dilate", "drop_class", "shift")
"""Label corruptions accepted by :func:`synthesize` (``corrupt=``) and :func:`parse_corrupt`."""

STYLE_DEFAULTS: dict[str, object] = {
    "intensity_scale": 1.0,
    "intensity_shift": 0.0,
    "noise_sd": 0.24,
    "bias_strength": 0.05,
    "structure_scale": 1.0,
    "lesion_count": (1, 2),
    "lesion_prob": 0.9,
    "lesion_contrast": 1.0,
}
"""Neutral site style (the test set's). Keys:

* ``intensity_scale``: multiplies all intensities (scanner gain), > 0.
* ``intensity_shift``: added to all intensities (scanner offset).
* ``noise_sd``: Gaussian noise standard deviation (organ/body and lesion/organ contrasts are
  0.3), >= 0.
* ``bias_strength``: log-amplitude of the smooth multiplicative bias field (0.05 ~ +-5 %, 0.3 ~
  +-30 %), >= 0. Kept mild by default: measured, a strong field (0.2-0.3) costs a small CNN far
  more early Dice (it must learn local contrast) than it costs the threshold baseline; raise it
  per site to study scanner heterogeneity.
* ``structure_scale``: size factor of organ, lesions and blobs, > 0.
* ``lesion_count``: lesions per case with lesions, an int or an inclusive ``(min, max)`` range.
* ``lesion_prob``: probability that a case has lesions at all (class balance), in [0, 1].
* ``lesion_contrast``: factor on the lesion/organ contrast (< 1 makes lesions subtler), >= 0.
"""

SITE_VARIATION = {
    "intensity_scale": (0.85, 1.15),
    "intensity_shift": (-0.1, 0.1),
    "noise_sd": (0.22, 0.26),
    "bias_strength": (0.03, 0.07),
    "structure_scale": (0.9, 1.1),
}
"""Ranges of the mild default per-site variation (uniform, drawn from ``seed`` and the site index)."""

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
_CHANNEL_NAMES = ("T1", "T2", "FLAIR", "T1c")
_ORIGIN_OFFSET = np.array([12.5, -7.0, 31.0])
_TEST_GROUP = 0  # rng group of the test set; sites are 1..N
_SITE_TEST_STREAM = 7357  # rng stream of a site's own test cases (organs scenario): [seed, site, 7357, case]

SCENARIOS = ("default", "organs")
"""Scenarios of :func:`synthesize`: ``default`` (one organ type everywhere, a shared test set) and
``organs`` (a different host organ per site, per-site test sets; see the module docstring)."""


def _style_keys() -> tuple[str, ...]:
    return tuple(STYLE_DEFAULTS)


# --------------------------------------------------------------------------------------------------
# spec parsing
# --------------------------------------------------------------------------------------------------
def _check_site_name(field: str, spec: str, site: str):
    if not site:
        raise ConfigError(field, spec, "site name is empty")


def parse_label_kinds(spec: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Parse ``"site-2:box,site-3:tag,site-4:partial:1"`` into ``{site: (kind, annotated class ids)}``.

    ``partial`` takes the annotated class ids of :data:`LABELS` joined by ``+`` (``partial:1+2``) or
    their names (``partial:organ``).

    Raises:
        ConfigError: (field ``label_kind``) for a malformed entry, an unknown kind or class.
    """
    from fedsegnet.data.datalist import LABEL_KINDS
    from fedsegnet.data.weak import class_value

    out = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        parts = [x.strip() for x in item.split(":")]
        if len(parts) not in (2, 3) or parts[1] not in LABEL_KINDS or (len(parts) == 3) != (parts[1] == "partial"):
            raise ConfigError("label_kind", item, "expected SITE:KIND (box, tag, voxel) or SITE:partial:CLASSES, e.g. site-4:partial:1", options=LABEL_KINDS)
        _check_site_name("label_kind", item, parts[0])
        annotated = ()
        if parts[1] == "partial":
            ids = [class_value(c, LABELS) for c in parts[2].split("+")]
            if None in ids or 0 in ids:
                raise ConfigError("label_kind", item, f"unknown class in {parts[2]!r}", options=[f"{k}:{n}" for k, n in LABELS.items() if k])
            annotated = tuple(sorted(ids))
        out[parts[0]] = (parts[1], annotated)
    return out


def weak_label_entry(kind: str, label: np.ndarray, affine: np.ndarray, annotated=()) -> dict:
    """The weaker label a ``kind`` site keeps of a true label map (stored grid and affine).

    ``box``: ``{"boxes": {"coordinates": "world", "boxes": [...]}}``, one world-coordinate box per
    connected component (26-neighbourhood) of each class, with corners on the voxel edges;
    ``tag``: ``{"tags": [class names present]}``; ``partial``: ``{"label": label map}`` with the
    classes outside ``annotated`` set to 0; ``voxel``: ``{"label": label}``.
    """
    from scipy import ndimage

    if kind == "voxel":
        return {"label": label}
    if kind == "partial":
        keep = np.isin(label, [0, *annotated])
        return {"label": np.where(keep, label, 0).astype(label.dtype)}
    if kind == "tag":
        return {"tags": [LABELS[int(v)] for v in np.unique(label) if v]}
    affine = np.asarray(affine, dtype=np.float64)
    boxes = []
    for value in (int(v) for v in np.unique(label) if v):
        components, _ = ndimage.label(label == value, structure=np.ones((3, 3, 3)))
        for sl in ndimage.find_objects(components):
            lo = np.array([s.start for s in sl], dtype=np.float64) - 0.5
            hi = np.array([s.stop for s in sl], dtype=np.float64) - 0.5
            corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            world = (affine @ corners.T)[:3]
            boxes.append({"class": LABELS[value], "min": world.min(axis=1).round(4).tolist(), "max": world.max(axis=1).round(4).tolist()})
    return {"boxes": {"coordinates": "world", "boxes": boxes}}


def parse_corrupt(spec: str) -> tuple[str, str, float]:
    """Parse a corruption spec ``"SITE:KIND:AMOUNT"``, e.g. ``"site-3:label_noise:0.5"``.

    Args:
        spec: the spec string. ``KIND`` is one of :data:`CORRUPTION_KINDS`.

    Returns:
        ``(site, kind, amount)``.

    Raises:
        ConfigError: (field ``corrupt``) for a malformed spec, an unknown kind or a bad amount.
    """
    if not isinstance(spec, str) or spec.count(":") != 2:
        raise ConfigError(
            "corrupt", spec, "expected SITE:KIND:AMOUNT, e.g. site-3:label_noise:0.5", options=CORRUPTION_KINDS
        )
    site, kind, amount = (s.strip() for s in spec.split(":"))
    _check_site_name("corrupt", spec, site)
    if kind not in CORRUPTION_KINDS:
        raise ConfigError("corrupt", spec, f"unknown corruption kind {kind!r}", options=CORRUPTION_KINDS)
    try:
        value = float(amount)
    except ValueError:
        raise ConfigError("corrupt", spec, f"amount {amount!r} is not a number", options=CORRUPTION_KINDS) from None
    _validate_corruption("corrupt", spec, kind, value)
    return site, kind, value


def _validate_corruption(field: str, spec, kind: str, amount: float):
    if kind not in CORRUPTION_KINDS:
        raise ConfigError(field, spec, f"unknown corruption kind {kind!r}", options=CORRUPTION_KINDS)
    if not math.isfinite(amount):
        raise ConfigError(field, spec, "amount must be finite")
    if kind == "label_noise" and not 0.0 <= amount <= 1.0:
        raise ConfigError(field, spec, "label_noise amount is a probability in [0, 1]")
    if kind in ("erode", "dilate") and (amount < 0 or amount > 32 or amount != int(amount)):
        raise ConfigError(field, spec, f"{kind} amount is a whole number of voxels in [0, 32]")
    if kind == "drop_class" and (amount != int(amount) or int(amount) not in LABELS or int(amount) == 0):
        options = [k for k in LABELS if k > 0]
        raise ConfigError(field, spec, "drop_class amount is a foreground class id", options=options)
    if kind == "shift" and amount != int(amount):
        raise ConfigError(field, spec, "shift amount is a whole number of voxels")


def parse_site_style(spec: str) -> tuple[str, str, float]:
    """Parse a site style spec ``"SITE:KEY:VALUE"``, e.g. ``"site-2:intensity_scale:1.3"``.

    Args:
        spec: the spec string. ``KEY`` is one of the keys of :data:`STYLE_DEFAULTS`
            (``lesion_count`` takes a whole number here: a fixed count).

    Returns:
        ``(site, key, value)``.

    Raises:
        ConfigError: (field ``site_style``) for a malformed spec, an unknown key or a bad value.
    """
    if not isinstance(spec, str) or spec.count(":") != 2:
        raise ConfigError(
            "site_style", spec, "expected SITE:KEY:VALUE, e.g. site-2:intensity_scale:1.3", options=_style_keys()
        )
    site, key, value = (s.strip() for s in spec.split(":"))
    _check_site_name("site_style", spec, site)
    if key not in STYLE_DEFAULTS:
        raise ConfigError("site_style", spec, f"unknown style key {key!r}", options=_style_keys())
    try:
        number = float(value)
    except ValueError:
        raise ConfigError("site_style", spec, f"value {value!r} is not a number") from None
    _validate_style_value("site_style", spec, key, number)
    return site, key, number


def _validate_style_value(field: str, spec, key: str, value):
    if key == "lesion_count":
        try:
            lo, hi = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
            ok = all(not isinstance(v, bool) and float(v) == int(v) and v >= 0 for v in (lo, hi)) and lo <= hi
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ConfigError(field, spec, "lesion_count is a whole number >= 0 or a (min, max) range")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, spec, f"{key} must be a finite number")
    if key in ("intensity_scale", "structure_scale") and value <= 0:
        raise ConfigError(field, spec, f"{key} must be > 0")
    if key in ("noise_sd", "bias_strength", "lesion_contrast") and value < 0:
        raise ConfigError(field, spec, f"{key} must be >= 0")
    if key == "lesion_prob" and not 0.0 <= value <= 1.0:
        raise ConfigError(field, spec, "lesion_prob must be in [0, 1]")


def site_style(site_index: int, seed: int = 0, overrides: dict | None = None, vary: bool = True) -> dict:
    """Return the style of one site: neutral defaults, mild variation, then overrides.

    Args:
        site_index: 1-based site index (site-1 is 1).
        seed: base seed of the variation. Defaults to 0.
        overrides: style keys to set (see :data:`STYLE_DEFAULTS`). Defaults to None.
        vary: apply the mild default variation of :data:`SITE_VARIATION`. Defaults to True.

    Returns:
        A new dict with every key of :data:`STYLE_DEFAULTS` (``lesion_count`` as ``(min, max)``).

    Raises:
        ConfigError: (field ``site_styles``) for an unknown key or a bad value.
    """
    style = dict(STYLE_DEFAULTS)
    if vary:
        rng = np.random.default_rng([int(seed), 7919, int(site_index)])
        for key, (lo, hi) in SITE_VARIATION.items():
            style[key] = round(float(rng.uniform(lo, hi)), 4)
    for key, value in (overrides or {}).items():
        if key not in STYLE_DEFAULTS:
            raise ConfigError("site_styles", key, "unknown style key", options=_style_keys())
        _validate_style_value("site_styles", {key: value}, key, value)
        style[key] = value
    count = style["lesion_count"]
    lo, hi = (count, count) if not isinstance(count, (tuple, list)) else count
    style["lesion_count"] = (int(lo), int(hi))
    return style


# --------------------------------------------------------------------------------------------------
# geometry helpers (u: normalised voxel coordinates in [-1, 1], shape (3, X, Y, Z))
# --------------------------------------------------------------------------------------------------
def _coords(n: int) -> np.ndarray:
    ax = ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) / (n / 2.0)).astype(np.float32)
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"))


def _smooth_field(rng: np.random.Generator, u: np.ndarray, wavelength: float, n_modes: int = 12) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field (random Fourier features, Gaussian spectrum)."""
    freqs = (rng.normal(size=(n_modes, 3)) * (2.0 * np.pi / wavelength)).astype(np.float32)
    phases = rng.uniform(0.0, 2.0 * np.pi, n_modes).astype(np.float32)
    out = np.zeros(u.shape[1:], dtype=np.float32)
    for f, p in zip(freqs, phases):
        out += np.cos(f[0] * u[0] + f[1] * u[1] + f[2] * u[2] + p)
    out *= np.float32(math.sqrt(2.0 / n_modes))
    return out


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.astype(np.float32)


def _ellipsoid_level(u: np.ndarray, centre, axes, rot: np.ndarray) -> np.ndarray:
    """Normalised radius minus one: < 0 inside the ellipsoid."""
    d = u - np.asarray(centre, dtype=np.float32)[:, None, None, None]
    d = np.einsum("ji,j...->i...", rot, d)
    a = np.asarray(axes, dtype=np.float32)[:, None, None, None]
    return np.sqrt(((d / a) ** 2).sum(0)) - 1.0


def _polyline_distance(u: np.ndarray, points: np.ndarray) -> np.ndarray:
    out = np.full(u.shape[1:], np.inf, dtype=np.float32)
    for p0, p1 in zip(points[:-1], points[1:]):
        v = (p1 - p0).astype(np.float32)
        d = u - p0.astype(np.float32)[:, None, None, None]
        t = np.clip(np.einsum("i,i...->...", v, d) / float(v @ v), 0.0, 1.0)
        np.minimum(out, np.sqrt(((d - v[:, None, None, None] * t) ** 2).sum(0)), out=out)
    return out


def _tube_mask(u: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    """Voxels within ``radius`` of a polyline, computed inside the polyline's bounding box only."""
    n = u.shape[1]
    half = n / 2.0
    lo = np.floor((points.min(0) - radius) * half + (n - 1) / 2.0).astype(int)
    hi = np.ceil((points.max(0) + radius) * half + (n - 1) / 2.0).astype(int) + 1
    lo, hi = np.clip(lo, 0, n), np.clip(hi, 0, n)
    mask = np.zeros(u.shape[1:], dtype=bool)
    if np.any(hi <= lo):
        return mask
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    mask[box] = _polyline_distance(u[(slice(None),) + box], points) < radius
    return mask


def _sample_point(rng: np.random.Generator, u: np.ndarray, mask: np.ndarray, fallback) -> np.ndarray:
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return np.asarray(fallback, dtype=np.float32)
    k = idx[rng.integers(idx.size)]
    return u.reshape(3, -1)[:, k].copy()


def _blur(x: np.ndarray) -> np.ndarray:
    """Partial-volume blur: separable [1/4, 1/2, 1/4] kernel on the last three axes."""
    for axis in (-3, -2, -1):
        x = (1 - 2 * _BLUR) * x + _BLUR * (np.roll(x, 1, axis) + np.roll(x, -1, axis))
    return x


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation with the 6-neighbourhood (a voxel per iteration)."""
    out = mask.copy()
    for _ in range(int(iterations)):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[:, :, 1:] |= out[:, :, :-1]
        grown[:, :, :-1] |= out[:, :, 1:]
        out = grown
    return out


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    return ~_dilate(~mask, iterations)


# --------------------------------------------------------------------------------------------------
# one case: shared pieces (body, lesions, confounders, textures, rendering with acquisition)
# --------------------------------------------------------------------------------------------------
def _make_body(rng: np.random.Generator, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The body: a deformed ellipsoid. Returns ``(level, mask)`` (level < 0 inside)."""
    body_axes = np.array([0.88, 0.76, 0.92]) * rng.uniform(0.95, 1.05, 3)
    body_f = _ellipsoid_level(u, np.zeros(3, dtype=np.float32), body_axes, np.eye(3, dtype=np.float32))
    body_f += 0.05 * _smooth_field(rng, u, 0.5)
    return body_f, body_f < 0


def _lobed_level(
    rng: np.random.Generator, u: np.ndarray, ss: float, lobes=(2, 4), axes=(0.38, 0.55), spread=0.12, deform=0.12
) -> tuple[np.ndarray, np.ndarray]:
    """Union of ``lobes`` (``[min, max)``) rotated ellipsoids, boundary deformed by smooth noise.

    Returns ``(centre, level)``; the default organ and the ``lobed`` host.
    """
    centre = rng.uniform(-0.15, 0.15, 3)
    organ_f = np.full(u.shape[1:], np.inf, dtype=np.float32)
    for _ in range(int(rng.integers(*lobes))):
        c = centre + rng.normal(0.0, spread, 3) * ss
        np.minimum(organ_f, _ellipsoid_level(u, c, rng.uniform(*axes, 3) * ss, _rotation(rng)), out=organ_f)
    organ_f += deform * _smooth_field(rng, u, 0.45)
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
        c = _sample_point(rng, u, organ, centre)
        radius = rng.uniform(0.2, 0.28) * ss
        f = _ellipsoid_level(u, c, radius * rng.uniform(0.75, 1.3, 3), _rotation(rng))
        f += 0.12 * _smooth_field(rng, u, 0.25)
        lesions.append((f < 0) & body)
        rims.append(lesions[-1] & (f > -_RIM))  # ring enhancement: bright rim, near-organ core
        lesion_gain.append(rng.uniform(0.8, 1.2) * float(style["lesion_contrast"]))
    return lesions, rims, lesion_gain


def _make_vessels(rng: np.random.Generator, u: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Thin winding tubes through body and organ (lesion intensity)."""
    origin = np.zeros(3, dtype=np.float32)
    vessels = np.zeros(u.shape[1:], dtype=bool)
    for _ in range(int(rng.integers(4, 9))):
        p = _sample_point(rng, u, body, origin)
        d = rng.normal(size=3)
        pts = [p]
        for _ in range(6):
            d = d / np.linalg.norm(d) + rng.normal(0.0, 0.45, 3)
            d = d / np.linalg.norm(d)
            pts.append(pts[-1] + 0.22 * d)
        vessels |= _tube_mask(u, np.array(pts), rng.uniform(0.045, 0.07))
    return vessels & body


def _make_nodules_and_blobs(rng, u, body, body_f, organ_f, ss: float) -> tuple[list, list]:
    """Nodules (small bright spots anywhere in the body) and bowel blobs (away from the organ)."""
    origin = np.zeros(3, dtype=np.float32)
    away = body & (organ_f > 0.7) & (body_f < -0.15)
    nodules = []
    for _ in range(int(rng.integers(4, 9))):
        c = _sample_point(rng, u, body, origin)
        f = _ellipsoid_level(u, c, rng.uniform(0.05, 0.08) * rng.uniform(0.8, 1.2, 3), _rotation(rng))
        nodules.append((f < 0) & body)
    blobs = []
    for _ in range(int(rng.integers(2, 4))):
        c = _sample_point(rng, u, away, origin)
        f = _ellipsoid_level(u, c, rng.uniform(0.15, 0.24, 3) * ss, _rotation(rng))
        f += 0.2 * _smooth_field(rng, u, 0.25)
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


def _assemble(rng, u, style: dict, channels: int, *, body, body_f, organ, organ_f, centre, host=None, capsule=None):
    """Lesions, confounders, textures, rendering and acquisition around a given organ (or host).

    ``host`` None paints the default organ; a host spec (see :data:`_HOST_SPECS`) sets the
    organ's intensity relative to the body, its texture and its capsule (``capsule`` mask). Lesions
    keep the default organ-referenced intensities either way (same appearance in every host).
    """
    ss = float(style["structure_scale"])
    lesions, rims, lesion_gain = _make_lesions(rng, u, organ, body, centre, style)
    vessels = _make_vessels(rng, u, body)
    nodules, blobs = _make_nodules_and_blobs(rng, u, body, body_f, organ_f, ss)

    tex_wavelength, tex_modes, tex_amp = (0.12, 12, 0.02) if host is None else host["texture"]
    body_tex = _smooth_field(rng, u, 0.2)
    blob_tex = _smooth_field(rng, u, 0.15, n_modes=24)
    organ_tex = _smooth_field(rng, u, tex_wavelength, n_modes=tex_modes)
    organ_shift = rng.normal(0.0, 0.02)
    bias = np.exp(float(style["bias_strength"]) * _smooth_field(rng, u, 0.9, n_modes=6)).astype(np.float32)

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


def _make_case(rng: np.random.Generator, n: int, style: dict, channels: int) -> dict:
    """Generate one case of the default scenario in RAS voxel order.

    Returns:
        dict with ``image`` (C, n, n, n) float32, ``label`` (n, n, n) uint8 and ``structures``
        (boolean masks: ``organ``, lists ``lesions``, ``nodules``, ``blobs``).
    """
    u = _coords(n)
    body_f, body = _make_body(rng, u)
    # organ: union of 2-3 rotated ellipsoids, boundary deformed by smooth noise
    centre, organ_f = _lobed_level(rng, u, float(style["structure_scale"]))
    organ = (organ_f < 0) & body
    return _assemble(rng, u, style, channels, body=body, body_f=body_f, organ=organ, organ_f=organ_f, centre=centre)


# --------------------------------------------------------------------------------------------------
# the organs scenario: one host type per site
# --------------------------------------------------------------------------------------------------
def _host_lobed(rng, u, ss):
    """Large smooth liver-like organ: 3-4 big lobes, gently deformed."""
    centre, level = _lobed_level(rng, u, ss, lobes=(3, 5), axes=(0.45, 0.6), spread=0.14, deform=0.08)
    return centre, level, None


def _host_tube(rng, u, ss):
    """Elongated curved bean/tube (kidney- or colon-like): a thick tube along a circular arc."""
    centre = rng.uniform(-0.12, 0.12, 3)
    rot = _rotation(rng)
    bend = rng.uniform(0.7, 0.9) * ss  # radius of the arc
    angle = rng.uniform(0.55, 0.7) * math.pi
    theta = np.linspace(-angle / 2, angle / 2, 9)
    local = np.stack([bend * np.sin(theta), bend * (1.0 - np.cos(theta)), np.zeros_like(theta)], axis=1)
    local -= local.mean(0)
    pts = (centre + local @ rot.T).astype(np.float32)
    radius = rng.uniform(0.25, 0.29) * ss
    level = _polyline_distance(u, pts) / radius - 1.0
    level += 0.1 * _smooth_field(rng, u, 0.35)
    return centre, level, None


def _host_capsule(rng, u, ss):
    """Small compact round organ: a thick capsule around a core, both brighter than the body."""
    centre = rng.uniform(-0.2, 0.2, 3)
    radius = rng.uniform(0.34, 0.38) * ss
    level = _ellipsoid_level(u, centre, radius * rng.uniform(0.9, 1.1, 3), _rotation(rng))
    level += 0.04 * _smooth_field(rng, u, 0.5)
    return centre, level, level > -0.25  # the outer quarter of the radius


def _host_plate(rng, u, ss):
    """Flat plate-like organ (a thin wide ellipsoid of varying thickness), coarse mottled texture."""
    centre = rng.uniform(-0.12, 0.12, 3)
    axes = np.array([rng.uniform(0.75, 0.85), rng.uniform(0.65, 0.75), rng.uniform(0.17, 0.21)]) * ss
    level = _ellipsoid_level(u, centre, axes, _rotation(rng))
    level += 0.1 * _smooth_field(rng, u, 0.5)
    return centre, level, None


# contrast: host level = body + contrast * (organ - body) per channel (1: the default organ's level,
# 0: the body's, < 0: darker than the body); texture: (wavelength, modes, amplitude) of its pattern.
_HOST_SPECS = {
    "lobed": {"make": _host_lobed, "contrast": 1.0, "texture": (0.12, 12, 0.02)},
    "tube": {"make": _host_tube, "contrast": 0.5, "texture": (0.3, 12, 0.04)},
    "capsule": {"make": _host_capsule, "contrast": 1.3, "capsule_contrast": 2.0, "texture": (0.12, 12, 0.02)},
    "plate": {"make": _host_plate, "contrast": -0.6, "texture": (0.15, 24, 0.15)},
}

HOSTS = tuple(_HOST_SPECS)
"""Host types of the ``organs`` scenario; site ``i`` (1-based) gets ``HOSTS[(i - 1) % len(HOSTS)]``.

Measured at 40^3, neutral style, seed 0, 8 cases each: share of the volume labelled host, axis
ratios (square roots of the principal variances of the host voxels, largest/middle and
middle/smallest), channel-0 mean inside the host minus the body's:

* ``lobed``: large smooth liver-like organ (3-4 big lobes; 13 %, 1.2 / 1.1, +0.28), the default
  organ's intensity and fine faint texture.
* ``tube``: elongated curved bean/tube (kidney- or colon-like: a thick tube along an arc; 4 %,
  2.4 / 1.4, +0.12), a little brighter than the body, smooth wavy texture.
* ``capsule``: small compact round organ (1.7 %, 1.1 / 1.3, +0.44), a thick bright capsule (the
  outer quarter of the radius) around a bright core.
* ``plate``: flat plate-like organ (a thin wide ellipsoid; 5 %, 1.2 / 3.6, -0.16), darker than
  the body, coarse mottled texture (like the bowel blobs).
"""


def _generate(entropy: list[int], n: int, style: dict, channels: int, host: str | None) -> dict:
    """One case from the rng seeded with ``entropy``: the default organ (``host`` None) or a host type."""
    rng = np.random.default_rng(entropy)
    if host is None:
        return _make_case(rng, n, style, channels)
    return _make_host_case(rng, n, style, channels, host)


def _make_host_case(rng: np.random.Generator, n: int, style: dict, channels: int, host: str) -> dict:
    """Generate one case of the ``organs`` scenario: ``host`` (a :data:`HOSTS` type) as class 1.

    Body, lesions, confounders and acquisition are those of :func:`_make_case`; only the organ's
    shape, size, texture and intensity come from the host type (``structure_scale`` scales it).

    Returns:
        The same dict as :func:`_make_case`; ``structures["capsule"]`` is the capsule mask (or None).
    """
    spec = _HOST_SPECS[host]
    u = _coords(n)
    body_f, body = _make_body(rng, u)
    centre, host_f, capsule = spec["make"](rng, u, float(style["structure_scale"]))
    organ = (host_f < 0) & body
    if capsule is not None:
        capsule = capsule & organ
    case = _assemble(
        rng, u, style, channels, body=body, body_f=body_f, organ=organ, organ_f=host_f, centre=centre,
        host=spec, capsule=capsule,
    )  # fmt: skip
    case["structures"]["capsule"] = capsule
    return case


def corrupt_label(
    label: np.ndarray, kind: str, amount: float, *, structures: dict | None = None, seed: int = 0
) -> np.ndarray:
    """Return a corrupted copy of a label map (the input is not modified).

    Kinds (see :data:`CORRUPTION_KINDS`):

    * ``label_noise`` (amount = probability p): structure-level annotation errors. Each lesion is
      missed with probability p (relabelled as the organ where it lies in the organ, else
      background); each nodule (small bright spot) is annotated as a lesion and each bowel blob
      as organ with probability p (false-positive annotations). This needs ``structures`` (the generator's
      masks); without them, each lesion voxel is relabelled organ with probability p.
    * ``erode`` / ``dilate`` (amount = voxels, 0-32): systematic boundary error; the foreground and the
      lesion masks are eroded/dilated by that many 6-neighbourhood steps (an eroded lesion rim
      becomes organ; a dilated lesion grows over organ and background).
    * ``drop_class`` (amount = class id): that class is labelled background.
    * ``shift`` (amount = voxels, may be negative): the labels move by that many voxels along the
      first axis (x), zero-filled (a registration error).

    Args:
        label: (X, Y, Z) integer label map.
        kind: corruption kind.
        amount: kind-specific amount (see above).
        structures: generator masks ``organ``, ``lesions``, ``nodules``, ``blobs``. Defaults to None.
        seed: seed of the random choices of ``label_noise``. Defaults to 0.

    Returns:
        The corrupted label map, same shape and dtype.

    Raises:
        ConfigError: (field ``corrupt``) for an unknown kind or a bad amount.
    """
    _validate_corruption("corrupt", f"{kind}:{amount}", kind, float(amount))
    rng = np.random.default_rng(seed)
    out = label.copy()
    if kind == "label_noise":
        if structures is None:
            flip = (out == 2) & (rng.random(out.shape) < amount)
            out[flip] = 1
            return out
        organ = structures["organ"]
        for m in structures["lesions"]:
            if rng.random() < amount:
                out[m] = 0
                out[m & organ] = 1
        for m in structures["nodules"]:
            if rng.random() < amount:
                out[m] = 2
        for m in structures["blobs"]:
            if rng.random() < amount:
                out[m & (out == 0)] = 1
        return out
    if kind in ("erode", "dilate"):
        steps = int(amount)
        op = _erode if kind == "erode" else _dilate
        fg = op(label > 0, steps)
        les = op(label == 2, steps)
        out[:] = 0
        out[fg] = 1
        out[les] = 2
        return out
    if kind == "drop_class":
        out[out == int(amount)] = 0
        return out
    # shift
    k = int(amount)
    if k == 0:
        return out
    out[:] = 0
    if k > 0:
        out[k:] = label[:-k]
    else:
        out[:k] = label[-k:]
    return out


# --------------------------------------------------------------------------------------------------
# orientation and writing
# --------------------------------------------------------------------------------------------------
def _check_axcodes(axcodes, field: str = "axcodes") -> tuple[str, str, str]:
    pairs = ("LR", "PA", "IS")
    try:
        codes = tuple(str(c).upper() for c in axcodes)
    except TypeError:
        codes = ()
    axes = sorted(next((i for i, p in enumerate(pairs) if len(c) == 1 and c in p), -1) for c in codes)
    valid = len(codes) == 3 and axes == [0, 1, 2]
    if not valid:
        raise ConfigError(field, axcodes, "expected 3 axis codes, one of each pair L/R, P/A, I/S (e.g. RAS, LPS)")
    return codes


def _reorient(data: np.ndarray, affine: np.ndarray, axcodes) -> tuple[np.ndarray, np.ndarray]:
    """Re-express ``data`` (spatial axes first) in ``axcodes`` orientation, same world coordinates."""
    start = nio.io_orientation(affine)
    end = nio.axcodes2ornt(_check_axcodes(axcodes))
    transform = nio.ornt_transform(start, end)
    out = np.ascontiguousarray(nio.apply_orientation(data, transform))
    new_affine = affine @ nio.inv_ornt_aff(transform, data.shape[:3])
    return out, new_affine


def reorient_nifti(src, dst, axcodes) -> Path:
    """Rewrite one NIfTI file in another voxel orientation, preserving world coordinates.

    Voxel axes are flipped/permuted and the affine updated accordingly, so MONAI's
    ``Orientationd(axcodes="RAS")`` (or nibabel's ``as_closest_canonical``) gives back the same
    array as for the source.

    Args:
        src: source NIfTI path.
        dst: destination path (may equal ``src``); parent folders are created.
        axcodes: target orientation, e.g. ``"LPS"`` or ``("L", "P", "S")``.

    Returns:
        The destination path.

    Raises:
        ConfigError: (field ``axcodes``) for invalid axis codes.
    """
    codes = _check_axcodes(axcodes)
    img = nib.load(str(src))
    dtype = img.get_data_dtype()
    data = np.asanyarray(img.dataobj)
    if np.issubdtype(dtype, np.integer):
        data = np.rint(data).astype(dtype)
    out, affine = _reorient(data, img.affine, codes)
    new = nib.Nifti1Image(out, affine, header=img.header.copy())
    new.set_data_dtype(dtype)
    new.set_qform(affine, code=1)
    new.set_sform(affine, code=1)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    nib.save(new, str(dst))
    return Path(dst)


def _save(data: np.ndarray, affine: np.ndarray, path: Path, dtype):
    img = nib.Nifti1Image(data.astype(dtype, copy=False), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _ras_affine(n: int, spacing: tuple[float, float, float]) -> np.ndarray:
    sp = np.asarray(spacing, dtype=np.float64)
    affine = np.diag(np.append(sp, 1.0))
    affine[:3, 3] = -(n - 1) / 2.0 * sp + _ORIGIN_OFFSET
    return affine


def _write_case(
    folder: Path, stem: str, case: dict, label: np.ndarray, affine: np.ndarray, axcodes, kind: str = "voxel", annotated=(),
    split: str = "Tr",
) -> dict:
    """Write one case under ``folder/images{split}`` (and ``labels{split}`` or ``boxes{split}``)."""
    image = case["image"]
    data = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)  # MSD: channels last
    lab = label
    if tuple(axcodes) != ("R", "A", "S"):
        data, img_affine = _reorient(data, affine, axcodes)
        lab, _ = _reorient(label, affine, axcodes)
    else:
        img_affine = affine
    (folder / f"images{split}").mkdir(parents=True, exist_ok=True)
    img_path = folder / f"images{split}" / f"{stem}.nii.gz"
    _save(data, img_affine, img_path, np.float32)
    weak = weak_label_entry(kind, lab, img_affine, annotated)  # the true mask of a box/tag site is never written
    if "boxes" in weak:
        (folder / f"boxes{split}").mkdir(parents=True, exist_ok=True)
        box_path = folder / f"boxes{split}" / f"{stem}.json"
        box_path.write_text(json.dumps(weak["boxes"], indent=1) + "\n")
        return {"image": str(img_path), "boxes": str(box_path)}
    if "tags" in weak:
        return {"image": str(img_path), "tags": weak["tags"]}
    (folder / f"labels{split}").mkdir(parents=True, exist_ok=True)
    lab_path = folder / f"labels{split}" / f"{stem}.nii.gz"
    _save(weak["label"], img_affine, lab_path, np.uint8)
    return {"image": str(img_path), "label": str(lab_path)}


def _modality(channels: int) -> dict[str, str]:
    if channels == 1:
        return {"0": "MRI"}
    return {str(c): (_CHANNEL_NAMES[c] if c < len(_CHANNEL_NAMES) else f"MR{c}") for c in range(channels)}


def synthesize(
    out_dir,
    *,
    sites: int = 2,
    cases: int = 12,
    size: int = 48,
    seed: int = 0,
    channels: int = 1,
    test_cases: int = 8,
    val_fraction: float = 0.25,
    site_styles: dict[str, dict] | None = None,
    corrupt: list[tuple[str, str, float]] | None = None,
    orientation: dict[str, str] | None = None,
    progress: bool = False,
    spacing: float = 1.5,
    vary_sites: bool = True,
    label_kinds: dict | str | None = None,
    scenario: str = "default",
) -> dict:
    """Write synthetic sites ``out_dir/site-1 .. site-N`` and a clean test set ``out_dir/test``.

    Each folder holds ``imagesTr/`` and ``labelsTr/`` NIfTI files (float32 images, uint8 labels
    {0: background, 1: organ, 2: lesion}; affine with ``spacing`` mm voxels and a non-zero origin;
    multi-channel images as one 4D file, channels last, as in MSD) and an MSD ``dataset.json``.
    A site's cases are split into ``training`` and ``validation`` (``cases * val_fraction``
    validation cases, rounded half up, at least one training case). The test folder's ``dataset.json`` has an empty
    ``training`` list and lists its cases under both ``validation`` and ``test``, so that "evaluate
    the cases of a folder" and MSD-style test readers both find them.

    Site styles: every site starts from :data:`STYLE_DEFAULTS`; with ``vary_sites`` it gets a mild
    deterministic variation (ranges in :data:`SITE_VARIATION`, drawn from ``seed`` and the site
    index); keys in ``site_styles[site]`` override both. The test set uses the neutral defaults.
    Corruptions apply to all of a site's labels (training and validation: the site's annotators made
    them); images and the test set are never affected.

    Scenario ``organs`` (personalisation; see the module docstring): site ``i`` scans host organ
    ``HOSTS[(i - 1) % len(HOSTS)]`` (label 1 "organ" is the host, 2 the lesion; styles apply on top
    of the host type), and every site gets its own held-out test set instead of the shared one:
    ``test_cases`` cases in ``site-N/imagesTs`` and ``site-N/labelsTs``, listed (labelled) under
    the ``test`` split of the site's ``dataset.json`` and never under training or validation. They
    come from their own rng stream, show the site's host, style and orientation, and carry clean
    voxel labels (no corruption; box and tag sites get true masks here, for evaluation only, the way
    they may list voxel-labelled validation cases; a partial site keeps its annotated classes). No
    ``out_dir/test`` folder is written in this scenario.

    Args:
        out_dir: output folder (created).
        sites: number of sites, >= 1. Defaults to 2.
        cases: cases per site, >= 2 when ``val_fraction`` > 0. Defaults to 12.
        size: cube edge in voxels, >= 16. Defaults to 48.
        seed: base seed. Defaults to 0.
        channels: image channels, >= 1. Defaults to 1.
        test_cases: cases in the test set, >= 0 (0: no test folder). Defaults to 8.
        val_fraction: share of a site's cases used for validation, in [0, 1). Defaults to 0.25.
        site_styles: site name -> style overrides (keys of :data:`STYLE_DEFAULTS`). Defaults to None.
        corrupt: ``(site, kind, amount)`` label corruptions (see :func:`corrupt_label`; a
            ``"SITE:KIND:AMOUNT"`` string is parsed with :func:`parse_corrupt`), applied in order.
            Defaults to None.
        orientation: site name -> axis codes of the stored volumes (e.g. ``{"site-2": "LPS"}``;
            default RAS). Data and affine are both changed, so reorienting to RAS gives the same
            arrays. Defaults to None.
        progress: show a tqdm progress bar. Defaults to False.
        spacing: voxel size in mm (isotropic). Defaults to 1.5.
        vary_sites: apply the mild default per-site variation. Defaults to True.
        label_kinds: site -> ``(kind, annotated class ids)`` or the string form of
            :func:`parse_label_kinds` (``"site-2:box,site-3:tag,site-4:partial:1"``): the site keeps
            only weaker labels derived from its true masks (boxes as world-coordinate JSON sidecars,
            tags in ``dataset.json``, partial label maps), in training and validation alike; its
            true masks are never written. Defaults to None (every site voxel).
        scenario: one of :data:`SCENARIOS`: ``"default"`` (one organ type, a shared test set) or
            ``"organs"`` (a host type per site, per-site test sets, no shared test set).
            Defaults to ``"default"``.

    Returns:
        Summary: ``{"root", "scenario", "labels", "channels", "size", "spacing", "seed", "sites":
        {site: {"dir", "host", "n_training", "n_validation", "n_test", "style", "corruptions",
        "orientation", "label_kind"}}, "test": {"dir", "n_cases"} or None}``. ``host`` is the
        site's :data:`HOSTS` type (None in the default scenario), ``n_test`` its own test cases (0 in
        the default scenario); ``test`` is None in the organs scenario.

    Raises:
        ConfigError: naming the bad argument (unknown ``scenario``, unknown site in ``site_styles``/
            ``corrupt``/``orientation``, bad style key or value, bad corruption, bad axis codes, bad sizes).
    """
    if not isinstance(scenario, str) or scenario not in SCENARIOS:
        raise ConfigError("scenario", scenario, "unknown scenario", options=SCENARIOS)
    organs = scenario == "organs"
    if int(sites) < 1:
        raise ConfigError("sites", sites, "must be >= 1")
    if int(size) < 16:
        raise ConfigError("size", size, "must be >= 16")
    if int(channels) < 1:
        raise ConfigError("channels", channels, "must be >= 1")
    if int(test_cases) < 0:
        raise ConfigError("test_cases", test_cases, "must be >= 0")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError("val_fraction", val_fraction, "must be in [0, 1)")
    n_val = int(math.floor(int(cases) * float(val_fraction) + 0.5))
    if int(cases) - n_val < 1:
        raise ConfigError(
            "cases", cases, f"too few cases: need at least one training case after {n_val} validation case(s)"
        )
    if not float(spacing) > 0:
        raise ConfigError("spacing", spacing, "must be > 0")
    site_names = [f"site-{i}" for i in range(1, int(sites) + 1)]
    for arg_name, mapping in (("site_styles", site_styles), ("orientation", orientation)):
        for key in mapping or {}:
            if key not in site_names:
                raise ConfigError(arg_name, key, "unknown site", options=site_names)
    corruptions: dict[str, list[tuple[str, float]]] = {s: [] for s in site_names}
    for item in corrupt or []:
        if isinstance(item, str):
            item = parse_corrupt(item)
        try:
            site, kind, amount = item
            amount = float(amount)
        except (TypeError, ValueError):
            raise ConfigError("corrupt", item, "expected (site, kind, amount)", options=CORRUPTION_KINDS) from None
        if site not in site_names:
            raise ConfigError("corrupt", item, f"unknown site {site!r}", options=site_names)
        _validate_corruption("corrupt", item, kind, amount)
        corruptions[site].append((kind, amount))
    axcodes = {s: _check_axcodes((orientation or {}).get(s, "RAS"), "orientation") for s in site_names}
    kinds = parse_label_kinds(label_kinds) if isinstance(label_kinds, str) else dict(label_kinds or {})
    for site in kinds:
        if site not in site_names:
            raise ConfigError("label_kinds", site, "unknown site", options=site_names)
    kinds = {s: tuple(kinds.get(s, ("voxel", ()))) for s in site_names}
    styles = {
        s: site_style(i, seed, (site_styles or {}).get(s), vary=vary_sites) for i, s in enumerate(site_names, start=1)
    }

    root = Path(out_dir).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    n = int(size)
    affine = _ras_affine(n, (float(spacing),) * 3)
    modality = _modality(int(channels))
    total = int(sites) * int(cases) + int(test_cases) * (int(sites) if organs else 1)

    from tqdm.auto import tqdm  # local import: only needed here

    summary = {
        "root": str(root),
        "scenario": scenario,
        "labels": dict(LABELS),
        "channels": int(channels),
        "size": n,
        "spacing": float(spacing),
        "seed": int(seed),
        "sites": {},
        "test": None,
    }
    with tqdm(total=total, desc="synthesize", unit="case", disable=not progress) as bar:
        for group, site in enumerate(site_names, start=1):
            folder = root / site
            host = HOSTS[(group - 1) % len(HOSTS)] if organs else None
            written = []
            for i in range(int(cases)):
                case = _generate([int(seed), group, i], n, styles[site], int(channels), host)
                label = case["label"]
                for j, (kind, amount) in enumerate(corruptions[site]):
                    stream = np.random.SeedSequence([int(seed), group, i, 1000 + j]).generate_state(1)[0]
                    label = corrupt_label(label, kind, amount, structures=case["structures"], seed=int(stream))
                written.append(_write_case(folder, f"{site}_{i:03d}", case, label, affine, axcodes[site], *kinds[site]))
                bar.update(1)
            train, val = written[: len(written) - n_val], written[len(written) - n_val :]
            # the site's own held-out cases: clean labels, voxel masks (a partial site's annotated classes)
            test_kind = kinds[site] if kinds[site][0] == "partial" else ("voxel", ())
            tests = []
            for i in range(int(test_cases) if organs else 0):
                case = _generate([int(seed), group, _SITE_TEST_STREAM, i], n, styles[site], int(channels), host)
                stem = f"{site}_test_{i:03d}"
                tests.append(_write_case(folder, stem, case, case["label"], affine, axcodes[site], *test_kind, split="Ts"))
                bar.update(1)
            write_datalist(
                folder,
                labels=LABELS,
                modality=modality,
                training=train,
                validation=val,
                test=tests,
                name=f"FedSegNet synthetic {site}" + (f" ({host} host)" if host else ""),
                label_kind=kinds[site][0],
                annotated_classes=[LABELS[c] for c in kinds[site][1]],
            )
            summary["sites"][site] = {
                "dir": str(folder),
                "host": host,
                "n_training": len(train),
                "n_validation": len(val),
                "n_test": len(tests),
                "style": styles[site],
                "corruptions": [list(c) for c in corruptions[site]],
                "orientation": "".join(axcodes[site]),
                "label_kind": kinds[site][0] + (":" + "+".join(LABELS[c] for c in kinds[site][1]) if kinds[site][1] else ""),
            }
            logger.info(
                "synthesized %s%s: %d training + %d validation + %d test cases, style %s",
                site, f" ({host} host)" if host else "", len(train), len(val), len(tests), styles[site],
            )  # fmt: skip
        if int(test_cases) > 0 and not organs:
            folder = root / "test"
            neutral = site_style(_TEST_GROUP, seed, vary=False)
            written = []
            for i in range(int(test_cases)):
                case = _make_case(np.random.default_rng([int(seed), _TEST_GROUP, i]), n, neutral, int(channels))
                written.append(_write_case(folder, f"test_{i:03d}", case, case["label"], affine, ("R", "A", "S")))
                bar.update(1)
            write_datalist(
                folder,
                labels=LABELS,
                modality=modality,
                training=[],
                validation=written,
                test=written,
                name="FedSegNet synthetic test set",
            )
            summary["test"] = {"dir": str(folder), "n_cases": len(written)}
    return summary
