"""Job folders and site policy: job args, configure_job, write_site_policy."""

import json
from pathlib import Path

import pytest

from fedsegnet.errors import ConfigError
from fedsegnet.flare.ops.jobs import configure_job, job_args
from fedsegnet.flare.ops.policy import FEDSEGNET_ALLOW_LIST, write_site_policy

from ...integration.conftest import JOBS


def test_job_args_of_fedavg():
    args = job_args(JOBS / "fedavg")
    for key in ("num_rounds", "min_clients", "preset", "local_steps", "patch_size", "num_classes", "seed", "data_root"):
        assert key in args


@pytest.mark.parametrize("job", ["fedavg", "fedsegnet"])
def test_every_job_arg_is_referenced(tmp_path, job):
    """A job arg that no component references would be a setting that silently does nothing."""
    for path in (JOBS / job / "app" / "config").glob("*.json"):
        text = path.read_text()
        config = json.loads(text)
        for key in config:
            if key in ("format_version", "workflows", "components", "executors", "task_result_filters", "task_data_filters"):
                continue
            assert f'"{{{key}}}"' in text, f"{path.name}: job arg {key!r} is never used"


def test_configure_job_sets_args_in_both_configs(tmp_path):
    dst = configure_job(JOBS / "fedavg", tmp_path / "job", num_rounds=7, preset="tiny", min_clients=3, patch_size=[48, 48, 48])
    server = json.loads((dst / "app/config/config_fed_server.json").read_text())
    client = json.loads((dst / "app/config/config_fed_client.json").read_text())
    meta = json.loads((dst / "meta.json").read_text())
    assert server["num_rounds"] == 7 and server["preset"] == "tiny" and client["preset"] == "tiny"
    assert server["patch_size"] == client["patch_size"] == [48, 48, 48]
    assert meta["min_clients"] == 3 and server["min_clients"] == 3
    # the source job is untouched
    assert json.loads((JOBS / "fedavg/app/config/config_fed_server.json").read_text())["num_rounds"] == 5


def test_configure_job_rejects_unknown_arg(tmp_path):
    with pytest.raises(ConfigError, match="num_round.*not a job arg.*valid:.*num_rounds"):
        configure_job(JOBS / "fedavg", tmp_path / "job", num_round=3)
    assert not (tmp_path / "job").exists()


def test_site_policy_created_from_flare_default(tmp_path):
    path = write_site_policy(tmp_path / "local")
    allow = json.loads(path.read_text())["class_allow_list"]
    assert "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather" in allow
    for entry in FEDSEGNET_ALLOW_LIST:
        assert entry in allow


def test_site_policy_keeps_existing_settings(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "resources.json").write_text(json.dumps({"format_version": 2, "class_allow_list": ["my.site."], "other": 1}))
    write_site_policy(local)
    write_site_policy(local)  # idempotent
    resources = json.loads((local / "resources.json").read_text())
    assert resources["other"] == 1
    assert resources["class_allow_list"] == ["my.site.", *FEDSEGNET_ALLOW_LIST]


def test_site_policy_bad_file_named(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "resources.json").write_text("{not json")
    with pytest.raises(ValueError, match="resources.json: not valid JSON"):
        write_site_policy(local)
    assert (local / "resources.json").read_text() == "{not json"


@pytest.mark.parametrize("key,value", [("aggregation", "krum"), ("preset", "huge"), ("compression_scope", "layer")])
def test_configure_job_rejects_unknown_choice(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"{key}.*unknown value"):
        configure_job(JOBS / "fedsegnet", tmp_path / "job", **{key: value})
    assert not (tmp_path / "job").exists()


def test_configure_job_sets_aggregation_and_fedprox(tmp_path):
    dst = configure_job(JOBS / "fedsegnet", tmp_path / "job", aggregation="median", fedprox_mu=0.01)
    server = json.loads((dst / "app/config/config_fed_server.json").read_text())
    client = json.loads((dst / "app/config/config_fed_client.json").read_text())
    assert server["aggregation"] == "median" and client["fedprox_mu"] == 0.01


def test_pack_job_carries_the_package(tmp_path):
    import fedsegnet
    from fedsegnet.cli import main

    assert main(["job", "pack", str(JOBS / "fedsegnet"), "--out", str(tmp_path / "packed"), "num_rounds=3"]) == 0
    custom = tmp_path / "packed" / "app" / "custom" / "fedsegnet"
    package = Path(fedsegnet.__file__).resolve().parent
    assert (custom / "aggregation" / "aam.py").read_bytes() == (package / "aggregation" / "aam.py").read_bytes()
    assert not list(custom.rglob("__pycache__"))
    server = json.loads((tmp_path / "packed" / "app" / "config" / "config_fed_server.json").read_text())
    assert server["num_rounds"] == 3


def test_job_set_takes_values_after_out_as_the_readme_shows(tmp_path):
    from fedsegnet.cli import main

    assert main(["job", "set", str(JOBS / "fedavg"), "--out", str(tmp_path / "j"), "num_rounds=20", "preset=gpu"]) == 0
    server = json.loads((tmp_path / "j" / "app" / "config" / "config_fed_server.json").read_text())
    assert server["num_rounds"] == 20 and server["preset"] == "gpu"
    with pytest.raises(SystemExit):
        main(["job", "set", str(JOBS / "fedavg"), "--out", str(tmp_path / "k"), "--bogus"])
