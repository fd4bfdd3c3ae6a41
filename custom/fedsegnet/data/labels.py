"""Label maps: from the label values in a site's files to the classes the federation's model predicts.

Sites of one federation rarely number their classes alike. BraTS 2020/2021 stores necrotic
core 1, edema 2 and enhancing tumour 4; the Medical Segmentation Decathlon's Task01_BrainTumour
stores edema 1, non-enhancing tumour 2 and enhancing tumour 3; BraTS 2023 stores 1, 2, 3 in the
BraTS order. A dataset preset (:data:`fedsegnet.config.PRESETS`, e.g. ``brats``) therefore names
its classes, each with a pattern over the names a ``dataset.json`` gives its labels, and every site
maps its own values onto the preset's class ids by name (``MapLabelValued`` in the transforms).
Without named classes (generic presets) a site's label values, sorted, become class ids
``0 .. n-1`` (so BraTS's ``0, 1, 2, 4`` become ``0, 1, 2, 3``).

A preset's *regions* are unions of classes scored like classes: BraTS's whole tumour (all tumour
classes), tumour core (necrotic core + enhancing) and enhancing tumour; LiTS's liver (liver +
tumour) and tumour.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedsegnet.errors import ConfigError, DataError

__all__ = ["LabelMap", "label_map_for", "preset_label_map", "region_ids"]


@dataclass(frozen=True)
class LabelMap:
    """How a site's label values become model class ids.

    Args:
        source_values: label values found in the site's files, one per class (0 first).
        class_ids: the model class id of each source value (same order).
        class_names: model class names, index = class id (0 = background).
        regions: region name -> class ids it unites (empty when the preset defines none).
        source_names: the site's own label names, label value -> name (what its box files and tags
            name). Defaults to {} (the class names of ``class_ids``).
    """

    source_values: tuple[int, ...]
    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    source_names: dict[int, str] = field(default_factory=dict)

    @property
    def labels(self) -> dict[int, str]:
        """The site's labels, label value -> name."""
        return dict(self.source_names) or {v: self.class_names[c] for v, c in zip(self.source_values, self.class_ids)}

    @property
    def class_of(self) -> dict[int, int]:
        """Label value -> model class id."""
        return dict(zip(self.source_values, self.class_ids))

    def to_class_ids(self, values: np.ndarray) -> np.ndarray:
        """A label array of the site's values as model class ids (values not declared become 0)."""
        lut = np.zeros(max(self.source_values) + 1, dtype=np.int64)
        lut[list(self.source_values)] = self.class_ids
        values = np.asarray(values).astype(np.int64)
        return np.where((values >= 0) & (values < len(lut)), lut[np.clip(values, 0, len(lut) - 1)], 0)

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.class_names)

    @property
    def is_identity(self) -> bool:
        """True when the files already hold the class ids (no mapping needed)."""
        return self.source_values == self.class_ids

    def transform(self, key: str = "label"):
        """A MONAI ``MapLabelValued`` doing the mapping, or None when it is the identity."""
        if self.is_identity:
            return None
        from monai.transforms import MapLabelValued

        return MapLabelValued(keys=key, orig_labels=list(self.source_values), target_labels=list(self.class_ids),
                              allow_missing_keys=True)  # fmt: skip


def _matches(pattern: str, name: str) -> bool:
    return re.search(pattern, name.lower().replace("-", " ")) is not None


def region_ids(regions: Mapping[str, Sequence[str]], class_names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Resolve ``{region: [class name, ...]}`` into ``{region: (class id, ...)}``.

    Raises:
        ConfigError: naming ``regions`` when a region names an unknown class.
    """
    out = {}
    for region, members in regions.items():
        ids = []
        for member in members:
            if member not in class_names:
                raise ConfigError("regions", dict(regions), f"region {region!r} names class {member!r}",
                                  options=list(class_names[1:]))  # fmt: skip
            ids.append(list(class_names).index(member))
        out[str(region)] = tuple(sorted(ids))
    return out


def preset_label_map(preset) -> LabelMap | None:
    """The label map of a preset that names its classes (source values = class ids), else None."""
    if not preset.classes:
        return None
    names = ("background",) + tuple(name for name, _ in preset.classes)
    ids = tuple(range(len(names)))
    return LabelMap(ids, ids, names, region_ids(preset.regions, names))


def label_map_for(labels: Mapping[int, str], preset, *, where: str | Path = "dataset.json", site: str = "site") -> LabelMap:
    """Map a site's declared labels onto the preset's classes.

    With a preset that names its classes (``preset.classes``: ``(name, pattern)`` pairs), each
    foreground label of the site must match exactly one class pattern (case-insensitive search in
    the label name, ``-`` read as a space), and every class must be matched by exactly one label.
    Otherwise the sorted label values become class ids ``0 .. n-1``.

    Args:
        labels: the site's ``dataset.json`` labels, value -> name (0 = background).
        preset: the run's :class:`~fedsegnet.config.Preset`.
        where: the ``dataset.json`` path, for messages. Defaults to ``"dataset.json"``.
        site: site name, for messages. Defaults to ``"site"``.

    Returns:
        The :class:`LabelMap`.

    Raises:
        DataError: naming ``where`` and the field ``labels``, listing every label that matches no
            class or several, and every class no label matches.
    """
    values = sorted(int(v) for v in labels)
    if not preset.classes:
        names = tuple(str(labels[v]) for v in values)
        return LabelMap(tuple(values), tuple(range(len(values))), names, {}, dict(labels))
    base = preset_label_map(preset)
    problems = []
    if 0 not in labels:
        problems.append(f"{where}: field 'labels' has no background value 0")
    target: dict[int, int] = {0: 0}
    matched_by: dict[int, list[str]] = {i: [] for i in range(1, base.num_classes)}
    for value in values:
        if value == 0:
            continue
        name = str(labels[value])
        hits = [i for i, (_, pattern) in enumerate(preset.classes, start=1) if _matches(pattern, name)]
        if len(hits) != 1:
            what = "matches none" if not hits else f"matches several ({', '.join(base.class_names[i] for i in hits)})"
            problems.append(
                f"{where}: field 'labels' value {value} ({name!r}) {what} of preset {preset.name!r}'s classes "
                f"{list(base.class_names[1:])}; rename it in dataset.json"
            )
            continue
        target[value] = hits[0]
        matched_by[hits[0]].append(f"{value} ({name!r})")
    for cls, by in matched_by.items():
        if len(by) > 1:
            problems.append(f"{where}: field 'labels' values {', '.join(by)} all match class {base.class_names[cls]!r}")
        elif not by:
            problems.append(
                f"{where}: field 'labels' has no label for preset {preset.name!r}'s class {base.class_names[cls]!r} "
                f"(labels: {dict(labels)})"
            )
    if problems:
        raise DataError(site, problems)
    return LabelMap(tuple(values), tuple(target[v] for v in values), base.class_names, base.regions, dict(labels))
