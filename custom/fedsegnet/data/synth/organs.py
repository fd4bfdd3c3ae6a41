"""Host organs of the ``organs`` scenario (personalised FL, FedOAP): a different organ per site.

Site ``i`` gets host type ``HOSTS[(i - 1) % len(HOSTS)]`` (:data:`HOSTS`: a large lobed liver-like
organ, a curved tube, a small round organ with a bright capsule, a dark flat plate with a mottled
texture) in place of the default organ, still labelled 1 ("organ"): hosts differ in shape, size,
texture and intensity relative to the body (brighter or darker than it), chosen so that a model
trained on one host segments another badly (a design goal; no training measured yet). Shared
across sites: the body, the lesions (class 2: the same generator, size range and rim/core
intensities, centred on host voxels), the confounders (vessels, nodules, blobs) and the acquisition
model of :mod:`fedsegnet.data.synth.phantom`; site styles apply on top of the host type.

A host maker takes ``(rng, u, structure_scale)`` and returns ``(centre, level, capsule)``: the
host's centre (3,), its (X, Y, Z) level (< 0 inside) and a capsule mask or None.
"""

from __future__ import annotations

import math

import numpy as np

from fedsegnet.data.synth.geometry import coords, ellipsoid_level, polyline_distance, rotation, smooth_field
from fedsegnet.data.synth.phantom import assemble, lobed_level, make_body

__all__ = ["HOSTS", "HOST_SPECS", "make_host_case"]


def _host_lobed(rng, u, ss):
    """Large smooth liver-like organ: 3-4 big lobes, gently deformed."""
    centre, level = lobed_level(rng, u, ss, lobes=(3, 5), axes=(0.45, 0.6), spread=0.14, deform=0.08)
    return centre, level, None


def _host_tube(rng, u, ss):
    """Elongated curved bean/tube (kidney- or colon-like): a thick tube along a circular arc."""
    centre = rng.uniform(-0.12, 0.12, 3)
    rot = rotation(rng)
    bend = rng.uniform(0.7, 0.9) * ss  # radius of the arc
    angle = rng.uniform(0.55, 0.7) * math.pi
    theta = np.linspace(-angle / 2, angle / 2, 9)
    local = np.stack([bend * np.sin(theta), bend * (1.0 - np.cos(theta)), np.zeros_like(theta)], axis=1)
    local -= local.mean(0)
    pts = (centre + local @ rot.T).astype(np.float32)
    radius = rng.uniform(0.25, 0.29) * ss
    level = polyline_distance(u, pts) / radius - 1.0
    level += 0.1 * smooth_field(rng, u, 0.35)
    return centre, level, None


def _host_capsule(rng, u, ss):
    """Small compact round organ: a thick capsule around a core, both brighter than the body."""
    centre = rng.uniform(-0.2, 0.2, 3)
    radius = rng.uniform(0.34, 0.38) * ss
    level = ellipsoid_level(u, centre, radius * rng.uniform(0.9, 1.1, 3), rotation(rng))
    level += 0.04 * smooth_field(rng, u, 0.5)
    return centre, level, level > -0.25  # the outer quarter of the radius


def _host_plate(rng, u, ss):
    """Flat plate-like organ (a thin wide ellipsoid of varying thickness), coarse mottled texture."""
    centre = rng.uniform(-0.12, 0.12, 3)
    axes = np.array([rng.uniform(0.75, 0.85), rng.uniform(0.65, 0.75), rng.uniform(0.17, 0.21)]) * ss
    level = ellipsoid_level(u, centre, axes, rotation(rng))
    level += 0.1 * smooth_field(rng, u, 0.5)
    return centre, level, None


HOST_SPECS = {
    "lobed": {"make": _host_lobed, "contrast": 1.0, "texture": (0.12, 12, 0.02)},
    "tube": {"make": _host_tube, "contrast": 0.5, "texture": (0.3, 12, 0.04)},
    "capsule": {"make": _host_capsule, "contrast": 1.3, "capsule_contrast": 2.0, "texture": (0.12, 12, 0.02)},
    "plate": {"make": _host_plate, "contrast": -0.6, "texture": (0.15, 24, 0.15)},
}
"""Host type -> spec: ``make`` (the host maker), ``contrast`` (host level = body + contrast *
(organ - body) per channel; 1: the default organ's level, 0: the body's, < 0: darker than the body),
``texture`` ((wavelength, modes, amplitude) of its pattern) and, for a capsule, ``capsule_contrast``."""

HOSTS = tuple(HOST_SPECS)
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


def make_host_case(rng: np.random.Generator, n: int, style: dict, channels: int, host: str) -> dict:
    """Generate one case of the ``organs`` scenario: ``host`` (a :data:`HOSTS` type) as class 1.

    Body, lesions, confounders and acquisition are those of
    :func:`~fedsegnet.data.synth.phantom.make_case`; only the organ's shape, size, texture and
    intensity come from the host type (``structure_scale`` scales it).

    Args:
        rng: the case's generator (advanced here).
        n: cube edge in voxels.
        style: a site style (:func:`~fedsegnet.data.synth.styles.site_style`).
        channels: image channels, >= 1.
        host: one of :data:`HOSTS`.

    Returns:
        The same dict as :func:`~fedsegnet.data.synth.phantom.make_case`; ``structures["capsule"]``
        is the capsule mask (or None).
    """
    spec = HOST_SPECS[host]
    u = coords(n)
    body_f, body = make_body(rng, u)
    centre, host_f, capsule = spec["make"](rng, u, float(style["structure_scale"]))
    organ = (host_f < 0) & body
    if capsule is not None:
        capsule = capsule & organ
    case = assemble(
        rng, u, style, channels, body=body, body_f=body_f, organ=organ, organ_f=host_f, centre=centre,
        host=spec, capsule=capsule,
    )  # fmt: skip
    case["structures"]["capsule"] = capsule
    return case
