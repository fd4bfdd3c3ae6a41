"""The Recipes build the same jobs as jobs/fedavg and jobs/fedsegnet: same components, filters, classes and arguments."""

import importlib
import inspect
import json
import re
import subprocess
import sys

import pytest

from fedsegnet.flare.recipe import FedSegNetFedAvgRecipe, FedSegNetRecipe

from ..integration.conftest import JOBS

_VAR = re.compile(r"^\{(\w+)\}$")


def _resolve(value, variables):
    if isinstance(value, str) and _VAR.match(value):
        return variables[_VAR.match(value).group(1)]
    if isinstance(value, dict):
        return {k: _resolve(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, variables) for v in value]
    return value


def _with_defaults(path, args):
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    full = {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if k != "self" and p.default is not inspect.Parameter.empty
    }
    full.update(args)
    # FLARE stores some None defaults as their empty value (e.g. aggregation_weights or {}): same meaning
    return {k: (None if v in ({}, []) else v) for k, v in full.items()}


def _components(config: dict) -> dict:
    variables = {k: v for k, v in config.items() if not isinstance(v, (list, dict)) or k in ("patch_size", "personal_keys")}
    out = {}
    for section in ("workflows", "components"):
        for c in config.get(section, []):
            out[c["id"]] = (c["path"], _with_defaults(c["path"], _resolve(c.get("args", {}), variables)))
    for e in config.get("executors", []):
        ex = e["executor"]
        key = "executor for " + ",".join(sorted(e["tasks"]))
        out[key] = (ex["path"], _with_defaults(ex["path"], _resolve(ex.get("args", {}), variables)))
    for section in ("task_data_filters", "task_result_filters"):
        for chain in config.get(section, []):
            key = f"{section} for " + ",".join(sorted(chain["tasks"]))
            out[key] = [(f["path"], _with_defaults(f["path"], _resolve(f.get("args", {}), variables))) for f in chain["filters"]]
    return out


RECIPES = {"fedavg": FedSegNetFedAvgRecipe, "fedsegnet": FedSegNetRecipe}


@pytest.fixture(scope="module", params=sorted(RECIPES))
def exported(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    RECIPES[request.param]().export(str(out))
    return out / request.param


@pytest.mark.parametrize("side", ["server", "client"])
def test_recipe_matches_job_folder(exported, side):
    ours = json.loads((JOBS / exported.name / "app" / "config" / f"config_fed_{side}.json").read_text())
    found = list(exported.rglob(f"config_fed_{side}.json"))
    assert len(found) == 1, f"expected one exported {side} config, found {found}"
    theirs = json.loads(found[0].read_text())
    a, b = _components(ours), _components(theirs)
    assert a.keys() == b.keys()
    for cid in a:
        assert a[cid] == b[cid], f"component {cid!r} differs:\n job folder: {a[cid]}\n recipe:     {b[cid]}"


def test_recipe_job_carries_no_code(exported):
    assert not list(exported.rglob("custom")), "the recipe copied code into the job; sites use the installed package"


# ------------------------------------------------------------------ job args: the export is a job folder like jobs/<job>


def _config(job_dir, side):
    return json.loads((job_dir / "app" / "config" / f"config_fed_{side}.json").read_text())


def _references(value) -> set:
    if isinstance(value, str):
        m = _VAR.match(value)
        return {m.group(1)} if m else set()
    if isinstance(value, dict):
        return set().union(*map(_references, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(_references, value)) if value else set()
    return set()


def test_export_has_the_job_args_of_the_job_folder(exported):
    from fedsegnet.flare.ops.jobs import job_arg_conflicts, job_args

    assert job_args(exported) == job_args(JOBS / exported.name)
    assert not job_arg_conflicts(exported)
    assert json.loads((exported / "meta.json").read_text()) == json.loads((JOBS / exported.name / "meta.json").read_text())
    for side in ("server", "client"):
        config = _config(exported, side)
        structure = {k: v for k, v in config.items() if isinstance(v, list) and k != "personal_keys"}
        variables = set(config) - set(structure) - {"format_version"}
        # every "{name}" in a component has its top-level variable, and every variable is used
        assert _references(structure) == variables, side
        ours = _config(JOBS / exported.name, side)
        assert {k: config[k] for k in variables & set(ours)} == {k: ours[k] for k in variables & set(ours)}


def test_fedsegnet_job_set_works_on_an_export(exported, tmp_path):
    from fedsegnet.flare.ops.jobs import configure_job, job_args

    out = configure_job(exported, tmp_path / "set", num_rounds=3, preset="tiny")
    assert job_args(out) == {**job_args(exported), "num_rounds": 3, "preset": "tiny"}
    for side in ("server", "client"):
        assert _config(out, side)["num_rounds"] == 3


def test_recipe_job_args_with_other_values(tmp_path):
    """Values other than the defaults are job args of the export, and the components take them."""
    recipe = FedSegNetRecipe(num_rounds=7, up_ratio=0.05, patch_size=48, personal_keys=("head.*",), drop_stragglers=True)
    recipe.export(str(tmp_path))
    job = tmp_path / "fedsegnet"
    from fedsegnet.flare.ops.jobs import job_args

    args = job_args(job)
    assert args == {**job_args(JOBS / "fedsegnet"), "num_rounds": 7, "up_ratio": 0.05, "patch_size": 48,
                    "personal_keys": ["head.*"], "drop_stragglers": True}  # fmt: skip
    assert recipe.job_args == args
    server, client = (_components(_config(job, side)) for side in ("server", "client"))
    assert server["scatter_and_gather"][1]["num_rounds"] == 7 and server["scatter_and_gather"][1]["drop_stragglers"] is True
    assert server["persistor"][1]["patch_size"] == 48
    assert client["learner"][1]["num_rounds"] == 7 and client["learner"][1]["personal_keys"] == ["head.*"]
    (encoder,) = [args for path, args in client["task_result_filters for train"] if path.endswith("UpdateEncoder")]
    assert encoder["ratio"] == 0.05


def test_fedavg_with_an_aggregation_rule_gets_its_job_args(tmp_path):
    recipe = FedSegNetFedAvgRecipe(aggregation="median", ignore_result_error=True)
    assert recipe.job_args["aggregation"] == "median" and recipe.job_args["ignore_result_error"] is True
    assert {"aam_cap", "aam_floor"} <= set(recipe.job_args) and "up_ratio" not in recipe.job_args
    assert "aggregation" not in FedSegNetFedAvgRecipe().job_args and "ignore_result_error" not in FedSegNetFedAvgRecipe().job_args


# ------------------------------------------------------------------ the command line


def test_cli_exports_with_flares_export_flags(tmp_path):
    """From a shell, FLARE's own --export/--export-dir (taken by FLARE before our parser) write the job."""
    from fedsegnet.flare.ops.jobs import job_args

    cmd = [sys.executable, "-m", "fedsegnet.flare.recipe", "num_rounds=7", "--export", "--export-dir", str(tmp_path), "up_ratio=0.05"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    args = job_args(tmp_path / "fedsegnet")  # the default job is fedsegnet, as the demo's
    assert args == {**job_args(JOBS / "fedsegnet"), "num_rounds": 7, "up_ratio": 0.05}
    client = _components(_config(tmp_path / "fedsegnet", "client"))
    (encoder,) = [a for path, a in client["task_result_filters for train"] if path.endswith("UpdateEncoder")]
    assert encoder["ratio"] == 0.05 and client["learner"][1]["num_rounds"] == 7


def test_cli_export_through_main(tmp_path, capsys):
    from fedsegnet.flare.ops.jobs import job_args
    from fedsegnet.flare.recipe import main

    assert main(["--job", "fedavg", "--export", "--export-dir", str(tmp_path), "local_steps=3", "personal_keys=[\"head.*\"]"]) == 0
    assert f"Job exported to: {tmp_path}" in capsys.readouterr().out
    assert job_args(tmp_path / "fedavg") == {**job_args(JOBS / "fedavg"), "local_steps": 3, "personal_keys": ["head.*"]}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--job", "fedavg", "up_ratio=0.05"], "up_ratio=0.05: not a job arg of job fedavg"),
        (["num_round=3"], "num_round=3: not a FedSegNet job arg"),
        (["num_rounds=0"], "num_rounds=0: must be an integer >= 1"),
        (["aam_floor=0.7", "aam_cap=0.5"], "aam_floor=0.7: must be <= aam_cap=0.5"),
        (["-n", "1"], "min_clients=2: more than the 1 site(s) of -n/--n-clients"),
        (["--env", "prod"], "--startup-kit is required with --env prod"),
        (["num_rounds"], "job arg 'num_rounds': expected KEY=VALUE"),
    ],
)
def test_cli_refuses_a_bad_job_arg_before_anything_is_written(argv, message, tmp_path, capsys):
    from fedsegnet.flare.recipe import main

    assert main([*argv, "--export", "--export-dir", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,hint", [("--rounds", "num_rounds=..."), ("--local-steps", "local_steps=..."), ("--write-job", "--export --export-dir")])
def test_cli_old_flags_point_to_job_args(flag, hint, capsys):
    from fedsegnet.flare.recipe import main

    with pytest.raises(SystemExit) as e:
        main([flag, "3"])
    assert e.value.code == 2
    assert hint in capsys.readouterr().err


# ------------------------------------------------------------------ the environments refuse folders they did not write


def test_sim_env_refuses_a_workspace_it_did_not_write(tmp_path):
    from fedsegnet.errors import OutputError
    from fedsegnet.flare.recipe import FedSegNetSimEnv

    mine = tmp_path / "fedsegnet" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("keep me")
    env = FedSegNetSimEnv(num_clients=2, workspace_root=str(tmp_path))
    with pytest.raises(OutputError, match="exists and is not empty"):
        FedSegNetRecipe().execute(env)
    assert mine.read_text() == "keep me" and sorted(p.name for p in mine.parent.iterdir()) == ["notes.txt"]


def test_poc_env_refuses_a_workspace_it_did_not_provision(tmp_path):
    from fedsegnet.errors import OutputError
    from fedsegnet.flare.recipe import FedSegNetPocEnv

    mine = tmp_path / "poc" / "project.yml"
    mine.parent.mkdir()
    mine.write_text("a workspace of someone else's")
    env = FedSegNetPocEnv(num_clients=2, workspace=str(mine.parent))
    with pytest.raises(OutputError, match="not provisioned by a FedSegNet Recipe"):
        FedSegNetRecipe().execute(env)
    assert sorted(p.name for p in mine.parent.iterdir()) == ["project.yml"]
