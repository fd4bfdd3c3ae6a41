"""Inference: the label comes back on the input's own grid (shape, orientation, affine), also for
LPS-stored and anisotropic inputs; several channels; folder mode; clear errors."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fedsegnet.cli import main
from fedsegnet.config import build_train_config
from fedsegnet.errors import FedSegNetError
from fedsegnet.training.spec import build_from_spec, load_model_file, model_spec
from fedsegnet.training.infer import cases_in_folder, check_inputs, predict_case, save_labels
from fedsegnet.training.loop import state_dict_for_exchange


def _model_file(path: Path, in_channels=1, num_classes=3) -> Path:
    spec = model_spec(build_train_config(preset="tiny").preset, in_channels=in_channels, num_classes=num_classes)
    torch.manual_seed(0)
    net = build_from_spec(spec)
    torch.save({"model": state_dict_for_exchange(net), "train_conf": {"fedsegnet": spec}}, path)
    return path


def _volume(path: Path, shape=(24, 20, 28), zooms=(1.0, 1.0, 1.0), axcodes=("R", "A", "S"), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=shape).astype(np.float32)
    data[6:14, 5:12, 8:20] += 3.0
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = [-12.0, 7.5, 3.0]
    img = nib.Nifti1Image(data, affine)
    if axcodes != ("R", "A", "S"):
        img = img.as_reoriented(nib.orientations.axcodes2ornt(axcodes))
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = _model_file(tmp_path_factory.mktemp("model") / "FL_global_model.pt")
    return path, *load_model_file(path)


@pytest.mark.parametrize(
    "axcodes, zooms",
    [(("R", "A", "S"), (1.0, 1.0, 1.0)), (("L", "P", "S"), (1.0, 1.0, 1.0)), (("R", "A", "S"), (1.5, 1.0, 2.0))],
)
def test_output_keeps_the_input_grid(tmp_path, model, axcodes, zooms):
    _, net, spec = model
    src = _volume(tmp_path / "img.nii.gz", zooms=zooms, axcodes=axcodes)
    labels, ref = predict_case(net, spec, [src])
    out = nib.load(str(save_labels(labels, ref, tmp_path / "seg.nii.gz")))
    inp = nib.load(str(src))
    assert out.shape == inp.shape and np.allclose(out.affine, inp.affine)
    assert nib.aff2axcodes(out.affine) == axcodes
    assert out.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}


@pytest.mark.parametrize("zoom", [1.5, 1.0])
def test_lps_storage_gives_the_same_segmentation_as_ras(tmp_path, model, zoom):
    """Voxel for voxel, at the model's spacing (1.5 mm, tiny preset) and from 1 mm, where the return
    to the input grid meets exact half-voxel ties (broken upwards in both)."""
    _, net, spec = model
    ras = _volume(tmp_path / "ras.nii.gz", zooms=(zoom,) * 3)
    lps = _volume(tmp_path / "lps.nii.gz", zooms=(zoom,) * 3, axcodes=("L", "P", "S"))
    a, _ = predict_case(net, spec, [ras])
    b, ref = predict_case(net, spec, [lps])
    to_ras = nib.orientations.ornt_transform(nib.orientations.io_orientation(ref.affine), nib.orientations.axcodes2ornt("RAS"))
    back = np.asarray(nib.Nifti1Image(b, ref.affine).as_reoriented(to_ras).dataobj)
    assert len(np.unique(a)) > 1, "a one-class prediction would prove nothing"
    np.testing.assert_array_equal(back, a)


def test_several_channels_and_folder_mode(tmp_path):
    path = _model_file(tmp_path / "m4.pt", in_channels=2)
    net, spec = load_model_file(path)
    folder = tmp_path / "images"
    folder.mkdir()
    for case in ("a", "b"):
        for ch in range(2):
            _volume(folder / f"{case}_{ch:04d}.nii.gz", seed=ch)
    cases = cases_in_folder(folder, 2)
    assert list(cases) == ["a", "b"] and [p.name for p in cases["a"]] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert main(["infer", "--model", str(path), "--image-dir", str(folder), "--out", str(tmp_path / "out")]) == 0
    for case in ("a", "b"):
        out = nib.load(str(tmp_path / "out" / f"{case}.nii.gz"))
        assert out.shape == (24, 20, 28)
    (folder / "b_0001.nii.gz").unlink()
    with pytest.raises(FedSegNetError, match=r"case 'b' has channel file\(s\) \[0\]"):
        cases_in_folder(folder, 2)


def test_cli_single_case(tmp_path, model, capsys):
    path, _, _ = model
    src = _volume(tmp_path / "img.nii.gz", axcodes=("L", "P", "S"))
    assert main(["infer", "--model", str(path), "--image", str(src), "--out", str(tmp_path / "seg.nii.gz")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert np.allclose(nib.load(str(tmp_path / "seg.nii.gz")).affine, nib.load(str(src)).affine)


def test_errors_name_the_problem(tmp_path, model, capsys):
    path, net, spec = model
    a = _volume(tmp_path / "a.nii.gz")
    b = _volume(tmp_path / "b.nii.gz", shape=(24, 20, 27))
    with pytest.raises(FedSegNetError, match=r"takes 1 input channel\(s\) but 2 image file\(s\)"):
        check_inputs([a, b], 1)
    with pytest.raises(FedSegNetError, match=r"b.nii.gz: shape \(24, 20, 27\) differs"):
        check_inputs([a, b], 2)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(FedSegNetError, match="broken.nii.gz: cannot be read as NIfTI"):
        predict_case(net, spec, [broken])
    with pytest.raises(FedSegNetError, match="missing.nii.gz: cannot be read"):
        check_inputs([tmp_path / "missing.nii.gz"], 1)
    rc = main(["infer", "--model", str(path), "--image", str(a), "--out", str(tmp_path / "o.nii.gz"), "--preset", "gpu"])
    assert rc == 2 and "trained with preset 'tiny'" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def _brats_model(path: Path, label_values=True) -> Path:
    preset = build_train_config(preset="brats", network="hybrid_unetr", patch_size=32, spacing=1.5).preset
    spec = model_spec(preset, in_channels=4, num_classes=4)
    if not label_values:
        spec["label_values"] = []
    torch.manual_seed(1)
    net = build_from_spec(spec)
    torch.save({"model": state_dict_for_exchange(net), "train_conf": {"fedsegnet": spec}}, path)
    return path


def test_one_4d_file_equals_its_channels_as_3d_files_and_brats_values_are_written(tmp_path):
    """MSD Task01 stores the 4 sequences in one 4D file; BraTS writes enhancing tumour as 4."""
    net, spec = load_model_file(_brats_model(tmp_path / "brats.pt"))
    assert spec["label_values"] == [0, 1, 2, 4] and spec["in_channels"] == 4
    channels = [_volume(tmp_path / f"c{ch}.nii.gz", seed=ch) for ch in range(4)]
    stacked = np.stack([np.asarray(nib.load(str(p)).dataobj) for p in channels], axis=-1)
    four_d = tmp_path / "case_4d.nii.gz"
    nib.save(nib.Nifti1Image(stacked, nib.load(str(channels[0])).affine), str(four_d))
    a, _ = predict_case(net, spec, channels)
    b, ref = predict_case(net, spec, [four_d])
    np.testing.assert_array_equal(a, b)
    assert ref.shape == (24, 20, 28, 4) and b.shape == (24, 20, 28)
    assert set(np.unique(a)) <= {0, 1, 2, 4}
    ids_net, ids_spec = load_model_file(_brats_model(tmp_path / "ids.pt", label_values=False))
    ids, _ = predict_case(ids_net, ids_spec, channels)  # same weights, class ids written
    np.testing.assert_array_equal(np.asarray([0, 1, 2, 4])[ids], a)
    assert len(np.unique(ids)) > 1, "a one-class prediction would prove nothing"
    folder = tmp_path / "msd"
    folder.mkdir()
    four_d.rename(folder / "BRATS_001.nii.gz")
    assert list(cases_in_folder(folder, 4)) == ["BRATS_001"]
    with pytest.raises(FedSegNetError, match=r"gives 4 channel\(s\) but the model takes 2"):
        check_inputs([folder / "BRATS_001.nii.gz"], 2)
