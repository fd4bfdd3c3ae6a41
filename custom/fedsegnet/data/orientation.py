"""Voxel orientation of NIfTI volumes: axis codes, reorienting arrays and files (nibabel).

The same anatomy can be stored in any voxel order (RAS, LPS, PIR, ...); the affine says which.
Reorienting flips/permutes the voxel axes and updates the affine so that world coordinates stay
the same, so MONAI's ``Orientationd(axcodes="RAS")`` (or nibabel's ``as_closest_canonical``) gives
back the same array whatever orientation a volume was stored in.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from fedsegnet.errors import ConfigError

__all__ = ["check_axcodes", "reorient", "reorient_nifti"]

_PAIRS = ("LR", "PA", "IS")


def check_axcodes(axcodes, field: str = "axcodes") -> tuple[str, str, str]:
    """Validate and normalise axis codes, e.g. ``"lps"`` -> ``("L", "P", "S")``.

    Args:
        axcodes: three axis codes, a string (``"RAS"``) or a sequence (``("L", "P", "S")``),
            case-insensitive, one of each pair L/R, P/A, I/S.
        field: the argument name an error names. Defaults to ``"axcodes"``.

    Returns:
        The upper-case codes as a 3-tuple.

    Raises:
        ConfigError: (field ``field``) for invalid axis codes.
    """
    try:
        codes = tuple(str(c).upper() for c in axcodes)
    except TypeError:
        codes = ()
    axes = sorted(next((i for i, p in enumerate(_PAIRS) if len(c) == 1 and c in p), -1) for c in codes)
    valid = len(codes) == 3 and axes == [0, 1, 2]
    if not valid:
        raise ConfigError(field, axcodes, "expected 3 axis codes, one of each pair L/R, P/A, I/S (e.g. RAS, LPS)")
    return codes


def reorient(data: np.ndarray, affine: np.ndarray, axcodes) -> tuple[np.ndarray, np.ndarray]:
    """Re-express an array in another voxel orientation, with the same world coordinates.

    Args:
        data: array with the three spatial axes first (``(X, Y, Z)`` or ``(X, Y, Z, C)``).
        affine: (4, 4) voxel-to-world affine of ``data``.
        axcodes: target orientation (see :func:`check_axcodes`).

    Returns:
        ``(array, affine)``: a C-contiguous array of ``data``'s dtype, the spatial axes flipped and
        permuted, and its (4, 4) float64 affine.

    Raises:
        ConfigError: (field ``axcodes``) for invalid axis codes.
    """
    start = nio.io_orientation(affine)
    end = nio.axcodes2ornt(check_axcodes(axcodes))
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
    codes = check_axcodes(axcodes)
    img = nib.load(str(src))
    dtype = img.get_data_dtype()
    data = np.asanyarray(img.dataobj)
    if np.issubdtype(dtype, np.integer):
        data = np.rint(data).astype(dtype)
    out, affine = reorient(data, img.affine, codes)
    new = nib.Nifti1Image(out, affine, header=img.header.copy())
    new.set_data_dtype(dtype)
    new.set_qform(affine, code=1)
    new.set_sform(affine, code=1)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    nib.save(new, str(dst))
    return Path(dst)
