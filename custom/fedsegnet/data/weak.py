"""Weaker labels than voxel masks: 3D bounding boxes, image-level tags and partial label sets.

A site declares its label kind in ``dataset.json`` (``"label_kind"``); the cases then carry:

- ``voxel``: ``{"image", "label"}``: a label map of every declared class.
- ``partial``: ``{"image", "label"}`` plus, at the top level, ``"annotated_classes"``: the classes
  (names or label values) the site annotates. Every other voxel is 0: background *or* a class the
  site does not annotate (one hospital draws the liver only, another only the tumour).
- ``box``: ``{"image", "boxes": "boxesTr/<case>.json"}``, a sidecar file per case::

      {"coordinates": "voxel",          # or "world"
       "boxes": [{"class": "lesion", "min": [12, 30, 8], "max": [20, 41, 15]}, ...]}

  ``class`` is a class name or label value of ``labels``. With ``"voxel"`` coordinates, ``min`` and
  ``max`` are indices into the stored image array (as nibabel reads it, whatever its orientation):
  ``min`` is the first voxel inside, ``max`` one past the last (Python slice convention), so
  ``max - min`` is the size in voxels. With ``"world"`` coordinates they are two opposite corners in
  millimetres in nibabel's RAS+ world (``min <= max`` per axis); a voxel is inside when its centre
  is. World boxes stay correct whatever axes the image is stored in (RAS, LPS, oblique).
- ``tag``: ``{"image", "tags": ["lesion", ...]}``: the classes present in the case (names or label
  values; ``[]`` = nothing but background). Absent classes are known to be absent everywhere.

Training turns boxes into one binary channel per foreground class (``(C - 1, X, Y, Z)``, 1 inside a
box of that class) on the stored grid, before reorientation and resampling, so that every spatial
transform moves boxes exactly as it moves the image; tags become a ``(C - 1,)`` presence vector.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fedsegnet.errors import ConfigError

__all__ = ["COORDINATES", "read_boxes", "box_voxel_ranges", "box_masks", "tag_vector", "class_value"]

COORDINATES = ("voxel", "world")


def class_value(value, labels: Mapping[int, str]) -> int | None:
    """The label value a box/tag/annotated-class entry names (a declared name or value), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)) and int(value) in labels:
        return int(value)
    if isinstance(value, str):
        for v, name in labels.items():
            if name == value:
                return int(v)
        if value.strip().isdigit() and int(value) in labels:
            return int(value)
    return None


def read_boxes(path: str | Path, labels: Mapping[int, str]) -> tuple[str, list[dict], list[str]]:
    """Read a box sidecar file.

    Args:
        path: the JSON file.
        labels: the site's labels (value -> name), to resolve each box's class.

    Returns:
        ``(coordinates, boxes, problems)``: ``boxes`` as ``{"value": label value, "min": [3 floats],
        "max": [3 floats]}`` (only the well-formed ones); ``problems`` one line per fault, each
        naming ``boxes[i]`` and the field (an unreadable file gives one problem and no boxes).
    """
    problems: list[str] = []
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "voxel", [], ["file not found"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return "voxel", [], [f"cannot read as JSON: {e}"]
    if not isinstance(spec, dict) or not isinstance(spec.get("boxes"), list):
        return "voxel", [], ["expected an object with a 'boxes' list"]
    coordinates = spec.get("coordinates", "voxel")
    if coordinates not in COORDINATES:
        problems.append(f"'coordinates' is {coordinates!r}, valid: {', '.join(COORDINATES)}")
        coordinates = "voxel"
    boxes = []
    for i, box in enumerate(spec["boxes"]):
        where = f"boxes[{i}]"
        if not isinstance(box, dict):
            problems.append(f"{where}: expected an object with 'class', 'min', 'max'")
            continue
        value = class_value(box.get("class"), labels)
        if value is None or value == 0:
            problems.append(f"{where}.class: {box.get('class')!r} is not a declared foreground class {dict(labels)}")
            continue
        corners = []
        for key in ("min", "max"):
            c = box.get(key)
            ok = isinstance(c, list) and len(c) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in c)
            if not ok:
                problems.append(f"{where}.{key}: expected 3 numbers, got {c!r}")
            corners.append(c if ok else None)
        if None in corners:
            continue
        lo, hi = (np.asarray(c, dtype=np.float64) for c in corners)
        if not np.all(hi > lo):
            problems.append(f"{where}: corners not ordered: min {corners[0]} must be < max {corners[1]} on every axis")
            continue
        boxes.append({"value": value, "min": lo.tolist(), "max": hi.tolist()})
    return coordinates, boxes, problems


def box_voxel_ranges(box: Mapping, coordinates: str, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The voxel index range ``[lo, hi)`` a box covers on the stored grid (before clipping).

    Voxel boxes are taken as they are; world boxes go through the inverse affine (all 8 corners),
    and the range holds every voxel whose centre can lie inside.
    """
    lo, hi = np.asarray(box["min"], dtype=np.float64), np.asarray(box["max"], dtype=np.float64)
    if coordinates == "voxel":
        return np.floor(lo + 1e-6).astype(int), np.ceil(hi - 1e-6).astype(int)
    if coordinates != "world":
        raise ConfigError("coordinates", coordinates, "unknown box coordinates", options=COORDINATES)
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    vox = (inv @ corners.T)[:3]
    return np.ceil(vox.min(axis=1) - 1e-6).astype(int), np.floor(vox.max(axis=1) + 1e-6).astype(int) + 1


def box_masks(
    boxes: Sequence[Mapping],
    coordinates: str,
    shape: Sequence[int],
    affine: np.ndarray,
    class_of_value: Mapping[int, int],
    num_classes: int,
    core: float = 0.0,
) -> np.ndarray:
    """Rasterise boxes into one binary channel per foreground class on the stored grid.

    Args:
        boxes: from :func:`read_boxes`.
        coordinates: ``voxel`` or ``world``.
        shape: the image's 3 spatial sizes.
        affine: the image's voxel -> world (RAS mm) affine.
        class_of_value: label value -> model class id (the site's label map).
        num_classes: classes including background.
        core: with ``core`` in (0, 1], also rasterise each box's *core*, the box shrunk about its
            centre to ``core`` of its extent on every axis (0.5: the central half, which lies
            inside the ellipsoid inscribed in the box), as ``num_classes - 1`` more channels.
            Defaults to 0.0 (boxes only).

    Returns:
        ``(num_classes - 1, X, Y, Z)`` uint8 (``2 * (num_classes - 1)`` channels with ``core``);
        channel ``c - 1`` is 1 inside any box of class ``c``, channel ``num_classes - 2 + c``
        inside its core. Parts of a box outside the volume are dropped.
    """
    if not 0.0 <= float(core) <= 1.0:
        raise ConfigError("core", core, "must be in [0, 1]")
    if core > 0:
        shrunk = []
        for box in boxes:
            lo, hi = np.asarray(box["min"], dtype=np.float64), np.asarray(box["max"], dtype=np.float64)
            centre, half = (lo + hi) / 2, (hi - lo) / 2 * float(core)
            if coordinates == "voxel":  # keep at least the centre voxel
                half = np.maximum(half, 0.5)
            shrunk.append({**box, "min": (centre - half).tolist(), "max": (centre + half).tolist()})
        cores = box_masks(shrunk, coordinates, shape, affine, class_of_value, num_classes)
        return np.concatenate([box_masks(boxes, coordinates, shape, affine, class_of_value, num_classes), cores])
    shape = tuple(int(s) for s in shape)
    out = np.zeros((int(num_classes) - 1, *shape), dtype=np.uint8)
    affine = np.asarray(affine, dtype=np.float64)
    for box in boxes:
        cls = int(class_of_value[int(box["value"])])
        lo, hi = box_voxel_ranges(box, coordinates, affine)
        lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
        if np.any(hi <= lo):
            continue
        if coordinates == "voxel":
            out[cls - 1, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
            continue
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
        world = grid @ affine[:3, :3].T + affine[:3, 3]
        inside = np.all((world >= np.asarray(box["min"]) - 1e-4) & (world <= np.asarray(box["max"]) + 1e-4), axis=-1)
        region = out[cls - 1, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        region[inside] = 1
    return out


def tag_vector(tags: Sequence, labels: Mapping[int, str], class_of_value: Mapping[int, int], num_classes: int) -> np.ndarray:
    """``(num_classes - 1,)`` float32 presence vector of a case's tags (names or label values).

    Raises:
        ConfigError: naming ``tags`` when an entry is not a declared foreground class.
    """
    out = np.zeros(int(num_classes) - 1, dtype=np.float32)
    for tag in tags:
        value = class_value(tag, labels)
        if value is None or value == 0:
            raise ConfigError("tags", list(tags), f"{tag!r} is not a declared foreground class", options=list(labels.values())[1:])
        out[int(class_of_value[value]) - 1] = 1.0
    return out
