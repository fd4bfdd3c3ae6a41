"""Writing synthetic cases in the MSD layout: NIfTI images and labels, box sidecars, affines.

Images are float32 NIfTI (multi-channel images as one 4D file, channels last, as in MSD), labels
uint8; both carry the affine as qform and sform. gzip streams are written with mtime 0, so the same
arrays give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from fedsegnet.data.orientation import reorient
from fedsegnet.data.synth.annotations import weak_label_entry

__all__ = ["modality", "ras_affine", "write_case"]

_CHANNEL_NAMES = ("T1", "T2", "FLAIR", "T1c")
_ORIGIN_OFFSET = np.array([12.5, -7.0, 31.0])


def _save(data: np.ndarray, affine: np.ndarray, path: Path, dtype):
    """Save ``data`` as ``dtype`` NIfTI with ``affine`` as qform and sform (mm units)."""
    img = nib.Nifti1Image(data.astype(dtype, copy=False), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def ras_affine(n: int, spacing: tuple[float, float, float]) -> np.ndarray:
    """The (4, 4) RAS affine of an ``n``^3 grid: ``spacing`` mm voxels, centred near a non-zero origin."""
    sp = np.asarray(spacing, dtype=np.float64)
    affine = np.diag(np.append(sp, 1.0))
    affine[:3, 3] = -(n - 1) / 2.0 * sp + _ORIGIN_OFFSET
    return affine


def write_case(
    folder: Path, stem: str, case: dict, label: np.ndarray, affine: np.ndarray, axcodes, kind: str = "voxel", annotated=(),
    split: str = "Tr",
) -> dict:
    """Write one case under ``folder/images{split}`` (and ``labels{split}`` or ``boxes{split}``).

    Args:
        folder: the site (or test set) folder.
        stem: the file name without extension, e.g. ``site-1_000``.
        case: a generated case (``image``: (C, X, Y, Z) float32, in RAS voxel order).
        label: (X, Y, Z) uint8 label map to keep (possibly corrupted), in RAS voxel order.
        affine: (4, 4) RAS affine of the case (:func:`ras_affine`).
        axcodes: orientation of the stored volumes (3 axis codes); image and label are both
            reoriented, the affine follows.
        kind: the site's label kind (see :func:`~fedsegnet.data.synth.annotations.weak_label_entry`).
            Defaults to ``"voxel"``.
        annotated: the class ids a ``partial`` site annotates. Defaults to ().
        split: ``"Tr"`` (training and validation) or ``"Ts"`` (a site's own test cases).
            Defaults to ``"Tr"``.

    Returns:
        The case's ``dataset.json`` entry: ``{"image", "label"}``, ``{"image", "boxes"}`` or
        ``{"image", "tags"}`` (absolute paths).
    """
    image = case["image"]
    data = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)  # MSD: channels last
    lab = label
    if tuple(axcodes) != ("R", "A", "S"):
        data, img_affine = reorient(data, affine, axcodes)
        lab, _ = reorient(label, affine, axcodes)
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


def modality(channels: int) -> dict[str, str]:
    """The MSD ``modality`` map of ``channels`` image channels (``{"0": "MRI"}`` for one)."""
    if channels == 1:
        return {"0": "MRI"}
    return {str(c): (_CHANNEL_NAMES[c] if c < len(_CHANNEL_NAMES) else f"MR{c}") for c in range(channels)}
