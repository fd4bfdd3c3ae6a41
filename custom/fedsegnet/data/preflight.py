"""Preflight: check every file of a site before training; collect all problems into one error.

Like nnU-Net's dataset integrity check: each case's image and label must exist and load, agree in
spatial shape and affine, the label must hold integers within the declared classes, the image must
be finite and have the declared number of channels, and the training list must not be empty. All
problems of a site come back in one :class:`~fedsegnet.errors.DataError`, each naming its file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from fedsegnet.data.datalist import SiteDatalist
from fedsegnet.errors import DataError

logger = logging.getLogger(__name__)

AFFINE_TOL_MM = 1e-3


def _rel(datalist: SiteDatalist, path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(datalist.root.resolve()))
    except ValueError:
        return str(path)


def _load(path: str, what: str, rel: str, problems: list[str]):
    if not Path(path).is_file():
        problems.append(f"{rel}: {what} file does not exist")
        return None
    try:
        return nib.load(path)
    except Exception as e:  # nibabel raises several kinds for unreadable files
        problems.append(f"{rel}: {what} cannot be read as NIfTI ({type(e).__name__}: {e})")
        return None


def _check_case(datalist: SiteDatalist, case: dict, problems: list[str], summary: dict):
    images = case["image"] if isinstance(case["image"], (list, tuple)) else [case["image"]]
    label_rel = _rel(datalist, case["label"])
    label = _load(case["label"], "label", label_rel, problems)
    imgs = [(p, _rel(datalist, p), _load(p, "image", _rel(datalist, p), problems)) for p in images]
    if label is None or any(i is None for _, _, i in imgs):
        return
    n_channels = 0
    for _, rel, img in imgs:
        shape = img.shape
        n_channels += shape[3] if len(shape) == 4 else 1
        if len(shape) not in (3, 4):
            problems.append(f"{rel}: image has {len(shape)} dimensions, expected 3 (or 4 with channels last)")
            continue
        if tuple(shape[:3]) != tuple(label.shape[:3]):
            problems.append(f"{rel}: image shape {tuple(shape[:3])} differs from label {label_rel} shape {tuple(label.shape[:3])}")
        if not np.allclose(img.affine, label.affine, atol=AFFINE_TOL_MM):
            problems.append(
                f"{rel}: image affine differs from label {label_rel} affine (max difference "
                f"{np.abs(img.affine - label.affine).max():.4g} mm)"
            )
        try:
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as e:
            problems.append(f"{rel}: image voxels cannot be read ({type(e).__name__}: {e})")
            continue
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        if bad:
            problems.append(f"{rel}: image has {bad} NaN/Inf voxel(s)")
        summary["spacings"].add(tuple(round(float(z), 4) for z in img.header.get_zooms()[:3]))
    if n_channels != datalist.in_channels:
        problems.append(
            f"{imgs[0][1]}: image has {n_channels} channel(s) but dataset.json 'modality' declares {datalist.in_channels}"
        )
    if len(label.shape) != 3 and not (len(label.shape) == 4 and label.shape[3] == 1):
        problems.append(f"{label_rel}: label must be a 3D volume, got shape {tuple(label.shape)}")
        return
    try:
        lab = np.asarray(label.dataobj)
    except Exception as e:
        problems.append(f"{label_rel}: label voxels cannot be read ({type(e).__name__}: {e})")
        return
    if not np.all(np.isfinite(lab)):
        problems.append(f"{label_rel}: label has NaN/Inf voxel(s)")
        return
    if np.issubdtype(lab.dtype, np.floating) and not np.all(lab == np.round(lab)):
        problems.append(f"{label_rel}: label has non-integer values (e.g. {lab[lab != np.round(lab)].flat[0]:.3g})")
        return
    values = set(np.unique(lab).astype(np.int64).tolist())
    declared = sorted(datalist.labels)
    extra = values - set(declared)
    if extra:
        problems.append(f"{label_rel}: label values {sorted(extra)} not in declared classes {declared}")
    summary["label_values"] |= values
    summary["shapes"].add(tuple(int(s) for s in label.shape[:3]))


def preflight(datalist: SiteDatalist, *, check_splits=("training", "validation")) -> dict:
    """Check every case of the given splits of a site.

    Args:
        datalist: the site's data contract (from :func:`~fedsegnet.data.datalist.load_datalist`).
        check_splits: which lists to check. Defaults to ``("training", "validation")``.

    Returns:
        A summary: ``{"site", "n_cases": {split: n}, "shapes", "spacings", "label_values"}``.

    Raises:
        DataError: listing every problem found, each naming its file (relative to the site folder).
    """
    problems: list[str] = []
    summary = {"shapes": set(), "spacings": set(), "label_values": set()}
    n_cases = {}
    if "training" in check_splits and not datalist.training:
        problems.append(f"{datalist.root / 'dataset.json'}: 'training' lists no cases")
    for split in check_splits:
        cases = list(getattr(datalist, split))
        n_cases[split] = len(cases)
        for case in cases:
            _check_case(datalist, case, problems, summary)
    if problems:
        raise DataError(datalist.name, problems)
    out = {
        "site": datalist.name,
        "n_cases": n_cases,
        "shapes": sorted(summary["shapes"]),
        "spacings": sorted(summary["spacings"]),
        "label_values": sorted(summary["label_values"]),
    }
    logger.info(
        "preflight %s: %s cases OK, shapes %s, spacings %s, label values %s",
        datalist.name, n_cases, out["shapes"], out["spacings"], out["label_values"],
    )  # fmt: skip
    return out
