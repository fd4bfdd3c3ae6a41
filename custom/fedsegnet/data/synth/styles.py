"""Site styles of the synthetic data: scanner, noise, bias field, structure size and lesion load.

Non-IID sites (FedMix, Wicaksana et al. 2022; FedOAP; the FL-for-segmentation review) differ in how
their scanners render the same anatomy and in what their patients show. A style is a dict with every
key of :data:`STYLE_DEFAULTS`; :func:`site_style` builds one site's: the neutral defaults, a mild
deterministic variation (:data:`SITE_VARIATION`), then explicit overrides.
"""

from __future__ import annotations

import math

import numpy as np

from fedsegnet.errors import ConfigError

__all__ = ["SITE_VARIATION", "STYLE_DEFAULTS", "site_style", "style_keys", "validate_style_value"]

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


def style_keys() -> tuple[str, ...]:
    """The style keys, in the order of :data:`STYLE_DEFAULTS` (the options an error lists)."""
    return tuple(STYLE_DEFAULTS)


def validate_style_value(field: str, spec, key: str, value) -> None:
    """Check one style value.

    Args:
        field: the argument name an error names.
        spec: the value an error shows (the spec string or the override it came from).
        key: a key of :data:`STYLE_DEFAULTS`.
        value: the value; ``lesion_count`` takes a whole number >= 0 or a ``(min, max)`` range.

    Raises:
        ConfigError: (field ``field``) for a value outside the key's range.
    """
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
            raise ConfigError("site_styles", key, "unknown style key", options=style_keys())
        validate_style_value("site_styles", {key: value}, key, value)
        style[key] = value
    count = style["lesion_count"]
    lo, hi = (count, count) if not isinstance(count, (tuple, list)) else count
    style["lesion_count"] = (int(lo), int(hi))
    return style
