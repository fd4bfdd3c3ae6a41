"""DICOM in and out: one image series folder read as a volume; a label map written as DICOM SEG.

Reading. A series folder holds the single-frame images (CT, MR, PET, ...) of ONE series, one slice
per file. :func:`read_series` reads the headers only (pydicom, no pixel data) and checks, collecting
every problem of the folder into one :class:`~fedsegnet.errors.DataError` that names the folder and
each file: the folder holds DICOM files (hidden files, non-DICOM files and a ``DICOMDIR`` are
passed over; subfolders are not searched), of one series (``SeriesInstanceUID``), each an image
with ``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``, ``InstanceNumber``,
``Rows`` and ``Columns``, single-frame and single-sample (grey); all slices share the orientation,
the pixel spacing and the matrix; there are at least 2; and in ``InstanceNumber`` order their
positions advance in equal steps along one line that leaves the slice plane (no missing slice, no
duplicate, no slice out of order). The pixels are then read by MONAI's
:class:`~monai.data.PydicomReader` (:func:`load_series`; it applies ``RescaleSlope`` /
``RescaleIntercept`` and stacks the slices in ``InstanceNumber`` order, hence that check), and the
volume it returns is checked against the geometry the headers give.

Voxel convention, shared with MONAI and nibabel: a series volume has shape ``(Columns, Rows,
slices)``; voxel ``(i, j, k)`` is column ``i`` and row ``j`` of the ``k``-th slice in
``InstanceNumber`` order (:attr:`DicomSeries.files`), and :attr:`DicomSeries.affine` maps it to
world RAS+ millimetres (DICOM's LPS with x and y negated), as a NIfTI affine does. A label map on
the series' grid is written as NIfTI through that affine (``fedsegnet infer``), so it overlays the
series in any viewer.

Writing. :func:`build_seg` makes a DICOM Segmentation (highdicom; ``BINARY``) of a label map on the
series' grid: one segment per foreground class (segment number = class id; its label the model's
class name, its ``SegmentDescription`` the value the NIfTI label map holds), frame ``k`` derived
from the ``k``-th slice (each frame names its source slice's ``SOPInstanceUID``, the SEG's
``ReferencedSeriesSequence`` lists the whole series), empty frames left out, in the source's study,
patient and frame of reference. The SEG says who wrote it (``Manufacturer`` :data:`SEG_MANUFACTURER`,
``ManufacturerModelName`` :data:`SEG_MODEL_NAME`), which is how ``--overwrite`` recognises one
(:func:`written_by_fedsegnet`); ``ContentQualification`` is ``RESEARCH``.

Not supported (refused, naming the file): multi-frame (enhanced) images, colour images, series with
unequal slice spacing or gaps, a folder holding several series.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from fedsegnet.data.preflight import voxel_bound_problem
from fedsegnet.errors import DataError, FedSegNetError
from fedsegnet.outputs import check_protected, claim_file

logger = logging.getLogger(__name__)

__all__ = [
    "DicomSeries",
    "SEG_MANUFACTURER",
    "SEG_MODEL_NAME",
    "build_seg",
    "check_seg_output",
    "check_seg_source",
    "load_series",
    "read_series",
    "same_grid_problems",
    "save_series_nifti",
    "seg_path_for",
    "written_by_fedsegnet",
]

SEG_MANUFACTURER = "FedSegNet"
"""The ``Manufacturer`` of a SEG fedsegnet writes."""
SEG_MODEL_NAME = "fedsegnet infer"
"""The ``ManufacturerModelName`` of a SEG fedsegnet writes (with :data:`SEG_MANUFACTURER`: how
``--overwrite`` recognises its own files)."""
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
"""SOP class of a ``DICOMDIR`` (an index of a medium, not an image): passed over in a series folder."""

_REQUIRED = ("SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "InstanceNumber", "Rows", "Columns")
_SEG_TYPE1 = ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID", "Modality")
"""Attributes a SEG copies from its source that must have a value."""
_SEG_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime")
"""Attributes a SEG copies from its source that DICOM allows empty (anonymised series often drop
them): a missing one is copied as empty."""
_ORIENTATION_TOL = 1e-4
_POSITION_TOL = 1e-3  # mm, plus 1% of the slice step


@dataclass(frozen=True)
class DicomSeries:
    """The checked headers of one series folder (no pixel data).

    Attributes:
        folder: the series folder.
        files: one file per slice, in ``InstanceNumber`` order (the volume's third axis).
        headers: the files' headers (pydicom datasets without pixel data), in the same order.
        series_instance_uid: the series' ``SeriesInstanceUID``.
        shape: the volume's shape ``(Columns, Rows, slices)``.
        affine: voxel ``(column, row, slice)`` -> RAS+ mm, 4x4 float64.
    """

    folder: Path
    files: tuple[Path, ...]
    headers: tuple
    series_instance_uid: str
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """``SOPInstanceUID`` of every slice, in slice order."""
        return tuple(str(h.SOPInstanceUID) for h in self.headers)


def _numbers(ds, keyword: str, count: int) -> np.ndarray | None:
    """``ds.<keyword>`` as ``count`` finite floats, or None when it is missing or malformed."""
    value = ds.get(keyword)
    try:
        values = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if values.shape != (count,) or not np.isfinite(values).all():
        return None
    return values


def _candidates(folder: Path) -> tuple[list[Path], list[str]]:
    """The plain, visible files directly in ``folder`` (sorted), and its subfolders' names."""
    files, subfolders = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            subfolders.append(entry.name)
        elif entry.is_file():
            files.append(entry)
    return files, subfolders


def _read_headers(folder: Path) -> tuple[list[tuple[Path, object]], list[str]]:
    """Read every DICOM header of ``folder``; returns ``[(file, header)]`` and the problems found."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files, subfolders = _candidates(folder)
    read, problems = [], []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:  # not DICOM (notes, exports of other tools): passed over
            continue
        except Exception as e:  # a truncated or broken file: pydicom raises several kinds
            problems.append(f"{path}: cannot be read as DICOM ({type(e).__name__}: {e})")
            continue
        meta = getattr(ds, "file_meta", None) or {}
        if MEDIA_STORAGE_DIRECTORY in (str(ds.get("SOPClassUID", "")), str(meta.get("MediaStorageSOPClassUID", ""))):
            continue
        read.append((path, ds))
    if not read and not problems:
        found = f"{len(files)} other file(s)" if files else "it is empty"
        hint = ""
        if subfolders:
            more = ", ..." if len(subfolders) > 3 else ""
            hint = f"; subfolders ({', '.join(subfolders[:3])}{more}) are not searched: give one series folder"
        problems.append(f"{folder}: no DICOM files ({found}){hint}")
    return read, problems


def _one_series(folder: Path, read: list[tuple[Path, object]]) -> list[str]:
    orphans = [p for p, ds in read if not ds.get("SeriesInstanceUID")]
    if orphans:
        return [f"{p}: no SeriesInstanceUID (a truncated file, or not an image of a series)" for p in orphans[:5]] + (
            [f"{folder}: ... and {len(orphans) - 5} more such file(s)"] if len(orphans) > 5 else []
        )
    groups: dict[str, list[tuple[Path, object]]] = {}
    for path, ds in read:
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    if len(groups) == 1:
        return []
    parts = []
    for uid, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        desc = str(members[0][1].get("SeriesDescription", "") or "")
        parts.append(f"{uid}{f' {desc!r}' if desc else ''}: {len(members)} file(s), e.g. {members[0][0].name}")
    return [f"{folder}: holds {len(groups)} series ({'; '.join(parts)}); put each series in its own folder"]


def _slice_problems(path: Path, ds) -> list[str]:
    problems = []
    missing = [k for k in _REQUIRED if k not in ds or ds.get(k) in (None, "")]
    if missing:
        sop = str(ds.get("SOPClassUID", "?"))
        what = "" if "Rows" in ds else f" (not an image: SOP class {sop})"
        problems.append(f"{path}: missing {', '.join(missing)}{what}")
    for keyword, count in (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6), ("PixelSpacing", 2)):
        if keyword in ds and ds.get(keyword) not in (None, "") and _numbers(ds, keyword, count) is None:
            problems.append(f"{path}: {keyword} {ds.get(keyword)!r} is not {count} finite numbers")
    spacing = _numbers(ds, "PixelSpacing", 2)
    if spacing is not None and not (spacing > 0).all():
        problems.append(f"{path}: PixelSpacing {spacing.tolist()} must be > 0")
    iop = _numbers(ds, "ImageOrientationPatient", 6)
    if iop is not None:
        row, col = iop[:3], iop[3:]
        if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
            problems.append(f"{path}: ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) > 1:
        problems.append(f"{path}: a multi-frame image ({int(frames)} frames): only single-frame series are read")
    samples = ds.get("SamplesPerPixel")
    if samples not in (None, "") and int(samples) != 1:
        problems.append(f"{path}: {int(samples)} samples per pixel (colour): only grey images are read")
    return problems


def _geometry(folder: Path, slices: list[tuple[Path, object]]) -> tuple[np.ndarray | None, list[str]]:
    """The RAS affine of slices already in ``InstanceNumber`` order, or the problems that forbid one."""
    first_path, first = slices[0]
    iop = _numbers(first, "ImageOrientationPatient", 6)
    spacing = _numbers(first, "PixelSpacing", 2)
    rows, cols = int(first.Rows), int(first.Columns)
    problems = []
    for path, ds in slices[1:]:
        other = _numbers(ds, "ImageOrientationPatient", 6)
        if np.abs(other - iop).max() > _ORIENTATION_TOL:
            problems.append(f"{path}: ImageOrientationPatient {other.tolist()} differs from {first_path.name} {iop.tolist()}")
        other = _numbers(ds, "PixelSpacing", 2)
        if np.abs(other - spacing).max() > _ORIENTATION_TOL * max(1.0, float(spacing.max())):
            problems.append(f"{path}: PixelSpacing {other.tolist()} differs from {first_path.name} {spacing.tolist()}")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            problems.append(f"{path}: {int(ds.Rows)} x {int(ds.Columns)} pixels, {first_path.name} has {rows} x {cols}")
    if problems:
        return None, problems
    n = len(slices)
    if n < 2:
        return None, [f"{folder}: one slice only ({first_path.name}): a 3D series needs at least 2"]
    positions = np.stack([_numbers(ds, "ImagePositionPatient", 3) for _, ds in slices])
    step = (positions[-1] - positions[0]) / (n - 1)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if abs(step @ normal) < _POSITION_TOL:
        return None, [f"{folder}: the slices do not advance along the slice normal (first and last, in InstanceNumber "
                      f"order, lie in one plane): duplicate positions?"]  # fmt: skip
    tol = _POSITION_TOL + 0.01 * float(np.linalg.norm(step))
    for k, (path, ds) in enumerate(slices):
        expected = positions[0] + k * step
        if np.abs(positions[k] - expected).max() > tol:
            problems.append(
                f"{path} (InstanceNumber {int(ds.InstanceNumber)}): ImagePositionPatient {positions[k].tolist()} is off the "
                f"evenly spaced line from the first to the last slice (expected {expected.round(3).tolist()}): "
                f"a missing slice, uneven spacing, or InstanceNumber out of slice order"
            )
    if problems:
        return None, problems[:5] + ([f"{folder}: ... and {len(problems) - 5} more slice(s) off the line"] if len(problems) > 5 else [])
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]  # along a row: the next column, ``PixelSpacing[1]`` apart
    lps[:3, 1] = col * spacing[0]  # down a column: the next row, ``PixelSpacing[0]`` apart
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, []


def read_series(folder: str | Path) -> DicomSeries:
    """Read and check the headers of one DICOM series folder (no pixel data is read).

    Args:
        folder: a folder holding the single-frame images of one series.

    Returns:
        The series: files and headers in ``InstanceNumber`` order, shape ``(Columns, Rows, slices)``
        and the RAS affine.

    Raises:
        DataError: naming the folder and every problem (each naming its file): not a folder, no
            DICOM files, several series, a missing or malformed attribute, multi-frame or colour
            images, slices that differ in orientation, spacing or matrix, fewer than 2 slices,
            duplicate ``InstanceNumber``, slices not evenly spaced along one line in that order, or
            a volume of more than :data:`~fedsegnet.data.preflight.MAX_VOXELS` voxels.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(str(folder), [f"{folder}: no such DICOM series folder"])
    read, problems = _read_headers(folder)
    if not problems:
        problems = _one_series(folder, read)
    if not problems:
        for path, ds in read:
            problems += _slice_problems(path, ds)
    if not problems:
        numbers: dict[int, Path] = {}
        for path, ds in read:
            number = int(ds.InstanceNumber)
            if number in numbers:
                problems.append(f"{path}: InstanceNumber {number} is also that of {numbers[number].name}")
            numbers.setdefault(number, path)
    affine = None
    if not problems:
        read.sort(key=lambda item: int(item[1].InstanceNumber))
        affine, problems = _geometry(folder, read)
    if not problems:
        shape = (int(read[0][1].Columns), int(read[0][1].Rows), len(read))
        bound = voxel_bound_problem(shape)
        if bound:
            problems.append(f"{folder}: the series {bound.replace('header declares', 'has')}")
    if problems:
        raise DataError(str(folder), problems)
    return DicomSeries(
        folder=folder,
        files=tuple(p for p, _ in read),
        headers=tuple(ds for _, ds in read),
        series_instance_uid=str(read[0][1].SeriesInstanceUID),
        shape=shape,
        affine=affine,
    )


def load_series(series: DicomSeries) -> nib.Nifti1Image:
    """Read the pixels of a checked series with MONAI's :class:`~monai.data.PydicomReader`.

    Only the files :func:`read_series` accepted are read (MONAI's ``fname_regex`` names them), in
    ``InstanceNumber`` order, with the modality rescale applied; the volume MONAI returns must have
    the headers' shape. The affine is the checked headers' (where MONAI's differs, because it left
    out a header value it could not parse, that is logged).

    Args:
        series: from :func:`read_series`.

    Returns:
        An in-memory NIfTI image: float32 data ``(Columns, Rows, slices)``, the series' RAS affine
        (sform and qform code 1, scanner coordinates).

    Raises:
        DataError: naming the folder: a file's pixel data cannot be decoded, MONAI's volume has
            another shape than the headers give, or it holds NaN or Inf.
    """
    from monai.data import PydicomReader

    folder = series.folder
    names = [os.path.join(str(folder), p.name) for p in series.files]  # the paths MONAI's glob yields
    reader = PydicomReader(fname_regex="^(?:" + "|".join(re.escape(n) for n in names) + ")$")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI warns for every file it passes over; those were checked
            data, meta = reader.get_data(reader.read(str(folder)))
    except Exception as e:  # pixel decoding: pydicom and MONAI raise several kinds
        raise DataError(str(folder), [f"{folder}: the pixel data cannot be read ({type(e).__name__}: {e})"]) from None
    data = np.asarray(data, dtype=np.float32)
    if data.shape != series.shape:
        raise DataError(str(folder), [f"{folder}: MONAI's reader gives a volume of shape {data.shape}, the headers {series.shape}"])
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if not np.allclose(affine, series.affine, atol=1e-3):
        # MONAI builds its affine from the headers' JSON form, which leaves out values pydicom flags as
        # invalid (e.g. a decimal string longer than DICOM's 16 characters): the checked headers rule
        logger.warning(
            "%s: MONAI's reader gives the affine %s, the headers %s (it leaves out header values it cannot "
            "parse); the headers' affine is used", folder, affine.round(4).tolist(), series.affine.round(4).tolist(),
        )  # fmt: skip
    if not np.isfinite(data).all():
        raise DataError(str(folder), [f"{folder}: the pixel data holds NaN or Inf"])
    img = nib.Nifti1Image(data, series.affine)
    img.set_sform(series.affine, code=1)
    img.set_qform(series.affine, code=1)
    return img


def save_series_nifti(series: DicomSeries, path: str | Path) -> Path:
    """Write the series' volume (:func:`load_series`) as a NIfTI file ``path`` (caller-chosen, e.g. in a
    temporary folder: the source folder is never written); returns ``path``."""
    path = Path(path)
    nib.save(load_series(series), str(path))
    return path


# Segmented property (category, type) of the dataset presets' class names, as pydicom's SNOMED CT
# keywords; any other class is category and type "Tissue".
_PROPERTIES = {
    "organ": ("AnatomicalStructure", "Organ"),
    "lesion": ("MorphologicallyAbnormalStructure", "Lesion"),
    "liver": ("AnatomicalStructure", "Liver"),
    "tumour": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "necrotic_core": ("MorphologicallyAbnormalStructure", "Necrosis"),
    "edema": ("MorphologicallyAbnormalStructure", "Edema"),
    "enhancing": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "right_ventricle": ("AnatomicalStructure", "RightVentricle"),
    "left_ventricle": ("AnatomicalStructure", "LeftVentricle"),
}


def _property_codes(name: str):
    from pydicom.sr.codedict import codes

    category, kind = _PROPERTIES.get(name, ("Tissue", "Tissue"))
    return getattr(codes.SCT, category), getattr(codes.SCT, kind)


def check_seg_source(series: DicomSeries) -> None:
    """Refuse, before any work, a series a DICOM SEG cannot reference (see :func:`build_seg`).

    Raises:
        DataError: the first slice lacks a :data:`_SEG_TYPE1` attribute (named).
    """
    first = series.headers[0]
    missing = [k for k in _SEG_TYPE1 if not first.get(k)]
    if missing:
        raise DataError(str(series.folder), [
            f"{series.files[0]}: missing {', '.join(missing)}: a DICOM SEG copies them from its source series"
        ])  # fmt: skip


def _seg_sources(series: DicomSeries) -> list:
    """Copies of the series' headers fit for a SEG: a missing :data:`_SEG_TYPE2` attribute is added empty.

    Raises:
        DataError: a :data:`_SEG_TYPE1` attribute is missing (names the file and the attributes).
    """
    check_seg_source(series)
    sources = []
    for ds in series.headers:
        ds = ds.copy()
        for keyword in _SEG_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        sources.append(ds)
    return sources


def build_seg(
    labels: np.ndarray,
    series: DicomSeries,
    class_names: Sequence[str],
    label_values: Sequence[int] = (),
    *,
    software_version: str = "0",
    device_serial_number: str = "0",
    description: str | None = None,
):
    """A DICOM SEG (in memory) of ``labels``, a label map on the series' grid.

    Args:
        labels: ``(Columns, Rows, slices)`` integer label map on the series' grid (as ``fedsegnet
            infer`` writes it: ``label_values[class id]``, or the class ids).
        series: the source series (:func:`read_series`).
        class_names: name of every class, index = class id, ``class_names[0]`` the background;
            ``len(class_names) - 1`` segments are described (numbers 1..), present or not.
        label_values: the value ``labels`` holds for each class id. Defaults to () (the class ids).
        software_version: the SEG's ``SoftwareVersions``. Defaults to ``"0"``.
        device_serial_number: the SEG's ``DeviceSerialNumber``. Defaults to ``"0"``.
        description: the SEG's ``ContentDescription`` and ``SeriesDescription``. Defaults to None.

    Returns:
        A ``highdicom.seg.Segmentation`` (``BINARY``); write it with ``save_as``.

    Raises:
        FedSegNetError: ``labels`` is not on the series' grid, or holds a value no class has.
        DataError: the series lacks an attribute the SEG must copy (named), or highdicom refuses it.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    labels = np.asarray(labels)
    if labels.shape != series.shape:
        raise FedSegNetError(f"labels of shape {labels.shape} are not on the grid of {series.folder} {series.shape}")
    n_classes = len(class_names)
    values = [int(v) for v in label_values] if label_values else list(range(n_classes))
    if len(values) != n_classes:
        raise FedSegNetError(f"{len(values)} label value(s) {values} for {n_classes} class(es) {list(class_names)}")
    ids = np.zeros(labels.shape, dtype=np.uint16 if n_classes > 255 else np.uint8)
    for class_id, value in enumerate(values):
        ids[labels == value] = class_id
    stray = sorted(set(np.unique(labels).tolist()) - set(values))
    if stray:
        raise FedSegNetError(f"labels hold value(s) {stray} that no class has (values {values})")
    sources = _seg_sources(series)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="FedSegNet", family=codes.cid7162.ArtificialIntelligence, version=str(software_version)
    )
    segments = []
    for class_id in range(1, n_classes):
        category, kind = _property_codes(str(class_names[class_id]))
        segment = hd.seg.SegmentDescription(
            segment_number=class_id, segment_label=str(class_names[class_id])[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
        )  # fmt: skip
        segment.SegmentDescription = f"label value {values[class_id]} of the NIfTI label map"
        segments.append(segment)
    frames = np.ascontiguousarray(np.transpose(ids, (2, 1, 0)))  # (slices, Rows, Columns): frame k <- slice k
    source_number = sources[0].get("SeriesNumber")
    try:
        return hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type="BINARY",
            segment_descriptions=segments,
            series_instance_uid=hd.UID(),
            series_number=(int(source_number) if source_number not in (None, "") else 0) + 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=SEG_MANUFACTURER,
            manufacturer_model_name=SEG_MODEL_NAME,
            software_versions=str(software_version),
            device_serial_number=str(device_serial_number),
            content_description=description[:64] if description else None,
            series_description=description[:64] if description else None,
            content_label="FEDSEGNET",
            content_qualification="RESEARCH",
            omit_empty_frames=bool(ids.any()),  # a SEG needs one frame: an all-background one keeps them all
        )
    except (AttributeError, TypeError, ValueError) as e:  # highdicom's complaint about the source headers
        raise DataError(str(series.folder), [f"{series.folder}: a DICOM SEG of this series cannot be made: {e}"]) from None


def seg_path_for(nifti_out: str | Path) -> Path:
    """Where the DICOM SEG of a label map goes: next to it, ``.nii.gz`` / ``.nii`` replaced by ``.dcm``."""
    path = Path(nifti_out)
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".dcm")
    return path.with_name(name + ".dcm")


def written_by_fedsegnet(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM SEG fedsegnet wrote (``Modality`` SEG, :data:`SEG_MANUFACTURER`,
    :data:`SEG_MODEL_NAME`)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM: not ours
        return False
    return (ds.get("Modality"), ds.get("Manufacturer"), ds.get("ManufacturerModelName")) == (
        "SEG", SEG_MANUFACTURER, SEG_MODEL_NAME,
    )  # fmt: skip


def check_seg_output(path: str | Path, protect: Sequence[str | Path] = (), overwrite: bool = False) -> Path:
    """Claim the SEG's file before any work (:func:`fedsegnet.outputs.claim_file`).

    Args:
        path: the SEG file (see :func:`seg_path_for`).
        protect: inputs never written (the series folders). Defaults to ().
        overwrite: replace ``path`` when it is a SEG fedsegnet wrote. Defaults to False.

    Raises:
        OutputError: naming ``path`` (flag ``--dicom-seg``): it lies inside a series folder (a SEG there
            would make the folder hold two series), exists (and is not ours, or ``overwrite`` is not
            given), or cannot be written.
    """
    check_protected(path, protect, "--dicom-seg", inside_ok=False)
    return claim_file(path, overwrite=overwrite, owned=written_by_fedsegnet, protect=list(protect), flag="--dicom-seg")


def same_grid_problems(series: Sequence[DicomSeries]) -> list[str]:
    """Problems of several series given as the channels of one case: each must share the first's grid."""
    first = series[0]
    problems = []
    for other in series[1:]:
        if other.shape != first.shape:
            problems.append(f"{other.folder}: shape {other.shape} differs from {first.folder} {first.shape}")
        elif not np.allclose(other.affine, first.affine, atol=1e-3):
            problems.append(f"{other.folder}: its slices lie elsewhere than those of {first.folder} (channels share one grid)")
    return problems
