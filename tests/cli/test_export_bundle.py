"""``fedsegnet export bundle``: the MONAI bundle runs with ``python -m monai.bundle run`` and writes the
label maps ``fedsegnet infer`` writes, voxel for voxel (a FedSegNet network, and a MONAI network with
fedsegnet not importable); MONAI checks its network against its metadata; the export refuses what it
must not replace and a config that would not reproduce fedsegnet's preprocessing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fedsegnet.cli import main
from fedsegnet.config import PRESETS
from fedsegnet.outputs import MARKER
from fedsegnet.training.loop import state_dict_for_exchange
from fedsegnet.training.spec import build_from_spec, model_spec

MANDATORY = ("version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
             "description", "authors", "copyright", "network_data_format")  # fmt: skip
"""metadata.json's mandatory keys (MONAI Bundle Specification; MONAI 1.6 reads the older
``optional_packages_version`` as ``required_packages_version``)."""
TENSOR_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def")


def _model_file(path: Path, preset, **changes) -> Path:
    spec = model_spec(dataclasses.replace(preset, **changes), in_channels=preset.in_channels, num_classes=preset.num_classes)
    torch.manual_seed(0)
    torch.save({"model": state_dict_for_exchange(build_from_spec(spec)), "train_conf": {"fedsegnet": spec}}, path)
    return path


def _scan(path: Path, shape, zooms, axcodes="RAS", seed=0, channels=None) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=shape + ((channels,) if channels else ())).astype(np.float32)
    data[4:12, 5:11, 6:14] += 3.0
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = [-12.0, 7.5, 3.0]
    img = nib.Nifti1Image(data, affine)
    if axcodes != "RAS":
        img = img.as_reoriented(nib.orientations.axcodes2ornt(tuple(axcodes)))
    nib.save(img, str(path))
    return path


def _run_bundle(bundle: Path, scans: Path, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--dataset_dir", str(scans), "--output_dir", str(out)]  # fmt: skip
    run = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _same_labels(bundle_out: Path, infer_out: Path, cases) -> None:
    for case in cases:
        theirs, ours = nib.load(str(bundle_out / f"{case}_seg.nii.gz")), nib.load(str(infer_out / f"{case}.nii.gz"))
        a, b = np.asarray(theirs.dataobj), np.asarray(ours.dataobj)
        assert theirs.get_data_dtype() == np.uint8 and a.shape == b.shape
        np.testing.assert_allclose(theirs.affine, ours.affine, atol=1e-5)
        assert len(np.unique(b)) > 1, "a one-class prediction would prove nothing"
        np.testing.assert_array_equal(a, b, err_msg=f"{case}: {int((a != b).sum())} of {a.size} voxels differ")


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    """A tiny-preset model (hybrid_unetr: a FedSegNet network, 1.5 mm) and its bundle."""
    root = tmp_path_factory.mktemp("hybrid")
    model = _model_file(root / "FL_global_model.pt", PRESETS["tiny"])
    assert main(["export", "bundle", str(model), "--out", str(root / "bundle")]) == 0
    return model, root / "bundle"


def test_bundle_layout_and_metadata(hybrid):
    model, bundle = hybrid
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "scripts/__init__.py",
                 "scripts/fedsegnet_infer.py", "docs/README.md", "LICENSE"):  # fmt: skip
        assert (bundle / name).is_file(), name
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert all(k in meta for k in MANDATORY) and meta["schema"].endswith(".json")
    for tensor in (meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]):
        assert all(k in tensor for k in TENSOR_KEYS)
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "class_1", "2": "class_2"}
    assert meta["required_packages_version"]["fedsegnet"]  # a FedSegNet network: the bundle says it needs the package
    provenance = json.loads(meta["fedsegnet"])
    assert provenance["spec"]["network"] == "hybrid_unetr" and provenance["model_file"] == model.name
    assert provenance["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    saved = torch.load(model, map_location="cpu", weights_only=True)["model"]
    assert sorted(state) == sorted(saved) and all(torch.equal(state[k], saved[k]) for k in saved)


def test_bundle_segments_like_fedsegnet_infer(tmp_path, hybrid):
    """Two scans: LPS-stored and anisotropic, and 0.75 mm isotropic, where most voxels sit exactly
    halfway between two voxels of the 1.5 mm model grid on some axis (ties, broken upwards by both)."""
    model, bundle = hybrid
    scans = tmp_path / "scans"
    scans.mkdir()
    _scan(scans / "lps.nii.gz", (24, 20, 18), (1.2, 0.9, 2.0), axcodes="LPS")
    _scan(scans / "fine.nii.gz", (30, 26, 20), (0.75, 0.75, 0.75), seed=1)
    run = _run_bundle(bundle, scans, tmp_path / "bundle_out")
    assert sorted(p.name for p in (tmp_path / "bundle_out").iterdir()) == ["fine_seg.nii.gz", "lps_seg.nii.gz"], run.stderr
    assert main(["infer", "--model", str(model), "--image-dir", str(scans), "--out", str(tmp_path / "infer_out")]) == 0
    _same_labels(tmp_path / "bundle_out", tmp_path / "infer_out", ["lps", "fine"])


def test_monai_network_bundle_needs_no_fedsegnet(tmp_path):
    """A SegResNet model with BraTS's 4 channels and label values 0/1/2/4: the bundle names only MONAI
    components and runs with fedsegnet made unimportable, on nnU-Net-named channel files."""
    model = _model_file(tmp_path / "brats.pt", PRESETS["brats"], network="segresnet", patch_size=(32, 32, 32),
                        network_kwargs={"init_filters": 8, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)}, spacing=(1.5, 1.5, 1.5))  # fmt: skip
    assert main(["export", "bundle", str(model), "--out", str(tmp_path / "bundle")]) == 0
    config = (tmp_path / "bundle" / "configs" / "inference.json").read_text()
    assert "fedsegnet." not in config.replace("scripts.fedsegnet_infer", "")
    meta = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert "fedsegnet" not in meta["required_packages_version"]
    scans = tmp_path / "scans"
    scans.mkdir()
    for case, seed in (("a", 0), ("b", 5)):
        for channel in range(4):
            _scan(scans / f"{case}_{channel:04d}.nii.gz", (20, 22, 16), (1.0, 1.0, 1.5), seed=seed + channel)
    blocked = tmp_path / "blocked"
    (blocked / "fedsegnet").mkdir(parents=True)
    (blocked / "fedsegnet" / "__init__.py").write_text("raise ImportError('fedsegnet is not installed here')\n")
    _run_bundle(tmp_path / "bundle", scans, tmp_path / "bundle_out", env={"PYTHONPATH": str(blocked)})
    assert main(["infer", "--model", str(model), "--image-dir", str(scans), "--out", str(tmp_path / "infer_out")]) == 0
    for case in ("a", "b"):  # the bundle names its output after the first channel file
        (tmp_path / "bundle_out" / f"{case}_0000_seg.nii.gz").rename(tmp_path / "bundle_out" / f"{case}_seg.nii.gz")
    _same_labels(tmp_path / "bundle_out", tmp_path / "infer_out", ["a", "b"])
    values = set(np.unique(np.asarray(nib.load(str(tmp_path / "infer_out" / "a.nii.gz")).dataobj)).tolist())
    assert values <= {0, 1, 2, 4} and values - {0, 1, 2}, f"BraTS's label values expected, got {values}"


def test_monai_verifies_the_network_against_the_metadata(hybrid, monkeypatch):
    from monai.bundle import verify_net_in_out

    _, bundle = hybrid
    monkeypatch.chdir(bundle)
    verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json", config_file="configs/inference.json", device="cpu")


def test_destination_rules(tmp_path, hybrid, capsys):
    model, bundle = hybrid
    out = tmp_path / "b"
    assert main(["export", "bundle", str(model), "--out", str(out)]) == 0
    assert main(["export", "bundle", str(model), "--out", str(out)]) == 3 and "exists and is not empty" in capsys.readouterr().err
    assert main(["export", "bundle", str(model), "--out", str(out), "--overwrite"]) == 0  # ours: replaced
    (out / "docs" / "notes.md").write_text("mine")
    assert main(["export", "bundle", str(model), "--out", str(out), "--overwrite"]) == 3
    assert "did not write (first: docs/notes.md)" in capsys.readouterr().err and (out / "docs" / "notes.md").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("keep")
    assert main(["export", "bundle", str(model), "--out", str(foreign), "--overwrite"]) == 3
    assert "not written by fedsegnet" in capsys.readouterr().err and (foreign / "x.txt").read_text() == "keep"
    synth = tmp_path / "synth"
    synth.mkdir()
    (synth / MARKER).write_text(json.dumps({"command": "data synth"}))
    assert main(["export", "bundle", str(model), "--out", str(synth), "--overwrite"]) == 3
    assert "written by `fedsegnet data synth`" in capsys.readouterr().err
    assert main(["export", "bundle", str(model), "--out", str(model), "--overwrite"]) == 3
    assert "is the input" in capsys.readouterr().err and model.is_file()


def test_bad_model_writes_nothing(tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    assert main(["export", "bundle", str(broken), "--out", str(tmp_path / "b")]) == 3
    assert "broken.pt: not a readable PyTorch model file" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_config_that_would_not_reproduce_infer_is_refused(tmp_path, hybrid, monkeypatch, capsys):
    import fedsegnet.bundle as fb

    with pytest.raises(fb.FedSegNetError, match="intensity='sqrt': no MONAI bundle form"):
        fb.inference_config({"intensity": "sqrt", "network": "hybrid_unetr", "in_channels": 1, "num_classes": 2,
                             "patch_size": [32, 32, 32], "spacing": [1.0, 1.0, 1.0]})  # fmt: skip
    model, _ = hybrid
    monkeypatch.setattr(fb, "_intensity", lambda spec: {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0})
    assert main(["export", "bundle", str(model), "--out", str(tmp_path / "b")]) == 3
    assert "preprocessing gives another tensor than fedsegnet infer's" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_text_from_the_model_file_never_becomes_config_code():
    """The model file is untrusted: a network argument or a name MONAI would read as code, a reference
    or a macro is refused; a dict argument is one literal, whose keys MONAI never instantiates."""
    import fedsegnet.bundle as fb

    spec = {"network": "segresnet", "in_channels": 1, "num_classes": 2, "patch_size": [32, 32, 32]}
    with pytest.raises(fb.FedSegNetError, match=r"network_kwargs.norm=.\$__import__"):
        fb.network_def({**spec, "network_kwargs": {"norm": "$__import__('os').system('x')"}})
    with pytest.raises(fb.FedSegNetError, match=r"network_kwargs.act\[1\].inplace"):
        fb.network_def({**spec, "network_kwargs": {"act": ["relu", {"inplace": "@network"}]}})
    net = fb.network_def({**spec, "network_kwargs": {"act": {"_target_": "os.system", "command": "ls"}}})
    assert net["act"] == "${'_target_': 'os.system', 'command': 'ls'}"  # a literal: SegResNet gets a dict, nothing is built
    full = {**spec, "intensity": "zscore", "spacing": [1.0, 1.0, 1.0], "network_kwargs": {}, "classes": [["@network", "x"]]}
    with pytest.raises(fb.FedSegNetError, match=r"classes\[0\]='@network': a name in a bundle may not hold"):
        fb.metadata(full, "m.pt", "0" * 64)


@pytest.mark.parametrize(
    "network, kwargs, target",
    [
        ("swin_unetr", {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "norm_name": ["group", {"num_groups": 3}]},
         "SwinUNETR"),
        ("unetr", {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}, "UNETR"),
        ("segresnet", {"init_filters": 8}, "SegResNet"),
        ("dca_unetr", {"channels": [8, 16, 32], "num_heads": 2, "num_layers": 1}, "fedsegnet.networks.build_network"),
    ],
)  # fmt: skip
def test_network_def_builds_the_model_network(network, kwargs, target):
    """Every kind of network: the bundle's network_def builds a network that takes the model's weights strictly."""
    import fedsegnet.bundle as fb

    spec = {"in_channels": 2, "num_classes": 3, "intensity": "zscore", "spacing": [1.0, 1.0, 1.0], "network": network,
            "network_kwargs": kwargs, "patch_size": [32, 32, 32]}  # fmt: skip
    config = fb.inference_config(spec)
    assert config["network_def"]["_target_"] == target
    fb._check_network(config, build_from_spec(spec))  # raises if a weight's name or shape differs
    with pytest.raises(fb.FedSegNetError, match="does not build the model's network"):
        fb._check_network(config, build_from_spec({**spec, "num_classes": 4}))
