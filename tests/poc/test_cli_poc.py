"""`fedsegnet poc ...` and `fedsegnet job resume` without starting processes."""

import json

import pytest

from fedsegnet.cli import main
from fedsegnet.flare.ops.jobs import job_args
from fedsegnet.flare.ops.poc import STATE_FILE, PocSystem, free_port, poc_project

from .conftest import JOBS


def test_poc_prepare_status_stop(tmp_path, poc_home, capsys):
    ws = tmp_path / "ws"
    rc = main(["poc", "prepare", "-w", str(ws), "-n", "3", "--data-root", str(tmp_path),
               "--fed-learn-port", str(free_port()), "--admin-port", str(free_port())])  # fmt: skip
    assert rc == 0
    state = json.loads((ws / STATE_FILE).read_text())
    assert state["sites"] == ["site-1", "site-2", "site-3"] and state["pids"] == {}
    poc = PocSystem.load(ws)
    for name in ["server", "site-1", "site-2", "site-3", poc.admin]:
        assert (poc.kit(name) / "startup").is_dir(), name
    # FedSegNet's components are admitted at every participant
    resources = json.loads((poc.kit("site-2") / "local" / "resources.json").read_text())
    assert "fedsegnet.flare." in resources["class_allow_list"]
    capsys.readouterr()
    assert main(["poc", "status", "-w", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "server       not running" in out and "site-3       not running" in out
    assert main(["poc", "stop", "-w", str(ws)]) == 0
    assert "nothing was running" in capsys.readouterr().out


def test_poc_commands_need_a_prepared_workspace(tmp_path, capsys):
    assert main(["poc", "start", "-w", str(tmp_path / "nothing")]) == 3  # a missing file: exit code 3
    assert "fedsegnet_poc.json not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(sites=[]), "sites"), (dict(sites=["a", "a"]), "sites"), (dict(sites=["a"], admin_port=8002), "admin_port")],
)
def test_poc_project_checks_its_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        poc_project(**kwargs)


def test_job_resume_sets_resume_from_everywhere(tmp_path, capsys):
    out = tmp_path / "resumed"
    assert main(["job", "resume", str(JOBS / "fedsegnet"), "--from", "1ce8a98a-ba49", "--out", str(out), "num_rounds=9"]) == 0
    for side in ("server", "client"):
        config = json.loads((out / "app" / "config" / f"config_fed_{side}.json").read_text())
        assert config["resume_from"] == "1ce8a98a-ba49"
    assert job_args(out)["num_rounds"] == 9
    assert main(["job", "resume", str(JOBS / "fedsegnet"), "--from", "../etc", "--out", str(out)]) == 2
    assert "--from='../etc'" in capsys.readouterr().err
