"""One declaration per job arg (fedsegnet.config.JOB_ARGS): every job's variables are declared, every
component that takes one defaults to the declared value, and a bad value is refused with the same
message by `job set`, the Recipes and the components a site or the server builds."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import pytest

from fedsegnet.cli import main as cli_main
from fedsegnet.config import JOB_ARGS, build_train_config, check_job_args
from fedsegnet.errors import ConfigError
from fedsegnet.flare.ops.jobs import configure_job, job_arg_conflicts, job_args, repo_jobs_dir

JOBS = repo_jobs_dir()
JOB_NAMES = ("fedsegnet", "fedavg")
_STRUCTURE = {"format_version", "workflows", "components", "executors", "task_result_filters", "task_data_filters"}

# the values the hardening review found written with exit 0 (and failing later at every site)
BAD_VALUES = [
    ("num_rounds", -1, "num_rounds=-1: must be an integer >= 1"),
    ("local_steps", "abc", "local_steps='abc': must be an integer >= 1"),
    ("local_steps", 1.5, "local_steps=1.5: must be an integer >= 1"),
    ("up_ratio", 2, "up_ratio=2: must be a number > 0 and <= 1"),
    ("up_bits", 3, "up_bits=3: unknown value (valid: 4, 8, 16, 32)"),
    ("min_clients", 0, "min_clients=0: must be an integer >= 1"),
    ("aam_cap", 5, "aam_cap=5: must be a number > 0 and <= 1"),
    ("network", "nope", "network='nope': unknown value (valid: dca_unetr, hybrid_unetr"),
    ("num_classes", "abc", "num_classes='abc': must be an integer >= 2 or null (the preset's)"),
    ("resume_from", "../x", "resume_from='../x': not a job id"),
    ("personal_keys", "head.*", "personal_keys='head.*': must be a list of name patterns"),
    ("patch_size", [32, 32], "patch_size=[32, 32]: must be an integer or 3 integers >= 4"),
    ("drop_stragglers", "yes", "drop_stragglers='yes': must be true or false"),
]


def _config(job: str, side: str) -> dict:
    return json.loads((JOBS / job / "app" / "config" / f"config_fed_{side}.json").read_text())


def _components(config: dict):
    """(path, args) of every component, workflow, executor and filter of a job config."""
    for section in ("workflows", "components"):
        for c in config.get(section, []):
            yield c["path"], c.get("args", {})
    for e in config.get("executors", []):
        yield e["executor"]["path"], e["executor"].get("args", {})
    for section in ("task_data_filters", "task_result_filters"):
        for group in config.get(section, []):
            for f in group["filters"]:
                yield f["path"], f.get("args", {})


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("job", JOB_NAMES)
@pytest.mark.parametrize("side", ("server", "client"))
def test_every_job_variable_is_declared_with_the_jobs_default(job, side):
    config = _config(job, side)
    variables = {k: v for k, v in config.items() if k not in _STRUCTURE}
    undeclared = sorted(set(variables) - set(JOB_ARGS))
    assert not undeclared, f"jobs/{job} {side}: variables not in fedsegnet.config.JOB_ARGS: {undeclared}"
    for name, value in variables.items():
        assert value == JOB_ARGS[name].default, f"jobs/{job} {side}: {name}={value!r}, declared default {JOB_ARGS[name].default!r}"
        assert JOB_ARGS[name].check(value) == value


@pytest.mark.parametrize("job", JOB_NAMES)
@pytest.mark.parametrize("side", ("server", "client"))
def test_component_defaults_equal_the_declared_defaults(job, side):
    """Every FedSegNet component that takes a job arg defaults to its declared value (so a job that
    leaves it out behaves like one that sets the default)."""
    checked = 0
    for path, args in _components(_config(job, side)):
        module, _, cls = path.rpartition(".")
        if not module.startswith("fedsegnet."):
            continue
        init = getattr(importlib.import_module(module), cls).__init__
        if not init.__module__.startswith("fedsegnet."):
            continue  # FLARE's own constructor (ResumableScatterAndGather keeps ScatterAndGather's): FLARE's defaults
        params = inspect.signature(init).parameters
        for param, ref in args.items():
            if not (isinstance(ref, str) and ref.startswith("{") and ref.endswith("}")):
                continue
            var = ref[1:-1]
            assert param in params, f"{path}: no argument {param!r} (job arg {var})"
            default = params[param].default
            assert default is not inspect.Parameter.empty, f"{path}({param}) has no default; job arg {var} declares {JOB_ARGS[var].default!r}"
            assert _plain(default) == JOB_ARGS[var].default, f"{path}({param}={default!r}) but job arg {var} declares {JOB_ARGS[var].default!r}"
            checked += 1
    assert checked >= (5 if side == "server" else 20)


def test_recipe_and_train_config_defaults_equal_the_declared_defaults():
    from fedsegnet.flare.recipe import FedSegNetFedAvgRecipe, FedSegNetRecipe

    fedavg = inspect.signature(FedSegNetFedAvgRecipe.__init__).parameters
    fedsegnet = {**fedavg, **inspect.signature(FedSegNetRecipe.__init__).parameters}
    for recipe, params, job in (("FedSegNetFedAvgRecipe", fedavg, "fedavg"), ("FedSegNetRecipe", fedsegnet, "fedsegnet")):
        declared = job_args(JOBS / job)
        for name in declared:
            assert name in params, f"{recipe} has no argument for job arg {name}"
            assert _plain(params[name].default) == JOB_ARGS[name].default, f"{recipe}({name}={params[name].default!r})"
    for name, p in inspect.signature(build_train_config).parameters.items():
        if name in JOB_ARGS:
            assert _plain(p.default) == JOB_ARGS[name].default, f"build_train_config({name}={p.default!r})"


@pytest.mark.parametrize("name,value,message", BAD_VALUES)
def test_job_set_refuses_a_bad_value_before_writing(tmp_path, capsys, name, value, message):
    job = "fedavg" if name in job_args(JOBS / "fedavg") else "fedsegnet"
    out = tmp_path / "out"
    rc = cli_main(["job", "set", str(JOBS / job), "--out", str(out), f"{name}={json.dumps(value) if not isinstance(value, str) else value}"])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("name,value,message", BAD_VALUES)
def test_the_schema_gives_the_same_message_everywhere(name, value, message):
    with pytest.raises(ConfigError) as e:
        check_job_args({name: value})
    assert message in str(e.value)


def test_a_value_that_fails_only_with_the_others_is_refused(tmp_path):
    """A dataset preset fixes num_classes; floor above cap can never hold."""
    with pytest.raises(ConfigError, match="preset 'brats' fixes num_classes=4"):
        configure_job(JOBS / "fedavg", tmp_path / "a", preset="brats", num_classes=3)
    with pytest.raises(ConfigError, match="aam_floor=0.7: must be <= aam_cap=0.6"):
        configure_job(JOBS / "fedsegnet", tmp_path / "b", aam_floor=0.7)
    for method in ("median", "trimmed_mean"):  # the server sees only the sum under secure aggregation
        with pytest.raises(ConfigError, match=f"aggregation='?{method}'?: cannot run with secure_aggregation=true"):
            configure_job(JOBS / "fedsegnet", tmp_path / "c", secure_aggregation=True, aggregation=method)
    with pytest.raises(ConfigError, match="secagg_threshold=1: must be 0 .* or >= 2"):
        configure_job(JOBS / "fedsegnet", tmp_path / "c", secure_aggregation=True, secagg_threshold=1)
    with pytest.raises(ConfigError, match="personalization='?fedbn'?: cannot run with secure_aggregation=true yet"):
        configure_job(JOBS / "fedsegnet", tmp_path / "c", secure_aggregation=True, personalization="fedbn")
    with pytest.raises(ConfigError, match="personal_keys=.*: cannot run with secure_aggregation=true yet"):
        configure_job(JOBS / "fedsegnet", tmp_path / "c", secure_aggregation=True, personal_keys=["head.*"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert (configure_job(JOBS / "fedsegnet", tmp_path / "d", secure_aggregation=True, aggregation="mean") / "meta.json").is_file()


def _hand_edited_client_config(tmp_path, **values):
    """A copy of jobs/fedavg whose site config was edited by hand (not through job set)."""
    job = configure_job(JOBS / "fedavg", tmp_path / "job")
    path = job / "app" / "config" / "config_fed_client.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))
    return job


def test_a_hand_edited_bad_value_is_found_by_job_set_and_job_args(tmp_path, capsys):
    job = _hand_edited_client_config(tmp_path, local_steps="abc")
    with pytest.raises(ConfigError, match="local_steps='abc': must be an integer >= 1"):
        configure_job(job, tmp_path / "copy", num_rounds=3)
    assert cli_main(["job", "args", str(job)]) == 2
    captured = capsys.readouterr()
    assert "local_steps='abc': must be an integer >= 1" in captured.err


def test_job_args_lists_every_arg(capsys, tmp_path):
    job = configure_job(JOBS / "fedsegnet", tmp_path / "job", num_rounds=3, aggregation="median")
    assert cli_main(["job", "args", str(job)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line and not line.startswith("(")}
    assert set(rows) == set(job_args(job))
    assert rows["num_rounds"].split()[1:4] == ["3", "*", "5"]
    assert '"median" *' in rows["aggregation"] and "one of aam, mean, median, trimmed_mean" in rows["aggregation"]
    assert JOB_ARGS["local_steps"].help in rows["local_steps"]


# ------------------------------------------------------------------------- the components themselves
def test_server_components_refuse_bad_values_with_the_schema_message():
    from fedsegnet.flare.compression import GlobalModelSync, UpdateEncoder
    from fedsegnet.flare.persistor import SegModelPersistor

    cases = [
        (lambda: UpdateEncoder(bits=3), "up_bits=3: unknown value"),
        (lambda: UpdateEncoder(ratio=2), "up_ratio=2: must be a number > 0 and <= 1"),
        (lambda: UpdateEncoder(resume_from="../x"), "resume_from='../x': not a job id"),
        (lambda: GlobalModelSync(bits=3), "down_bits=3: unknown value"),
        (lambda: GlobalModelSync(first_bits=5), "down_first_bits=5: unknown value"),
        (lambda: GlobalModelSync(block=-1), "compression_block=-1: must be an integer >= 0"),
        (lambda: SegModelPersistor(preset="tiny", num_classes="abc"), "num_classes='abc': must be an integer >= 2"),
        (lambda: SegModelPersistor(preset="tiny", seed=1.5), "seed=1.5: must be an integer >= 0"),
    ]
    for build, message in cases:
        with pytest.raises(ConfigError) as e:
            build()
        assert message in str(e.value)


@pytest.mark.parametrize("name,value", [("local_steps", 1.5), ("num_classes", "abc"), ("personalization", "nope"), ("seed", -1)])
def test_a_site_with_a_bad_value_reports_the_schema_message_with_every_task(name, value):
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.signal import Signal

    from fedsegnet.flare.constants import ERROR_HEADER
    from fedsegnet.flare.learner import SegLearner

    learner = SegLearner(analytic_sender_id="", **{name: value})  # never raises: the site stays up and says why
    ctx = FLContext()
    ctx.put(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=False)
    learner.initialize({}, ctx)
    with pytest.raises(ConfigError) as expected:
        check_job_args({name: value})
    assert learner.init_error == str(expected.value)
    reply = learner.train(DXO(DataKind.WEIGHTS, data={}).to_shareable(), ctx, Signal())
    assert reply.get_header(ERROR_HEADER) == str(expected.value)


def test_recipe_refuses_a_bad_value_before_building(tmp_path):
    from fedsegnet.flare.recipe import FedSegNetRecipe, main

    with pytest.raises(ConfigError, match="up_bits=3: unknown value"):
        FedSegNetRecipe(up_bits=3)
    assert main(["--job", "fedsegnet", "num_rounds=0", "--export", "--export-dir", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_configs_that_disagree_are_refused_until_set(tmp_path, capsys):
    """Server and sites must build the same model: a hand edit of one config is caught."""
    job = _hand_edited_client_config(tmp_path, preset="tiny")
    with pytest.raises(ConfigError, match=r"preset='cpu': .* disagrees with itself \(preset: 'tiny' in app/config/config_fed_client.json but 'cpu' in app/config/config_fed_server.json\)"):
        configure_job(job, tmp_path / "copy", num_rounds=3)
    assert cli_main(["job", "args", str(job)]) == 2
    assert "preset: 'tiny' in app/config/config_fed_client.json but 'cpu'" in capsys.readouterr().err
    fixed = configure_job(job, tmp_path / "fixed", preset="tiny")  # setting it writes every config
    assert job_args(fixed)["preset"] == "tiny" and not job_arg_conflicts(fixed)


def test_key_value_words_are_read_as_json_or_text_and_bad_words_refused_naming_them():
    from fedsegnet.config import parse_job_values
    from fedsegnet.errors import UsageError

    assert parse_job_values(["num_rounds=3", "preset=tiny", "personal_keys=[\"norm\"]", "dp_noise=null", "note=a=b"]) == {
        "num_rounds": 3, "preset": "tiny", "personal_keys": ["norm"], "dp_noise": None, "note": "a=b"}  # fmt: skip
    for bad in ("num_rounds", "=3"):
        with pytest.raises(UsageError, match=f"job arg {bad!r}: expected KEY=VALUE"):
            parse_job_values([bad])
