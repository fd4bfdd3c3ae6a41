"""Preflight: one test per failure, and all failures of a site in ONE DataError naming each file."""

import gzip
import logging
import json

import nibabel as nib
import numpy as np
import pytest

from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.preflight import preflight
from fedsegnet.errors import ConfigError, DataError

from .conftest import save_nifti


def _check(root, **kwargs):
    return preflight(load_datalist(root), **kwargs)


def _problems(root, **kwargs) -> list[str]:
    with pytest.raises(DataError) as err:
        _check(root, **kwargs)
    return err.value.problems


def test_valid_site_summary(make_site, caplog):
    root = make_site(n=3, n_val=1)
    with caplog.at_level(logging.INFO, logger="fedsegnet.data.preflight"):
        summary = _check(root)
    assert summary["site"] == "site-x"
    assert summary["n_cases"] == {"training": 2, "validation": 1} and summary["n_total"] == 3
    assert summary["shapes"] == [[12, 12, 12]] and summary["spacings"] == [[1.5, 1.5, 1.5]]
    assert summary["label_values"] == [0, 1, 2] and summary["channels"] == 1
    assert summary["class_voxels"][2] == 3 * 8
    assert summary["cases_without_foreground"] == 0
    assert sum("preflight site-x" in r.getMessage() for r in caplog.records) == 1
    json.dumps(summary)  # plain data


def test_synthetic_sites_pass(small_synth, small_synth_lps):
    for root in (small_synth / "site-1", small_synth_lps / "site-2"):
        assert _check(root)["label_values"] == [0, 1, 2]
    assert _check(small_synth / "test", check_splits=("validation", "test"))["n_total"] == 4


def test_missing_image_file(make_site):
    root = make_site()
    (root / "imagesTr" / "case_001.nii.gz").unlink()
    problems = _problems(root)
    assert problems == ["imagesTr/case_001.nii.gz (training[1] image): file not found"]


def test_missing_label_file(make_site):
    root = make_site()
    (root / "labelsTr" / "case_000.nii.gz").unlink()
    assert _problems(root) == ["labelsTr/case_000.nii.gz (training[0] label): file not found"]


def test_unreadable_file(make_site):
    root = make_site()
    (root / "imagesTr" / "case_000.nii.gz").write_bytes(b"this is not a NIfTI file")
    (problem,) = _problems(root)
    assert problem.startswith("imagesTr/case_000.nii.gz (training[0] image): cannot read")


def test_truncated_file(make_site):
    root = make_site()
    path = root / "labelsTr" / "case_001.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # header intact, voxel data cut
    (problem,) = _problems(root)
    assert problem.startswith("labelsTr/case_001.nii.gz (training[1] label): cannot read voxel data")


def test_shape_mismatch(make_site):
    root = make_site()
    save_nifti(root / "labelsTr" / "case_000.nii.gz", np.zeros((12, 12, 10), np.uint8))
    (problem,) = _problems(root)
    assert problem.startswith("labelsTr/case_000.nii.gz")
    assert "spatial shape (12, 12, 10) differs from image (12, 12, 12)" in problem


def test_affine_mismatch(make_site):
    root = make_site()
    path = root / "labelsTr" / "case_000.nii.gz"
    img = nib.load(str(path))
    affine = img.affine.copy()
    affine[0, 3] += 0.5
    save_nifti(path, np.asarray(img.dataobj), affine)
    (problem,) = _problems(root)
    assert problem.startswith("labelsTr/case_000.nii.gz") and "affine differs" in problem and "0.5 mm" in problem


def test_affine_within_tolerance_passes(make_site):
    root = make_site()
    path = root / "labelsTr" / "case_000.nii.gz"
    img = nib.load(str(path))
    affine = img.affine.copy()
    affine[0, 3] += 1e-4
    save_nifti(path, np.asarray(img.dataobj), affine)
    _check(root)


def test_label_values_outside_classes(make_site):
    root = make_site()
    label = np.zeros((12, 12, 12), np.uint8)
    label[0, 0, 0] = 7
    save_nifti(root / "labelsTr" / "case_001.nii.gz", label)
    assert _problems(root) == [
        "labelsTr/case_001.nii.gz (training[1] label): label values {7} not in declared classes [0, 1, 2]"
    ]


def test_non_integer_labels(make_site):
    root = make_site()
    label = np.zeros((12, 12, 12), np.float32)
    label[2:5, 2:5, 2:5] = 0.5
    save_nifti(root / "labelsTr" / "case_000.nii.gz", label)
    (problem,) = _problems(root)
    assert problem.startswith("labelsTr/case_000.nii.gz") and "non-integer label values" in problem and "0.5" in problem


def test_nan_in_image(make_site):
    root = make_site()
    image = np.zeros((12, 12, 12), np.float32)
    image[1, 2, 3] = np.nan
    image[4, 5, 6] = np.inf
    save_nifti(root / "imagesTr" / "case_001.nii.gz", image)
    assert _problems(root) == ["imagesTr/case_001.nii.gz (training[1] image): 2 NaN/Inf voxel(s)"]


def test_wrong_channel_count(make_site):
    root = make_site(channels=2)
    save_nifti(root / "imagesTr" / "case_000.nii.gz", np.zeros((12, 12, 12), np.float32))
    (problem,) = _problems(root)
    assert problem.startswith("imagesTr/case_000.nii.gz") and "has 1 channel(s), modality declares 2" in problem


def test_multichannel_4d_and_separate_files_pass(make_site, tmp_path):
    root = make_site(channels=3)
    assert _check(root)["channels"] == 3
    # image given as a list of per-channel files
    spec = json.loads((root / "dataset.json").read_text())
    for i, case in enumerate(spec["training"]):
        files = []
        for c in range(3):
            files.append(f"imagesTr/case_{i:03d}_{c}.nii.gz")
            save_nifti(root / files[-1], np.zeros((12, 12, 12), np.float32))
        case["image"] = files
    (root / "dataset.json").write_text(json.dumps(spec))
    assert _check(root)["channels"] == 3


def test_empty_training(make_site):
    root = make_site(n=2, n_val=2)
    problems = _problems(root)
    assert problems == [f"{root / 'dataset.json'}: 'training' is empty; a site needs at least one training case"]
    _check(root, check_splits=("validation",))  # fine when training is not checked


def test_several_failures_one_error_each_names_its_file(make_site):
    root = make_site(n=4, n_val=1)
    (root / "imagesTr" / "case_000.nii.gz").unlink()
    save_nifti(root / "labelsTr" / "case_001.nii.gz", np.full((12, 12, 12), 9, np.uint8))
    image = np.zeros((12, 12, 12), np.float32)
    image[0, 0, 0] = np.nan
    save_nifti(root / "imagesTr" / "case_002.nii.gz", image)
    save_nifti(root / "labelsTr" / "case_003.nii.gz", np.zeros((8, 8, 8), np.uint8))  # validation case
    with pytest.raises(DataError) as err:
        _check(root)
    problems = err.value.problems
    assert err.value.site == "site-x"
    assert len(problems) == 4
    assert problems[0].startswith("imagesTr/case_000.nii.gz (training[0] image): file not found")
    assert problems[1].startswith("labelsTr/case_001.nii.gz (training[1] label): label values {9}")
    assert problems[2].startswith("imagesTr/case_002.nii.gz (training[2] image): 1 NaN/Inf")
    assert problems[3].startswith("labelsTr/case_003.nii.gz (validation[0] label): spatial shape")
    for p in problems:
        assert p in str(err.value)


def test_bad_arguments(make_site):
    root = make_site()
    with pytest.raises(ConfigError) as err:
        _check(root, check_splits=("train",))
    assert err.value.field == "check_splits" and "validation" in str(err.value)
    with pytest.raises(ConfigError) as err:
        _check(root, affine_tol=-1.0)
    assert err.value.field == "affine_tol"


def test_does_not_mutate_datalist(make_site):
    dl = load_datalist(make_site())
    before = [dict(c) for c in dl.training]
    preflight(dl)
    assert dl.training == before
