"""Nothing is lost: every command that writes refuses an existing destination (unless --overwrite, and
then only one fedsegnet wrote), and never writes its source job or its input scans."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fedsegnet.cli import main
from fedsegnet.flare.ops.poc import STATE_FILE
from fedsegnet.outputs import MARKER
from fedsegnet.report import RECORDS
from tests.training.test_infer import _model_file, _volume

REPO = Path(__file__).resolve().parents[2]
EXIT_DATA = 3


def _unrelated(tmp_path, name="unrelated") -> Path:
    folder = tmp_path / name
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    (folder / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return folder


def _intact(folder: Path) -> bool:
    return (folder / "notes.txt").read_text() == "keep me" and (folder / "sub" / "data.bin").read_bytes() == b"\x00\x01"


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def src_job(tmp_path) -> Path:
    jobs = tmp_path / "jobs"
    shutil.copytree(REPO / "jobs" / "fedavg", jobs / "fedavg")
    return jobs / "fedavg"


# ------------------------------------------------------------------------------------------- job
@pytest.mark.parametrize("command", ["set", "pack", "resume"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_job_commands_keep_an_unrelated_out_folder(tmp_path, src_job, command, overwrite, capsys):
    folder = _unrelated(tmp_path)
    extra = ["--from", "0123abcd-0000-0000-0000-000000000000"] if command == "resume" else []
    rc = main(["job", command, str(src_job), *extra, "--out", str(folder), *overwrite, "num_rounds=2"])
    assert rc == EXIT_DATA and _intact(folder) and not (folder / "app").exists()
    assert str(folder) in capsys.readouterr().err


@pytest.mark.parametrize("where", ["source", "parent", "inside"])
@pytest.mark.parametrize("command", ["set", "pack"])
def test_job_commands_never_touch_the_source(tmp_path, src_job, where, command, capsys):
    before = _digest(src_job.parent)
    out = {"source": src_job, "parent": src_job.parent, "inside": src_job / "copy"}[where]
    rc = main(["job", command, str(src_job), "--out", str(out), "--overwrite", "num_rounds=2"])
    assert rc == EXIT_DATA and _digest(src_job.parent) == before
    assert "input" in capsys.readouterr().err


def test_job_set_replaces_only_its_own_output(tmp_path, src_job):
    out = tmp_path / "job"
    assert main(["job", "set", str(src_job), "--out", str(out), "num_rounds=2"]) == 0
    assert (out / MARKER).exists()
    assert main(["job", "set", str(src_job), "--out", str(out), "num_rounds=3"]) == EXIT_DATA
    assert json.loads((out / "app" / "config" / "config_fed_server.json").read_text())["num_rounds"] == 2
    assert main(["job", "set", str(src_job), "--out", str(out), "--overwrite", "num_rounds=3"]) == 0
    assert json.loads((out / "app" / "config" / "config_fed_server.json").read_text())["num_rounds"] == 3


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_job_simulate_keeps_an_unrelated_workspace(tmp_path, src_job, overwrite):
    folder = _unrelated(tmp_path)
    assert main(["job", "simulate", str(src_job), "-w", str(folder), *overwrite]) == EXIT_DATA
    assert _intact(folder) and not (folder / "local").exists()


def test_job_simulate_keeps_an_unrelated_log_file(tmp_path, src_job):
    log = tmp_path / "ws.simulator.log"
    log.write_text("someone's log")
    assert main(["job", "simulate", str(src_job), "-w", str(tmp_path / "ws")]) == EXIT_DATA
    assert log.read_text() == "someone's log"


def test_job_simulate_never_uses_the_job_folder(tmp_path, src_job):
    before = _digest(src_job.parent)
    assert main(["job", "simulate", str(src_job), "-w", str(src_job.parent), "--overwrite"]) == EXIT_DATA
    assert _digest(src_job.parent) == before


# ------------------------------------------------------------------------------------------- poc
@pytest.mark.parametrize("command", ["prepare", "run"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_poc_keeps_a_folder_that_is_not_its_workspace(tmp_path, command, overwrite, capsys):
    folder = _unrelated(tmp_path)
    job = [str(REPO / "jobs" / "fedavg")] if command == "run" else []
    assert main(["poc", command, "-w", str(folder), *overwrite, *job]) == EXIT_DATA
    assert _intact(folder) and sorted(p.name for p in folder.iterdir()) == ["notes.txt", "sub"]
    assert str(folder) in capsys.readouterr().err
    assert not list(tmp_path.glob("*.project.yml"))


def _fake_poc_workspace(tmp_path) -> Path:
    ws = tmp_path / "poc"
    ws.mkdir()
    (ws / STATE_FILE).write_text(json.dumps({"sites": ["site-1"], "fed_learn_port": 1, "admin_port": 2, "pids": {}}))
    return ws


@pytest.mark.parametrize("command", ["submit", "run"])
def test_poc_download_keeps_an_unrelated_folder(tmp_path, command):
    folder = _unrelated(tmp_path)
    ws = _fake_poc_workspace(tmp_path) if command == "submit" else tmp_path / "poc"
    rc = main(["poc", command, "-w", str(ws), str(REPO / "jobs" / "fedavg"), "--download", str(folder)])
    assert rc == EXIT_DATA and _intact(folder)
    if command == "run":
        assert not ws.exists()  # refused before anything was prepared


# ------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_data_synth_keeps_an_unrelated_folder(tmp_path, overwrite):
    folder = _unrelated(tmp_path)
    rc = main(["data", "synth", "--out", str(folder), "--sites", "1", "--cases", "2", "--size", "16", "--test-cases", "0", *overwrite])
    assert rc == EXIT_DATA and _intact(folder) and not (folder / "site-1").exists()


def test_data_synth_replaces_its_own_output_only_with_overwrite(tmp_path):
    out = tmp_path / "data"
    args = ["data", "synth", "--out", str(out), "--cases", "2", "--size", "16", "--test-cases", "0"]
    assert main([*args, "--sites", "2"]) == 0
    assert main([*args, "--sites", "1"]) == EXIT_DATA and (out / "site-2").is_dir()
    assert main([*args, "--sites", "1", "--overwrite"]) == 0
    assert (out / "site-1").is_dir() and not (out / "site-2").exists()  # no stale site left behind


def _pairs(root: Path) -> Path:
    from tests.data.test_split import make_pairs

    return make_pairs(root)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_data_split_keeps_an_unrelated_folder_and_the_dataset(tmp_path, overwrite):
    folder = _unrelated(tmp_path)
    ds = _pairs(tmp_path / "ds")
    before = _digest(ds)
    assert main(["data", "split", str(ds), "--out", str(folder), *overwrite]) == EXIT_DATA and _intact(folder)
    assert main(["data", "split", str(ds), "--out", str(ds), *overwrite]) == EXIT_DATA
    assert main(["data", "split", str(ds), "--out", str(tmp_path), "--overwrite"]) == EXIT_DATA
    assert _digest(ds) == before
    assert main(["data", "split", str(ds), "--out", str(ds / "splits")]) == 0  # a new folder inside is fine
    assert (ds / "splits" / "split.json").exists()


# ------------------------------------------------------------------------------------------- report, demo
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_report_keeps_an_unrelated_folder_and_the_run(tmp_path, overwrite):
    run = tmp_path / "run"
    run.mkdir()
    (run / RECORDS).write_text("")
    folder = _unrelated(tmp_path)
    assert main(["report", str(run), "--out", str(folder), *overwrite]) == EXIT_DATA and _intact(folder)
    assert main(["report", str(run), "--out", str(run), *overwrite]) == EXIT_DATA
    assert sorted(p.name for p in run.iterdir()) == [RECORDS]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_demo_keeps_an_unrelated_workdir(tmp_path, overwrite):
    folder = _unrelated(tmp_path)
    assert main(["demo", "--workdir", str(folder), *overwrite]) == EXIT_DATA
    assert _intact(folder) and sorted(p.name for p in folder.iterdir()) == ["notes.txt", "sub"]


# ------------------------------------------------------------------------------------------- infer
@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return _model_file(tmp_path_factory.mktemp("model") / "FL_global_model.pt")


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_infer_never_overwrites_its_input_scan(tmp_path, model_path, overwrite):
    scan = _volume(tmp_path / "scan.nii.gz")
    before = scan.read_bytes()
    assert main(["infer", "--model", str(model_path), "--image", str(scan), "--out", str(scan), *overwrite]) == EXIT_DATA
    assert scan.read_bytes() == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_infer_folder_never_overwrites_its_input_scans(tmp_path, model_path, overwrite):
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(2):
        _volume(scans / f"case_{i}.nii.gz", seed=i)
    before = _digest(scans)
    for out in (scans, tmp_path):
        rc = main(["infer", "--model", str(model_path), "--image-dir", str(scans), "--out", str(out), *overwrite])
        assert rc == EXIT_DATA
    assert _digest(scans) == before


def test_infer_keeps_a_file_it_did_not_write_and_replaces_its_own(tmp_path, model_path):
    scan = _volume(tmp_path / "scan.nii.gz")
    theirs = _volume(tmp_path / "theirs.nii.gz", seed=3)
    before = theirs.read_bytes()
    base = ["infer", "--model", str(model_path), "--image", str(scan), "--out"]
    assert main([*base, str(theirs)]) == EXIT_DATA
    assert main([*base, str(theirs), "--overwrite"]) == EXIT_DATA and theirs.read_bytes() == before
    ours = tmp_path / "seg.nii.gz"
    assert main([*base, str(ours)]) == 0
    assert main([*base, str(ours)]) == EXIT_DATA
    assert main([*base, str(ours), "--overwrite"]) == 0


def test_infer_folder_keeps_an_unrelated_out_folder(tmp_path, model_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    _volume(scans / "case_0.nii.gz")
    folder = _unrelated(tmp_path)
    for overwrite in ([], ["--overwrite"]):
        rc = main(["infer", "--model", str(model_path), "--image-dir", str(scans), "--out", str(folder), *overwrite])
        assert rc == EXIT_DATA and _intact(folder) and not (folder / "case_0.nii.gz").exists()


def test_job_set_overwrite_keeps_a_file_the_user_added(tmp_path, capsys):
    from fedsegnet.cli import main

    out = tmp_path / "job"
    assert main(["job", "set", str(REPO / "jobs" / "fedavg"), "--out", str(out), "num_rounds=3"]) == 0
    assert main(["job", "set", str(REPO / "jobs" / "fedavg"), "--out", str(out), "--overwrite", "num_rounds=4"]) == 0
    (out / "app" / "README_site.txt").write_text("our site's notes")
    capsys.readouterr()
    assert main(["job", "set", str(REPO / "jobs" / "fedavg"), "--out", str(out), "--overwrite", "num_rounds=5"]) == 3
    assert "app/README_site.txt" in capsys.readouterr().err
    assert (out / "app" / "README_site.txt").read_text() == "our site's notes"
    assert json.loads((out / "app" / "config" / "config_fed_server.json").read_text())["num_rounds"] == 4


def test_a_command_refused_before_writing_leaves_no_folder_behind(tmp_path, capsys):
    from fedsegnet.cli import main

    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--sites", "0"]) == 2
    assert "sites=0" in capsys.readouterr().err
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()  # an existing empty folder is the user's: it stays, even when the command fails
    assert main(["data", "synth", "--out", str(kept), "--sites", "0"]) == 2
    assert kept.is_dir() and not any(kept.iterdir())
