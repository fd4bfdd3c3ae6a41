"""DICOM in, DICOM SEG out: a generated CT series (axis-aligned and oblique) is read with the right
geometry, ``fedsegnet infer`` segments it exactly as the same volume given as NIfTI, and the SEG it
writes references the series and holds the NIfTI's voxels slice for slice; every bad folder is
refused naming the folder, the file and the problem, with nothing written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from fedsegnet.cli import main
from fedsegnet.config import PRESETS
from fedsegnet.data.dicom import (
    SEG_MANUFACTURER,
    build_seg,
    load_series,
    read_series,
    seg_path_for,
    written_by_fedsegnet,
)
from fedsegnet.errors import DataError, FedSegNetError
from fedsegnet.training.loop import state_dict_for_exchange
from fedsegnet.training.spec import build_from_spec, model_spec

ROWS, COLS, SLICES = 32, 28, 10
PIXEL_SPACING = (0.8, 0.9)  # (between rows, between columns) mm
STEP = 2.0  # mm between slices


def _rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


AXIAL = (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))
OBLIQUE = tuple(_rotation([1.0, 2.0, 0.5], 35.0) @ v for v in AXIAL)


def _ds(value, digits):
    return float(value) if digits is None else round(float(value), digits)


def write_series(folder: Path, *, n=SLICES, orientation=AXIAL, origin=(-20.0, -15.0, 30.0), seed=0, descending=False,
                 prefix="IM", edit=None, digits=8) -> np.ndarray:  # fmt: skip
    """A CT series of ``n`` single-frame slices in ``folder``; returns the stored pixels ``(n, ROWS, COLS)``
    (int16, before the -1024 rescale). Files are named in no particular order; ``descending`` numbers
    the slices against their positions; ``edit(k, ds)`` changes slice ``k`` before it is saved; the
    geometry is rounded to ``digits`` decimals (None: full floats, longer than DICOM's 16-character
    decimal strings allow, as some scanners write them)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    row, col = orientation
    normal = np.cross(row, col)
    study, series_uid, frame = generate_uid(), generate_uid(), generate_uid()
    pixels = rng.integers(900, 1100, size=(n, ROWS, COLS)).astype(np.int16)
    pixels[2 : n - 2, 8:20, 6:18] += 300  # a brighter block: something to segment
    order = rng.permutation(n)
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P001", "Test^Phantom", "19700101", "O"
        ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = "A1", "S1", "20240101", "120000"
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", 3, "phantom"
        ds.InstanceNumber = n - k if descending else k + 1
        ds.ImageOrientationPatient = [_ds(v, digits) for v in (*row, *col)]
        ds.ImagePositionPatient = [_ds(v, digits) for v in np.asarray(origin) + k * STEP * normal]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = STEP
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = pixels[k].tobytes()
        if edit is not None:
            edit(k, ds)
        ds.save_as(folder / f"{prefix}{order[k]:04d}", enforce_file_format=True)
    return pixels


def expected_affine(orientation=AXIAL, origin=(-20.0, -15.0, 30.0)) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS, from the generator's geometry (not from the reader)."""
    row, col = orientation
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * PIXEL_SPACING[1], col * PIXEL_SPACING[0], STEP * np.cross(row, col)
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _model_file(path: Path, in_channels: int = 1) -> Path:
    tiny = PRESETS["tiny"]
    preset = dataclasses.replace(PRESETS["synthetic"], network_kwargs=dict(tiny.network_kwargs))  # classes organ, lesion
    spec = model_spec(preset, in_channels=in_channels, num_classes=3)
    torch.manual_seed(0)
    torch.save({"model": state_dict_for_exchange(build_from_spec(spec)), "train_conf": {"fedsegnet": spec}}, path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return _model_file(tmp_path_factory.mktemp("model") / "FL_global_model.pt")


@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
def test_series_geometry_and_pixels(tmp_path, orientation, descending):
    pixels = write_series(tmp_path / "ct", orientation=orientation, descending=descending)
    series = read_series(tmp_path / "ct")
    assert series.shape == (COLS, ROWS, SLICES) and len(series.files) == SLICES
    assert [int(h.InstanceNumber) for h in series.headers] == list(range(1, SLICES + 1))
    # whatever the numbering, voxel (i, j, k) lies where slice k's header says its pixel (row j, column i) lies
    for h, k in zip(series.headers, range(SLICES)):
        ipp = np.asarray(h.ImagePositionPatient, dtype=float)
        row, col = np.asarray(h.ImageOrientationPatient[:3], float), np.asarray(h.ImageOrientationPatient[3:], float)
        for i, j in ((0, 0), (COLS - 1, 3), (5, ROWS - 1)):
            lps = ipp + i * PIXEL_SPACING[1] * row + j * PIXEL_SPACING[0] * col
            ras = series.affine @ np.array([i, j, k, 1.0])
            np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)
    if not descending:
        np.testing.assert_allclose(series.affine, expected_affine(orientation), atol=1e-6)
    img = load_series(series)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.float32 and data.shape == series.shape
    k_of_position = range(SLICES) if not descending else range(SLICES - 1, -1, -1)  # position index -> volume slice
    for position, k in enumerate(k_of_position):
        np.testing.assert_array_equal(data[:, :, k], pixels[position].T.astype(np.float32) - 1024.0)  # rescale applied


def test_geometry_from_overlong_decimal_strings(tmp_path, caplog):
    """MONAI's reader drops the orientation written with more than 16 characters (and would give an
    identity affine); the checked headers' geometry is used, and that is logged."""
    write_series(tmp_path / "ct", orientation=OBLIQUE, digits=None)
    series = read_series(tmp_path / "ct")
    np.testing.assert_allclose(series.affine, expected_affine(OBLIQUE), atol=1e-6)
    img = load_series(series)
    np.testing.assert_allclose(img.affine, expected_affine(OBLIQUE), atol=1e-5)
    assert any("the headers' affine is used" in r.getMessage() for r in caplog.records)


def test_infer_on_a_series_equals_infer_on_its_nifti_and_writes_a_matching_seg(tmp_path, model, capsys):
    pixels = write_series(tmp_path / "ct", orientation=OBLIQUE)
    (tmp_path / "ct" / "README.txt").write_text("exported by a PACS")  # not DICOM: passed over
    (tmp_path / "ct" / ".DS_Store").write_bytes(b"\0\1")  # hidden: passed over
    volume = np.transpose(pixels, (2, 1, 0)).astype(np.float32) - 1024.0  # (columns, rows, slices)
    nib.save(nib.Nifti1Image(volume, expected_affine(OBLIQUE)), str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "out" / "seg.nii.gz"
    assert main(["infer", "--model", str(model), "--image", str(tmp_path / "ct"), "--out", str(out), "--dicom-seg"]) == 0
    assert "DICOM SEG" in capsys.readouterr().out
    assert main(["infer", "--model", str(model), "--image", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "ref.nii.gz")]) == 0
    got, ref = nib.load(str(out)), nib.load(str(tmp_path / "ref.nii.gz"))
    labels = np.asarray(got.dataobj)
    np.testing.assert_allclose(got.affine, expected_affine(OBLIQUE), atol=1e-5)
    np.testing.assert_array_equal(labels, np.asarray(ref.dataobj))
    assert len(np.unique(labels)) > 1, "a one-class prediction would prove nothing"

    series = read_series(tmp_path / "ct")
    seg_file = seg_path_for(out)
    assert seg_file == tmp_path / "out" / "seg.dcm" and written_by_fedsegnet(seg_file)
    seg = hd.seg.segread(seg_file)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["organ", "lesion"]
    frames = seg.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True,
                                               assert_missing_frames_are_empty=True)  # fmt: skip
    for k in range(SLICES):  # frame of slice k = the NIfTI's slice k, row j = its y, column i = its x
        np.testing.assert_array_equal(frames[k], labels[:, :, k].T)
    # and read without highdicom: every frame names its source slice and segment, and holds its pixels
    ds = pydicom.dcmread(seg_file)
    assert ds.Modality == "SEG" and ds.Manufacturer == SEG_MANUFACTURER and ds.StudyInstanceUID == series.headers[0].StudyInstanceUID
    assert ds.FrameOfReferenceUID == series.headers[0].FrameOfReferenceUID
    (referenced,) = ds.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == series.series_instance_uid
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == set(series.sop_instance_uids)
    slice_of = {uid: k for k, uid in enumerate(series.sop_instance_uids)}
    stored = ds.pixel_array.reshape(int(ds.NumberOfFrames), ROWS, COLS)
    seen = set()
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = slice_of[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(stored[f], (labels[:, :, k].T == segment).astype(stored.dtype))
        np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient, series.headers[k].ImagePositionPatient)
        seen.add((k, segment))
    assert seen == {(k, s) for s in (1, 2) for k in range(SLICES) if (labels[:, :, k] == s).any()}


def test_seg_of_label_values_and_an_empty_label_map(tmp_path):
    """BraTS-style values (0, 1, 2, 4) become segments 1..3 described by the value; an all-background
    map still makes a valid SEG."""
    write_series(tmp_path / "ct", n=4)
    series = read_series(tmp_path / "ct")
    labels = np.zeros(series.shape, dtype=np.uint8)
    labels[3:9, 2:6, 1] = 4
    labels[10:12, 20:25, 2] = 1
    names = ["background", "necrotic_core", "edema", "enhancing"]
    seg = build_seg(labels, series, names, (0, 1, 2, 4))
    assert [s.SegmentDescription for s in seg.SegmentSequence] == [f"label value {v} of the NIfTI label map" for v in (1, 2, 4)]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Necrosis"
    seg.save_as(tmp_path / "seg.dcm")
    back = hd.seg.segread(tmp_path / "seg.dcm").get_pixels_by_source_instance(
        series.sop_instance_uids, combine_segments=True, assert_missing_frames_are_empty=True)  # fmt: skip
    np.testing.assert_array_equal(back, np.transpose(np.where(labels == 4, 3, labels), (2, 1, 0)))
    empty = build_seg(np.zeros(series.shape, np.uint8), series, names, (0, 1, 2, 4))
    assert int(empty.NumberOfFrames) >= 1
    with pytest.raises(FedSegNetError, match=r"value\(s\) \[3\] that no class has"):
        build_seg(np.full(series.shape, 3, np.uint8), series, names, (0, 1, 2, 4))
    with pytest.raises(FedSegNetError, match="not on the grid"):
        build_seg(labels[:, :, :2], series, names, (0, 1, 2, 4))


def test_two_series_as_two_channels(tmp_path, capsys):
    model = _model_file(tmp_path / "m2.pt", in_channels=2)
    write_series(tmp_path / "t1", seed=1)
    write_series(tmp_path / "t2", seed=2)
    out = tmp_path / "seg.nii.gz"
    assert main(["infer", "--model", str(model), "--image", str(tmp_path / "t1"), str(tmp_path / "t2"), "--out", str(out)]) == 0
    assert nib.load(str(out)).shape == (COLS, ROWS, SLICES)
    write_series(tmp_path / "moved", seed=3, origin=(0.0, 0.0, 0.0))
    capsys.readouterr()
    rc = main(["infer", "--model", str(model), "--image", str(tmp_path / "t1"), str(tmp_path / "moved"), "--out", str(tmp_path / "x.nii.gz")])
    assert rc == 3 and "moved: its slices lie elsewhere than those of" in capsys.readouterr().err
    one = _model_file(tmp_path / "m1.pt")
    rc = main(["infer", "--model", str(one), "--image", str(tmp_path / "t1"), str(tmp_path / "t2"), "--out", str(tmp_path / "y.nii.gz")])
    assert rc == 3 and "takes 1 input channel(s) but 2 DICOM series" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists() and not (tmp_path / "y.nii.gz").exists()


def _drop(keyword):
    def edit(k, ds):
        if k == 4:
            delattr(ds, keyword)

    return edit


def _set(keyword, value, at=4):
    def edit(k, ds):
        if k == at:
            setattr(ds, keyword, value)

    return edit


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _skip_slice(k, ds):
    if k >= 5:
        ds.ImagePositionPatient = [float(v) + (STEP if i == 2 else 0.0) for i, v in enumerate(ds.ImagePositionPatient)]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda f: f.mkdir(), r"ct: no DICOM files \(it is empty\)"),
        (lambda f: (f.mkdir(), (f / "notes.txt").write_text("hello")), r"ct: no DICOM files \(1 other file\(s\)\)"),
        (lambda f: write_series(f / "inner", n=3), r"ct: no DICOM files .*subfolders \(inner\) are not searched"),
        (lambda f: (write_series(f, n=4), write_series(f, n=3, seed=9, prefix="B")), r"ct: holds 2 series .*put each series in its own folder"),
        (lambda f: write_series(f, edit=_drop("ImagePositionPatient")), r"IM\d{4}: missing ImagePositionPatient"),
        (lambda f: write_series(f, edit=_drop("ImageOrientationPatient")), r"IM\d{4}: missing ImageOrientationPatient"),
        (lambda f: write_series(f, edit=_drop("PixelSpacing")), r"IM\d{4}: missing PixelSpacing"),
        (lambda f: write_series(f, edit=_drop("InstanceNumber")), r"IM\d{4}: missing InstanceNumber"),
        (lambda f: write_series(f, edit=_set("ImagePositionPatient", [1.0, float("nan"), 2.0])), r"ImagePositionPatient .* is not 3 finite"),
        (lambda f: write_series(f, edit=_set("ImageOrientationPatient", [1, 0, 0, 0, 0.8, 0.6])),
         r"IM\d{4}: ImageOrientationPatient .* differs from"),
        (lambda f: write_series(f, edit=_set("ImageOrientationPatient", [1, 0, 0, 1, 0, 0])), r"is not two orthogonal unit vectors"),
        (lambda f: write_series(f, edit=_set("PixelSpacing", [0.8, 1.2])), r"IM\d{4}: PixelSpacing \[0.8, 1.2\] differs"),
        (lambda f: write_series(f, edit=_set("InstanceNumber", 2)), r"IM\d{4}: InstanceNumber 2 is also that of IM\d{4}"),
        (lambda f: write_series(f, edit=_skip_slice), r"InstanceNumber \d+\): ImagePositionPatient .* is off the evenly spaced line(.|\n)*3 more slice"),
        (lambda f: write_series(f, edit=_set("ImagePositionPatient", [-20.0, -15.0, 30.0], at=9)), r"do not advance along the slice normal"),
        (lambda f: write_series(f, n=1), r"ct: one slice only \(IM0000\): a 3D series needs at least 2"),
        (lambda f: write_series(f, edit=_set("NumberOfFrames", 2)), r"IM\d{4}: a multi-frame image \(2 frames\)"),
        (lambda f: write_series(f, edit=_set("SamplesPerPixel", 3)), r"IM\d{4}: 3 samples per pixel \(colour\)"),
        (lambda f: (write_series(f), _truncate(f / "IM0003", 500)), r"IM0003: no SeriesInstanceUID \(a truncated file"),
    ],
    ids=["empty", "no-dicom", "subfolder", "two-series", "no-ipp", "no-iop", "no-spacing", "no-instance", "nan-ipp",
         "mixed-iop", "bad-iop", "mixed-spacing", "dup-instance", "gap", "flat", "one-slice", "multi-frame", "colour", "truncated"],
)  # fmt: skip
def test_bad_folders_are_refused_naming_folder_file_and_problem(tmp_path, make, match):
    folder = tmp_path / "ct"
    make(folder)
    with pytest.raises(DataError, match=match) as info:
        read_series(folder)
    assert str(folder) in str(info.value)


def test_truncated_pixel_data(tmp_path):
    write_series(tmp_path / "ct")
    _truncate(tmp_path / "ct" / "IM0005", 2000)  # the header is whole, the pixels are not
    series = read_series(tmp_path / "ct")
    with pytest.raises(DataError, match=r"ct: the pixel data cannot be read"):
        load_series(series)


def test_cli_refuses_bad_input_and_writes_nothing(tmp_path, model, capsys):
    write_series(tmp_path / "ct", n=4)
    write_series(tmp_path / "ct", n=3, seed=9, prefix="B")  # a second series in the same folder
    out = tmp_path / "out" / "seg.nii.gz"
    rc = main(["infer", "--model", str(model), "--image", str(tmp_path / "ct"), "--out", str(out), "--dicom-seg"])
    assert rc == 3 and "holds 2 series" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    rc = main(["infer", "--model", str(model), "--image", str(tmp_path / "nowhere"), "--out", str(tmp_path / "n.nii.gz")])
    assert rc == 3 and "nowhere" in capsys.readouterr().err  # not a folder: read as a (missing) NIfTI file, named
    write_series(tmp_path / "good", n=4)
    nifti = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(nifti))
    rc = main(["infer", "--model", str(model), "--image", str(nifti), "--out", str(out), "--dicom-seg"])
    assert rc == 2 and "--dicom-seg needs --image SERIES_FOLDER" in capsys.readouterr().err
    rc = main(["infer", "--model", str(model), "--image", str(tmp_path / "good"), str(nifti), "--out", str(out)])
    assert rc == 2 and "not both" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_seg_source_attributes(tmp_path, model, capsys):
    """A missing Type 1 attribute the SEG must copy is refused before any work; a missing Type 2 one
    (anonymised series) is copied empty."""
    write_series(tmp_path / "nostudy", n=4, edit=lambda k, ds: delattr(ds, "FrameOfReferenceUID"))
    out = tmp_path / "a" / "seg.nii.gz"
    rc = main(["infer", "--model", str(model), "--image", str(tmp_path / "nostudy"), "--out", str(out), "--dicom-seg"])
    err = capsys.readouterr().err
    assert rc == 3 and "missing FrameOfReferenceUID: a DICOM SEG copies them" in err and "IM" in err
    assert not out.exists() and not seg_path_for(out).exists()
    assert main(["infer", "--model", str(model), "--image", str(tmp_path / "nostudy"), "--out", str(out)]) == 0  # NIfTI only: fine
    write_series(tmp_path / "anon", n=4, edit=lambda k, ds: (delattr(ds, "PatientID"), delattr(ds, "AccessionNumber")))
    out = tmp_path / "b" / "seg.nii.gz"
    assert main(["infer", "--model", str(model), "--image", str(tmp_path / "anon"), "--out", str(out), "--dicom-seg"]) == 0
    ds = pydicom.dcmread(seg_path_for(out), stop_before_pixels=True)
    assert ds.PatientID == "" and ds.AccessionNumber == "" and ds.PatientName == "Test^Phantom"


def test_outputs_are_never_overwritten_unless_ours(tmp_path, model, capsys):
    write_series(tmp_path / "ct", n=4)
    out = tmp_path / "seg.nii.gz"
    args = ["infer", "--model", str(model), "--image", str(tmp_path / "ct"), "--out", str(out), "--dicom-seg"]
    assert main(args) == 0
    assert main(args) == 3 and "exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0  # both files are ours
    out.unlink()
    seg_path_for(out).write_bytes(b"someone else's file")
    capsys.readouterr()
    assert main(args + ["--overwrite"]) == 3
    err = capsys.readouterr().err
    assert f"--dicom-seg {seg_path_for(out)}: exists and was not written by fedsegnet" in err
    assert not out.exists() and seg_path_for(out).read_bytes() == b"someone else's file"
    rc = main(["infer", "--model", str(model), "--image", str(tmp_path / "ct"), "--out", str(tmp_path / "ct"), "--overwrite"])
    assert rc == 2 and len(list((tmp_path / "ct").iterdir())) == 4  # the series folder is never the output
    rc = main(["infer", "--model", str(model), "--image", str(tmp_path / "ct"), "--out", str(tmp_path / "ct" / "s.nii.gz"), "--dicom-seg"])
    assert rc == 3 and "lies inside the input" in capsys.readouterr().err  # a SEG there would make it hold two series
    assert len(list((tmp_path / "ct").iterdir())) == 4
