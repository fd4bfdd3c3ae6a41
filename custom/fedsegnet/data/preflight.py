"""Preflight: check a site's files before training, report every problem at once.

Following nnU-Net's dataset integrity check, every case of the requested splits is opened and
checked; all failures of the site are collected into ONE :class:`~fedsegnet.errors.DataError`
whose lines each name the file (relative to the site folder) and what is wrong, e.g.
``labelsTr/case_003.nii.gz (training[3] label): label values {7} not in declared classes [0, 1, 2]``.

Checks per case: every file exists and reads as NIfTI; image and label spatial shapes agree; their
affines agree (within ``affine_tol`` mm); the image has ``len(modality)`` channels and no NaN/Inf;
label values are whole numbers within the declared classes (for a ``partial`` site: within the
classes it annotates). Weaker labels (:mod:`fedsegnet.data.weak`): a box file must read, name
declared classes, have ordered corners and lie inside the volume (world boxes are converted through
the image's affine first); tags must name declared classes. Shapes and affines come from the
headers (nibabel proxies) before any voxel data is read, and a header declaring more than
:data:`MAX_VOXELS` voxels is refused before its data is read (:func:`check_voxel_bound`; a broken or
hostile header would otherwise make numpy try to allocate it). The split ``training`` must not be
empty when it is checked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from fedsegnet.data.datalist import SPLITS, SiteDatalist
from fedsegnet.errors import ConfigError, DataError, FedSegNetError

logger = logging.getLogger(__name__)

MAX_VOXELS = 1024**3
"""Most voxels (spatial x channels) a volume's header may declare: 1024^3, about 4 GiB as float32.
The largest public CT volumes (whole-body, 512 x 512 x ~2000) hold about a half of it."""


def voxel_bound_problem(shape, max_voxels: int = MAX_VOXELS) -> str | None:
    """What is wrong with a header's ``shape``, or None when it is within ``max_voxels``.

    Args:
        shape: the shape the header declares.
        max_voxels: the bound. Defaults to :data:`MAX_VOXELS`.
    """
    dims = tuple(int(d) for d in shape)
    if any(d <= 0 for d in dims):
        return f"header declares shape {dims}, with an empty axis"
    n = int(np.prod(dims, dtype=object))
    if n > max_voxels:
        return f"header declares shape {dims} = {n:,} voxels, more than the {max_voxels:,} FedSegNet reads (MAX_VOXELS)"
    return None


def check_voxel_bound(path, shape, max_voxels: int = MAX_VOXELS) -> None:
    """Refuse a volume whose header declares more than ``max_voxels`` voxels, before its data is read.

    Args:
        path: the file (named in the message).
        shape: the shape its header declares.
        max_voxels: the bound. Defaults to :data:`MAX_VOXELS`.

    Raises:
        FedSegNetError: naming the file and the shape.
    """
    problem = voxel_bound_problem(shape, max_voxels)
    if problem:
        raise FedSegNetError(f"{path}: {problem}")


def _rel(root, path: str) -> str:
    try:
        rel = os.path.relpath(path, str(root))
    except ValueError:  # different drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _open(path: str, what: str, problems: list[str]):
    """Open a NIfTI header; append a problem and return None on failure."""
    if not os.path.isfile(path):
        problems.append(f"{what}: file not found")
        return None
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises several types for unreadable files
        problems.append(f"{what}: cannot read as NIfTI ({type(exc).__name__}: {exc})")
        return None
    problem = voxel_bound_problem(img.shape)
    if problem:
        problems.append(f"{what}: {problem}")
        return None
    return img


def _read(img, what: str, problems: list[str]):
    try:
        return np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated/corrupt gzip streams fail only here
        problems.append(f"{what}: cannot read voxel data ({type(exc).__name__}: {exc})")
        return None


def _channels(shape: tuple) -> int:
    return int(np.prod(shape[3:])) if len(shape) > 3 else 1


def _check_case(
    datalist: SiteDatalist, split: str, index: int, case: dict, affine_tol: float, stats: dict
) -> list[str]:
    problems: list[str] = []
    root = datalist.root
    images = case["image"] if isinstance(case["image"], list) else [case["image"]]
    label_path = case.get("label")
    label_what = f"{_rel(root, label_path)} ({split}[{index}] label)" if label_path else ""

    headers = []
    for k, path in enumerate(images):
        what = f"{_rel(root, path)} ({split}[{index}] image{'' if len(images) == 1 else f'[{k}]'})"
        img = _open(path, what, problems)
        if img is not None:
            if len(img.shape) < 3:
                problems.append(f"{what}: expected a 3D or 4D image, got shape {tuple(img.shape)}")
            else:
                headers.append((what, img))
    lbl = _open(label_path, label_what, problems) if label_path else None
    if lbl is not None:
        shape = tuple(lbl.shape)
        if len(shape) < 3 or (len(shape) > 3 and int(np.prod(shape[3:])) != 1):
            problems.append(f"{label_what}: expected a 3D label map, got shape {shape}")
            lbl = None

    channels = 0
    for what, img in headers:
        shape = tuple(img.shape)
        channels += _channels(shape)
        if lbl is not None:
            if shape[:3] != tuple(lbl.shape[:3]):
                problems.append(f"{label_what}: spatial shape {tuple(lbl.shape[:3])} differs from image {shape[:3]}")
            else:
                diff = float(np.max(np.abs(np.asarray(img.affine) - np.asarray(lbl.affine))))
                if not np.isfinite(diff) or diff > affine_tol:
                    problems.append(f"{label_what}: affine differs from the image's (max difference {diff:.4g} mm)")
        stats["shapes"].add(shape[:3])
        stats["spacings"].add(tuple(round(float(z), 3) for z in img.header.get_zooms()[:3]))
    if len(headers) == len(images) and channels != datalist.in_channels:
        names = _rel(root, images[0]) if len(images) == 1 else f"{len(images)} image files"
        problems.append(
            f"{names} ({split}[{index}] image): has {channels} channel(s), modality declares "
            f"{datalist.in_channels} ({', '.join(datalist.modality.values())})"
        )

    for what, img in headers:
        data = _read(img, what, problems)
        if data is not None and np.issubdtype(data.dtype, np.floating):
            bad = int(data.size - np.count_nonzero(np.isfinite(data)))
            if bad:
                problems.append(f"{what}: {bad} NaN/Inf voxel(s)")

    if lbl is not None:
        data = _read(lbl, label_what, problems)
        if data is not None:
            if np.issubdtype(data.dtype, np.floating):
                finite = np.isfinite(data)
                if not finite.all():
                    problems.append(f"{label_what}: {int(data.size - finite.sum())} NaN/Inf voxel(s)")
                    data = np.where(finite, data, 0)
                frac = data != np.round(data)
                if frac.any():
                    examples = sorted({float(v) for v in np.unique(data[frac])[:3]})
                    problems.append(
                        f"{label_what}: non-integer label values (e.g. {examples}); labels must be class ids"
                    )
                data = np.round(data)
            values, counts = np.unique(data.astype(np.int64, copy=False), return_counts=True)
            declared = sorted(datalist.labels)
            unknown = sorted(int(v) for v in values if int(v) not in datalist.labels)
            if unknown:
                problems.append(f"{label_what}: label values {set(unknown)} not in declared classes {declared}")
            elif datalist.label_kind == "partial":
                unannotated = sorted(int(v) for v in values if v != 0 and int(v) not in datalist.annotated)
                if unannotated:
                    problems.append(
                        f"{label_what}: label values {set(unannotated)} are not among this partial site's "
                        f"annotated_classes {list(datalist.annotated)}"
                    )
            for v, c in zip(values.tolist(), counts.tolist()):
                stats["class_voxels"][int(v)] = stats["class_voxels"].get(int(v), 0) + int(c)
            if not np.any(values > 0):
                stats["empty_cases"] += 1
    if "boxes" in case and headers:
        problems += _check_boxes(datalist, split, index, case["boxes"], headers[0][1])
    if "tags" in case:
        from fedsegnet.data.weak import class_value

        bad = [t for t in case["tags"] if class_value(t, datalist.labels) in (None, 0)]
        if bad:
            problems.append(
                f"{_rel(root, images[0])} ({split}[{index}] tags): {bad} not declared foreground classes "
                f"{[n for v, n in sorted(datalist.labels.items()) if v]}"
            )
    return problems


def _check_boxes(datalist: SiteDatalist, split: str, index: int, path: str, img) -> list[str]:
    from fedsegnet.data.weak import box_voxel_ranges, read_boxes

    what = f"{_rel(datalist.root, path)} ({split}[{index}] boxes)"
    coordinates, boxes, faults = read_boxes(path, datalist.labels)
    problems = [f"{what}: {f}" for f in faults]
    shape = np.asarray(img.shape[:3])
    for i, box in enumerate(boxes):
        lo, hi = box_voxel_ranges(box, coordinates, img.affine)
        if np.any(lo < 0) or np.any(hi > shape) or np.any(hi <= lo):
            problems.append(
                f"{what}: boxes[{i}] ({coordinates} {box['min']} .. {box['max']}) covers voxels {lo.tolist()} .. "
                f"{hi.tolist()}, outside the volume of shape {shape.tolist()}"
            )
    return problems


def preflight(
    datalist: SiteDatalist,
    *,
    check_splits: Sequence[str] = ("training", "validation"),
    affine_tol: float = 1e-3,
) -> dict:
    """Check every case of the given splits; raise one error listing all problems.

    Args:
        datalist: the site's datalist (see :func:`fedsegnet.data.datalist.load_datalist`).
        check_splits: splits to check, from ``training``, ``validation``, ``test``. An empty
            ``training`` list is a problem when ``training`` is checked.
            Defaults to ("training", "validation").
        affine_tol: largest allowed difference between image and label affine entries, in mm.
            Defaults to 1e-3.

    Returns:
        Summary: ``{"site", "n_cases": {split: int}, "n_total", "channels", "num_classes",
        "shapes": sorted list of spatial shapes, "spacings": sorted list of voxel sizes (mm),
        "label_values": sorted class ids seen, "class_voxels": {class id: voxel count},
        "cases_without_foreground": int}``.

    Raises:
        ConfigError: for an unknown split name or a negative ``affine_tol``.
        DataError: listing every problem of the site, each naming its file.
    """
    splits = tuple(check_splits)
    for split in splits:
        if split not in SPLITS:
            raise ConfigError("check_splits", split, "unknown split", options=SPLITS)
    if not affine_tol >= 0:
        raise ConfigError("affine_tol", affine_tol, "must be >= 0")
    problems: list[str] = []
    if "training" in splits and not datalist.training:
        problems.append(f"{datalist.json_path}: 'training' is empty; a site needs at least one training case")
    stats = {"shapes": set(), "spacings": set(), "class_voxels": {}, "empty_cases": 0}
    n_cases = {}
    for split in splits:
        cases = getattr(datalist, split)
        n_cases[split] = len(cases)
        for i, case in enumerate(cases):
            problems.extend(_check_case(datalist, split, i, case, float(affine_tol), stats))
    if problems:
        logger.warning("preflight %s: %d problem(s)", datalist.name, len(problems))
        raise DataError(datalist.name, problems)
    summary = {
        "site": datalist.name,
        "n_cases": n_cases,
        "n_total": int(sum(n_cases.values())),
        "channels": datalist.in_channels,
        "num_classes": datalist.num_classes,
        "shapes": sorted(list(s) for s in stats["shapes"]),
        "spacings": sorted(list(s) for s in stats["spacings"]),
        "label_values": sorted(stats["class_voxels"]),
        "class_voxels": dict(sorted(stats["class_voxels"].items())),
        "cases_without_foreground": stats["empty_cases"],
    }
    logger.info(
        "preflight %s: %d case(s) OK (%s), shapes %s, spacings %s, label values %s",
        datalist.name,
        summary["n_total"],
        ", ".join(f"{k} {v}" for k, v in n_cases.items()),
        summary["shapes"],
        summary["spacings"],
        summary["label_values"],
    )
    return summary
