"""Voxel orientation: axis codes, reorienting arrays and NIfTI files with the same world coordinates."""

import nibabel as nib
import numpy as np
import pytest

from fedsegnet.data.orientation import check_axcodes, reorient, reorient_nifti
from fedsegnet.errors import ConfigError


@pytest.mark.parametrize("codes, expected", [("ras", ("R", "A", "S")), (("l", "P", "s"), ("L", "P", "S")), ("PIR", ("P", "I", "R"))])
def test_check_axcodes_normalises(codes, expected):
    assert check_axcodes(codes) == expected


@pytest.mark.parametrize("bad", ["RAX", "RRS", "RA", "RASL", 5, None, ("RA", "S", "")])
def test_check_axcodes_bad_codes_name_the_field(bad):
    with pytest.raises(ConfigError) as err:
        check_axcodes(bad, "orientation")
    assert err.value.field == "orientation"


@pytest.mark.parametrize("codes", ["LPS", "PIR", "RAS"])
@pytest.mark.parametrize("shape", [(4, 5, 6), (4, 5, 6, 2)])
def test_reorient_shape_world_and_round_trip(codes, shape):
    rng = np.random.default_rng(0)
    data = rng.standard_normal(shape).astype(np.float32)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-3.0, 4.0, 7.0]
    before = data.copy()
    out, new_affine = reorient(data, affine, codes)
    np.testing.assert_array_equal(data, before)  # the input is not modified
    assert out.dtype == data.dtype and out.flags.c_contiguous and new_affine.shape == (4, 4)
    assert sorted(out.shape[:3]) == sorted(shape[:3]) and out.shape[3:] == shape[3:]
    assert nib.aff2axcodes(new_affine) == tuple(codes)
    ijk = np.array([1, 2, 3, 1.0])  # the voxel at a world point has the same value in both
    ijk_new = np.rint(np.linalg.inv(new_affine) @ (affine @ ijk)).astype(int)[:3]
    np.testing.assert_array_equal(out[tuple(ijk_new)], data[1, 2, 3])
    back, back_affine = reorient(out, new_affine, "RAS")
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine, atol=1e-9)


def test_reorient_bad_codes():
    with pytest.raises(ConfigError) as err:
        reorient(np.zeros((2, 2, 2)), np.eye(4), "XYZ")
    assert err.value.field == "axcodes"


@pytest.mark.parametrize("codes", ["LPS", "PIR", ("A", "S", "L")])
def test_reorient_nifti_preserves_world_coordinates(small_synth, tmp_path, codes):
    src = small_synth / "site-1" / "labelsTr" / "site-1_000.nii.gz"
    dst = reorient_nifti(src, tmp_path / "x" / "out.nii.gz", codes)
    a, b = nib.load(str(src)), nib.load(str(dst))
    assert nib.aff2axcodes(b.affine) == tuple(codes)
    assert b.get_data_dtype() == a.get_data_dtype()
    da, db = np.asarray(a.dataobj), np.asarray(b.dataobj)
    # the voxel at world point w has the same value in both files
    ijk = np.array([3, 7, 11, 1.0])
    world = a.affine @ ijk
    ijk_b = np.rint(np.linalg.inv(b.affine) @ world).astype(int)[:3]
    assert da[3, 7, 11] == db[tuple(ijk_b)]
    back = reorient_nifti(dst, tmp_path / "back.nii.gz", "RAS")
    np.testing.assert_array_equal(np.asarray(nib.load(str(back)).dataobj), da)
    np.testing.assert_allclose(nib.load(str(back)).affine, a.affine, atol=1e-6)


def test_reorient_nifti_bad_codes(small_synth, tmp_path):
    src = small_synth / "site-1" / "labelsTr" / "site-1_000.nii.gz"
    for bad in ("RAX", "RRS", "RA"):
        with pytest.raises(ConfigError) as err:
            reorient_nifti(src, tmp_path / "o.nii.gz", bad)
        assert err.value.field == "axcodes"
