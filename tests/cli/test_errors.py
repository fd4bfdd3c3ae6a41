"""One-line errors instead of raw tracebacks, each naming the file or flag, and exit codes by kind:
2 usage/settings, 3 data/files, 1 a failed run."""

import gzip
import json
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fedsegnet import cli
from fedsegnet.cli import main
from fedsegnet.data.preflight import MAX_VOXELS, check_voxel_bound
from fedsegnet.data.transforms import check_case_headers
from fedsegnet.errors import ConfigError, FedSegNetError, RunError
from fedsegnet.flare.ops.jobs import job_args
from fedsegnet.flare.ops.poc import STATE_FILE, PocSystem
from fedsegnet.training.site import pick_device
from tests.training.test_infer import _model_file, _volume

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return _model_file(tmp_path_factory.mktemp("model") / "FL_global_model.pt")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def huge_header_nifti(path: Path, shape=(2000, 2000, 2000)) -> Path:
    """A tiny NIfTI file whose header declares ``shape`` (the dim field patched; no data allocated)."""
    raw = path.with_suffix("").with_suffix(".tmp.nii") if path.name.endswith(".gz") else path
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.uint8), np.eye(4)), str(raw))
    data = bytearray(raw.read_bytes())
    data[40:48] = struct.pack("<4h", len(shape), *shape)  # dim[0..3]
    if path.name.endswith(".gz"):
        raw.unlink()
        path.write_bytes(gzip.compress(bytes(data)))
    else:
        path.write_bytes(bytes(data))
    return path


# ------------------------------------------------------------------------------------------- infer
def test_infer_unknown_extension_is_a_usage_error(tmp_path, model_path, capsys):
    scan = _volume(tmp_path / "scan.nii.gz")
    assert main(["infer", "--model", str(model_path), "--image", str(scan), "--out", str(tmp_path / "seg.png")]) == 2
    assert "seg.png" in _one_line_error(capsys) and not (tmp_path / "seg.png").exists()


def test_infer_unwritable_out_names_it(tmp_path, model_path, capsys):
    scan = _volume(tmp_path / "scan.nii.gz")
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "seg.nii.gz"  # its folder is a file: cannot be created, whoever runs it
    assert main(["infer", "--model", str(model_path), "--image", str(scan), "--out", str(out)]) == 3
    assert str(out) in _one_line_error(capsys)


def test_infer_missing_image_dir_names_it(tmp_path, model_path, capsys):
    missing = tmp_path / "nope"
    assert main(["infer", "--model", str(model_path), "--image-dir", str(missing), "--out", str(tmp_path / "o")]) == 3
    assert str(missing) in _one_line_error(capsys) and not (tmp_path / "o").exists()


def test_infer_both_or_neither_input_is_a_usage_error(tmp_path, model_path, capsys):
    assert main(["infer", "--model", str(model_path), "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "--image" in _one_line_error(capsys)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_infer_huge_header_is_refused_before_reading(tmp_path, model_path, capsys, suffix):
    scan = huge_header_nifti(tmp_path / f"huge{suffix}")
    assert nib.load(str(scan)).shape == (2000, 2000, 2000)
    assert main(["infer", "--model", str(model_path), "--image", str(scan), "--out", str(tmp_path / "o.nii.gz")]) == 3
    err = _one_line_error(capsys)
    assert str(scan) in err and "(2000, 2000, 2000)" in err and "MAX_VOXELS" in err


# ------------------------------------------------------------------------------------------- device
def test_absent_device_is_a_usage_error_naming_the_flag(tmp_path, model_path, capsys):
    scan = _volume(tmp_path / "scan.nii.gz")
    rc = main(["infer", "--model", str(model_path), "--image", str(scan), "--out", str(tmp_path / "o.nii.gz"), "--device", "cuda:7"])
    assert rc == 2 and "--device='cuda:7'" in _one_line_error(capsys)


@pytest.mark.parametrize("device", ["cuda:7", "gpu", "cuda:-1x"])
def test_pick_device_refuses_absent_or_unknown_devices(device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ConfigError, match="device"):
        pick_device(device)


def test_pick_device_keeps_working_devices():
    assert pick_device("cpu") == torch.device("cpu") and pick_device(None).type in ("cpu", "cuda")


def test_report_absent_device_is_refused_before_writing(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "fedsegnet_rounds.jsonl").write_text("")
    assert main(["report", str(run), "--out", str(tmp_path / "r"), "--device", "cuda:7"]) == (0 if torch.cuda.device_count() > 7 else 2)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------- data
def test_data_baseline_missing_folder(capsys):
    assert main(["data", "baseline", "--data", "/missing/fedsegnet-data"]) == 3
    assert "/missing/fedsegnet-data" in _one_line_error(capsys)


def test_preflight_refuses_a_huge_header_as_a_data_problem(tmp_path):
    from fedsegnet.data.datalist import load_datalist, write_datalist
    from fedsegnet.data.preflight import preflight
    from fedsegnet.errors import DataError

    site = tmp_path / "site-1"
    (site / "imagesTr").mkdir(parents=True)
    (site / "labelsTr").mkdir()
    huge_header_nifti(site / "imagesTr" / "c.nii.gz")
    huge_header_nifti(site / "labelsTr" / "c.nii.gz")
    write_datalist(site, labels={0: "background", 1: "x"}, modality={0: "CT"},
                   training=[{"image": "imagesTr/c.nii.gz", "label": "labelsTr/c.nii.gz"}], validation=[])  # fmt: skip
    with pytest.raises(DataError, match=r"imagesTr/c.nii.gz.*\(2000, 2000, 2000\)"):
        preflight(load_datalist(site))


def test_loaders_refuse_a_huge_header(tmp_path):
    scan = huge_header_nifti(tmp_path / "huge.nii.gz")
    with pytest.raises(FedSegNetError, match="huge.nii.gz"):
        check_case_headers([{"image": str(scan)}])
    check_case_headers([{"image": str(_volume(tmp_path / "ok.nii.gz"))}])  # a normal one passes
    with pytest.raises(FedSegNetError, match="more than"):
        check_voxel_bound("x.nii", (MAX_VOXELS + 1,))


# ------------------------------------------------------------------------------------------- corrupt state and configs
def test_corrupt_poc_state_names_the_file_and_line(tmp_path, capsys):
    ws = tmp_path / "poc"
    ws.mkdir()
    (ws / STATE_FILE).write_text('{"sites": ["site-1"],\n "pids": {oops}\n}')
    assert main(["poc", "status", "-w", str(ws)]) == 3
    err = _one_line_error(capsys)
    assert STATE_FILE in err and "line 2" in err
    (ws / STATE_FILE).write_text(json.dumps({"pids": {}}))
    with pytest.raises(FedSegNetError, match="'sites' missing"):
        PocSystem.load(ws)


def test_corrupt_job_config_names_the_file_and_line(tmp_path, capsys):
    job = tmp_path / "job"
    shutil.copytree(REPO / "jobs" / "fedavg", job)
    config = job / "app" / "config" / "config_fed_client.json"
    config.write_text('{\n  "num_rounds": 2,\n  oops\n}')
    with pytest.raises(FedSegNetError, match="config_fed_client.json: not valid JSON.*line 3"):
        job_args(job)
    assert main(["job", "set", str(job), "--out", str(tmp_path / "out"), "num_rounds=3"]) == 3
    assert "config_fed_client.json" in _one_line_error(capsys) and not (tmp_path / "out").exists()


def test_missing_job_folder_is_one_line(tmp_path, capsys):
    assert main(["job", "set", str(tmp_path / "nojob"), "--out", str(tmp_path / "out")]) == 3
    assert "nojob" in _one_line_error(capsys)


# ------------------------------------------------------------------------------------------- exit codes
def test_exit_codes_by_kind(tmp_path, capsys, monkeypatch):
    assert main(["job", "set", str(REPO / "jobs" / "fedavg"), "--out", str(tmp_path / "j"), "num_rounds=0"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["data", "synth"])  # argparse: --out missing
    assert e.value.code == 2

    def failed_run(args):
        raise RunError("simulator did not finish within 1 s; log: x.log")

    monkeypatch.setattr(cli.job, "_cmd_simulate", failed_run)
    assert main(["job", "simulate", "jobs/fedavg", "-w", str(tmp_path / "ws")]) == 1
    assert cli.exit_code(FedSegNetError("x")) == 3 and cli.exit_code(ConfigError("f", 1, "bad")) == 2


def test_help_states_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes" in out and "3  data or files" in out and "--overwrite" in out
    assert "exit code" in cli.__doc__.lower() and "3  data or files" in cli.__doc__
