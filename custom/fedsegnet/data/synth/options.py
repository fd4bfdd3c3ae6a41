"""Parsers of the synthetic data's command-line specs: site styles, label corruptions, label kinds.

Each parser turns one ``SITE:...`` string of ``fedsegnet data synth`` into the value
:func:`~fedsegnet.data.synth.synthesize` takes, and names the spec and the valid options when it
is malformed.
"""

from __future__ import annotations

from fedsegnet.data.datalist import LABEL_KINDS
from fedsegnet.data.synth.corrupt import CORRUPTION_KINDS, validate_corruption
from fedsegnet.data.synth.phantom import LABELS
from fedsegnet.data.synth.styles import STYLE_DEFAULTS, style_keys, validate_style_value
from fedsegnet.data.weak import class_value
from fedsegnet.errors import ConfigError

__all__ = ["parse_corrupt", "parse_label_kinds", "parse_site_style"]


def _check_site_name(field: str, spec: str, site: str):
    """Refuse an empty site name in ``spec`` (field ``field``)."""
    if not site:
        raise ConfigError(field, spec, "site name is empty")


def parse_label_kinds(spec: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Parse ``"site-2:box,site-3:tag,site-4:partial:1"`` into ``{site: (kind, annotated class ids)}``.

    ``partial`` takes the annotated class ids of :data:`LABELS` joined by ``+`` (``partial:1+2``) or
    their names (``partial:organ``).

    Args:
        spec: comma-separated ``SITE:KIND`` or ``SITE:partial:CLASSES`` entries; ``KIND`` one of
            :data:`~fedsegnet.data.datalist.LABEL_KINDS`. Empty entries are skipped.

    Returns:
        ``{site: (kind, annotated class ids)}``; the ids are sorted and empty unless ``partial``.

    Raises:
        ConfigError: (field ``label_kind``) for a malformed entry, an unknown kind or class.
    """
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
            "site_style", spec, "expected SITE:KEY:VALUE, e.g. site-2:intensity_scale:1.3", options=style_keys()
        )
    site, key, value = (s.strip() for s in spec.split(":"))
    _check_site_name("site_style", spec, site)
    if key not in STYLE_DEFAULTS:
        raise ConfigError("site_style", spec, f"unknown style key {key!r}", options=style_keys())
    try:
        number = float(value)
    except ValueError:
        raise ConfigError("site_style", spec, f"value {value!r} is not a number") from None
    validate_style_value("site_style", spec, key, number)
    return site, key, number


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
    validate_corruption("corrupt", spec, kind, value)
    return site, kind, value
