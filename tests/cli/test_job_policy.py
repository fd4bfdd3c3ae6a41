"""`fedsegnet job policy LOCAL_DIR`: writes only into a FLARE kit's local/ folder (or one it is told to create)."""

import json
from pathlib import Path

import pytest
from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

from fedsegnet.cli import main
from fedsegnet.flare.ops.policy import FEDSEGNET_ALLOW_LIST, kit_local_problem, write_site_policy
from fedsegnet.errors import OutputError


def _kit(root: Path, name: str = "site-1") -> Path:
    """A startup kit's minimal layout as provisioning writes it: startup/ beside local/resources.json.default."""
    kit = root / name
    (kit / "startup").mkdir(parents=True)
    (kit / "startup" / "fed_client.json").write_text("{}")
    (kit / "local").mkdir()
    default = {"format_version": 2, "class_allow_list": list(DEFAULT_CLASS_ALLOW_LIST), "components": []}
    (kit / "local" / "resources.json.default").write_text(json.dumps(default))
    return kit / "local"


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_missing_folder_is_refused_and_not_created(tmp_path, capsys):
    target = tmp_path / "nope" / "local"
    assert main(["job", "policy", str(target)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0  # one line
    assert err.startswith(f"error: {target}: does not exist; a FLARE kit's local folder is an existing folder named 'local'")
    assert "beside the kit's 'startup/'" in err and "resources.json.default" in err and "--create" in err
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda root: (root / "local").mkdir() or root / "local", "no 'startup/' beside it and no resources.json.default or resources.json in it"),
        (lambda root: (root / "config").mkdir() or (root / "startup").mkdir() or root / "config", "not named 'local'"),
        (lambda root: (root / "local").touch() or root / "local", "is not a folder"),
    ],
    ids=["bare folder", "not named local", "a file"],
)  # fmt: skip
def test_a_folder_that_is_not_a_kits_local_is_refused_untouched(tmp_path, capsys, make, problem):
    target = make(tmp_path)
    before = _tree(tmp_path)
    assert main(["job", "policy", str(target)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: {target}: {problem}") and "a FLARE kit's local folder is" in err
    assert _tree(tmp_path) == before


def test_a_kits_local_gets_the_policy_from_resources_json_default(tmp_path, capsys):
    local = _kit(tmp_path)
    assert kit_local_problem(local) is None
    assert main(["job", "policy", str(local)]) == 0
    assert f"site policy written to {local / 'resources.json'}" in capsys.readouterr().out
    resources = json.loads((local / "resources.json").read_text())
    assert resources["components"] == [] and all(e in resources["class_allow_list"] for e in FEDSEGNET_ALLOW_LIST)
    assert json.loads((local / "resources.json.default").read_text())["class_allow_list"] == list(DEFAULT_CLASS_ALLOW_LIST)


def test_a_run_simulator_workspace_local_is_a_kits_local(tmp_path):
    # `nvflare simulator -w ws` makes ws/startup and ws/local (both empty)
    (tmp_path / "ws" / "startup").mkdir(parents=True)
    (tmp_path / "ws" / "local").mkdir()
    assert main(["job", "policy", str(tmp_path / "ws" / "local")]) == 0
    assert json.loads((tmp_path / "ws" / "local" / "resources.json").read_text())["class_allow_list"][-2:] == list(FEDSEGNET_ALLOW_LIST)


def test_create_makes_a_simulator_workspace_local_before_its_first_run(tmp_path):
    target = tmp_path / "ws" / "local"
    assert main(["job", "policy", "--create", str(target)]) == 0
    assert (target / "resources.json").is_file()
    assert main(["job", "policy", str(target)]) == 0  # a local holding resources.json is accepted after


def test_create_still_refuses_a_folder_not_named_local(tmp_path, capsys):
    assert main(["job", "policy", "--create", str(tmp_path / "ws")]) == 3
    assert f"error: {tmp_path / 'ws'}: not named 'local'" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_strict_writer_refuses_what_create_accepts(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_site_policy(tmp_path / "ws" / "local", create=False)
    assert not (tmp_path / "ws").exists()
    assert write_site_policy(tmp_path / "ws" / "local", create=True).is_file()


@pytest.mark.slow
def test_a_provisioned_poc_kit_local_works(tmp_path, monkeypatch):
    from fedsegnet.flare.ops.poc import PocSystem, free_port

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    poc = PocSystem(tmp_path / "poc", sites=["site-1"], data_root=tmp_path, fed_learn_port=free_port(), admin_port=free_port())
    poc.prepare()  # writes every kit's policy with create=False
    local = poc.kit("site-1") / "local"
    assert kit_local_problem(local) is None and (local / "resources.json.default").is_file()
    assert main(["job", "policy", str(local)]) == 0
    assert "fedsegnet.flare." in json.loads((local / "resources.json").read_text())["class_allow_list"]
