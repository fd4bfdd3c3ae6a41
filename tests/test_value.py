"""What the value benchmark (benchmarks/value.py) stands on: per-site test splits in every scenario
it uses, the local-only and centralized training modes, uplink bytes in the round records, and its
goal checks on hand-made rows."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsegnet.compression import SparseQuantCodec
from fedsegnet.config import build_train_config
from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.synth import synthesize
from fedsegnet.errors import ConfigError
from fedsegnet.federation import pool_sites, run_centralized, run_federation, run_local

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SITES = ("site-1", "site-2")


def _value_module():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("value_benchmark", BENCHMARKS / "value.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("value")
    synthesize(root, sites=2, cases=4, size=24, seed=3, test_cases=1, site_test_cases=2)
    return root


def _config(steps=2):
    return build_train_config(preset="tiny", local_steps=steps, seed=0, val_max_cases=1)


def _images(dl, split):
    return {c["image"] for c in dl.cases(split)}


@pytest.mark.parametrize("kwargs", [
    {"scenario": "default", "site_test_cases": 2},
    {"scenario": "default", "site_test_cases": 2, "label_kinds": "site-2:box,site-3:tag,site-4:partial:1"},
    {"scenario": "organs"},
])  # fmt: skip
def test_every_scenario_used_has_a_per_site_test_split_disjoint_from_training(tmp_path, kwargs):
    summary = synthesize(tmp_path, sites=4, cases=3, size=16, seed=0, test_cases=2, **kwargs)
    for site in summary["sites"]:
        dl = load_datalist(tmp_path / site)
        tests = _images(dl, "test")
        assert len(dl.evaluable("test")) == 2 == summary["sites"][site]["n_test"]
        assert not tests & (_images(dl, "training") | _images(dl, "validation"))
    assert (summary["test"] is None) == (kwargs["scenario"] == "organs")


def test_default_scenario_has_no_site_test_split_unless_asked_and_refuses_a_negative_count(tmp_path):
    summary = synthesize(tmp_path / "a", sites=1, cases=2, size=16, test_cases=1)
    assert summary["sites"]["site-1"]["n_test"] == 0
    with pytest.raises(ConfigError, match="site_test_cases"):
        synthesize(tmp_path / "b", sites=1, cases=2, size=16, site_test_cases=-1)


def test_pool_sites_lists_every_training_case_and_no_test_case(sites, tmp_path):
    pooled = load_datalist(pool_sites({s: sites / s for s in SITES}, tmp_path / "pool"))
    dls = [load_datalist(sites / s) for s in SITES]
    assert _images(pooled, "training") == set().union(*(_images(d, "training") for d in dls))
    assert _images(pooled, "validation") == set().union(*(_images(d, "validation") for d in dls))
    assert not pooled.cases("test") and not _images(pooled, "training") & set().union(*(_images(d, "test") for d in dls))
    with pytest.raises(ConfigError, match="pool_dir"):
        pool_sites({s: sites / s for s in SITES}, tmp_path / "pool")


def test_pool_sites_refuses_weak_labels_and_no_site(tmp_path):
    synthesize(tmp_path / "d", sites=2, cases=2, size=16, label_kinds="site-2:box")
    with pytest.raises(ConfigError, match="site-2"):
        pool_sites({s: tmp_path / "d" / s for s in SITES}, tmp_path / "pool")
    with pytest.raises(ConfigError, match="site_dirs"):
        pool_sites({}, tmp_path / "pool2")


def test_run_local_trains_one_site_for_the_federations_steps(sites):
    out = run_local("site-2", sites / "site-2", _config(), rounds=2, device="cpu")
    assert set(out["sites_test"]) == {"site-2"} and out["sites_test"]["site-2"]["n_cases"] == 2
    assert [r["steps"] for r in out["rounds"]] == [2, 2]
    assert all(np.isfinite(v).all() for v in out["final_weights"].values())
    with pytest.raises(ValueError, match="rounds"):
        run_local("site-2", sites / "site-2", _config(), rounds=0, device="cpu")


def test_run_centralized_pools_the_sites_for_the_federations_total_steps(sites, tmp_path):
    out = run_centralized({s: sites / s for s in SITES}, _config(), rounds=1, pool_dir=tmp_path / "pool", device="cpu")
    assert out["n_train"] == sum(len(load_datalist(sites / s).training) for s in SITES)
    assert out["rounds"][0]["steps"] == 2 * len(SITES)  # local_steps x sites
    assert set(out["sites_test"]) == set(SITES) and all(t["n_cases"] == 2 for t in out["sites_test"].values())


def test_federation_records_uplink_bytes_and_scores_every_site_on_its_own_split(sites):
    dirs = {s: sites / s for s in SITES}
    dense = run_federation(dirs, _config(1), rounds=1, aggregation="mean", device="cpu")
    coded = run_federation(dirs, _config(1), rounds=1, aggregation="mean", device="cpu", codec=SparseQuantCodec())
    n_values = sum(v.size for v in dense["final_weights"].values())
    for s in SITES:
        assert dense["rounds"][0]["sites"][s]["bytes_up"] == 4 * n_values
        assert 0 < coded["rounds"][0]["sites"][s]["bytes_up"] < dense["rounds"][0]["sites"][s]["bytes_up"] / 5
    assert set(dense["sites_test"]) == set(SITES)


# ------------------------------------------------------------------------------------- goal checks
def _row(method, scenario, per_site, seed=0, bytes_up=None):
    return {"method": method, "scenario": scenario, "seed": seed, "bytes_up": bytes_up,
            "per_site": {s: {"dice": d, "n_cases": 2} for s, d in per_site.items()}}  # fmt: skip


def _rows(scenario, local, fedavg, default, central, personal=None, default_bytes=10, fedavg_bytes=1000):
    rows = [
        _row("local_only", scenario, local), _row("fedavg", scenario, fedavg, bytes_up=fedavg_bytes),
        _row("default", scenario, default, bytes_up=default_bytes), _row("centralized", scenario, central),
    ]  # fmt: skip
    if personal is not None:
        rows.append(_row("finetune", scenario, personal, bytes_up=default_bytes))
    return rows


def _status(lines, word):
    hits = [line for line in lines if word in line]
    assert hits, (word, lines)
    return [line.split()[0] for line in hits]


def test_goals_met_on_rows_that_meet_them():
    value = _value_module()
    rows = _rows("few", {"a": 0.5, "b": 0.6}, {"a": 0.7, "b": 0.7}, {"a": 0.7, "b": 0.705}, {"a": 0.71, "b": 0.71})
    rows += _rows("organs", {"a": 0.6, "b": 0.6}, {"a": 0.5, "b": 0.5}, {"a": 0.6, "b": 0.6}, {"a": 0.6, "b": 0.6},
                  personal={"a": 0.7, "b": 0.7})  # fmt: skip
    rows += [_row("default", "mixed", {"a": 0.6}), _row("voxel_only", "mixed", {"a": 0.4}), _row("all_voxel", "mixed", {"a": 0.7})]
    lines = value.goals(value.summarize_cells(rows))
    assert set(_status(lines, "few:")) == {"met"}, lines
    assert set(_status(lines, "organs: best personalised")) == {"met"}
    assert set(_status(lines, "mixed:")) == {"met"}


def test_goals_missed_with_their_numbers():
    value = _value_module()
    # default far below centralized, below FedAvg by 2 points, only 10x fewer bytes; site b loses 2 points
    rows = _rows("few", {"a": 0.5, "b": 0.6}, {"a": 0.62, "b": 0.6}, {"a": 0.6, "b": 0.58}, {"a": 0.8, "b": 0.8},
                 default_bytes=100)  # fmt: skip
    rows += [_row("default", "mixed", {"a": 0.45}), _row("voxel_only", "mixed", {"a": 0.4}), _row("all_voxel", "mixed", {"a": 0.7}),
             _row("default", "mixed", {"a": 0.3}, seed=1), _row("voxel_only", "mixed", {"a": 0.4}, seed=1),
             _row("all_voxel", "mixed", {"a": 0.7}, seed=1)]  # fmt: skip
    lines = value.goals(value.summarize_cells(rows))
    assert "MISSED" in _status(lines, "few: default vs centralized")
    assert "MISSED" in _status(lines, "few: default - fedavg")
    assert "MISSED" in _status(lines, "few: uplink")
    assert "MISSED" in _status(lines, "few: worst site")
    assert "MISSED" in _status(lines, "few: mean gain")
    assert set(_status(lines, "mixed:")) == {"MISSED"}
    assert any("-2.0" in line for line in lines if "worst site" in line)


def test_job_arg_overrides_reach_the_default_jobs_aggregation_and_codec_and_bad_ones_are_named():
    value = _value_module()
    shipped = value.job_defaults()
    job = value.job_defaults(overrides={"aam_temperature": 0.5, "up_ratio": 0.05})
    assert job["aam_args"]["temperature"] == 0.5 != shipped["aam_args"]["temperature"]
    assert job["codec"].ratio == 0.05 and shipped["codec"].ratio != 0.05
    with pytest.raises(ConfigError, match="aam_temprature"):
        value.job_defaults(overrides={"aam_temprature": 0.2})
    with pytest.raises(ConfigError, match="aam_floor"):  # the rules joining several args hold too
        value.job_defaults(overrides={"aam_floor": 0.9, "aam_cap": 0.5})


def test_resume_reruns_what_another_default_job_ran_and_keeps_what_did_not_use_it(tmp_path, monkeypatch):
    """A --json made with another default job (e.g. the former aam_temperature): its local-only,
    FedAvg and centralized runs are kept, its default-job runs are run again."""
    value = _value_module()
    ran = []
    def run_one(data, sc, mt, seed, args, job):
        ran.append((sc, mt, seed))
        return {**_row(mt, sc, {"a": 0.5}, seed), "pooled": 0.5, "seconds": 0.0}

    monkeypatch.setattr(value, "run_one", run_one)
    monkeypatch.setattr(value, "make_data", lambda root, sc, seed, args: {"sites": root})
    plan = ["--quick", "--scenarios", "few", "--methods", "local_only,fedavg,default"]
    first = tmp_path / "first.json"
    value.main([*plan, "--job-arg", "aam_temperature=0.5", "--json", str(first)])
    assert sorted(ran) == [("few", "default", 0), ("few", "fedavg", 0), ("few", "local_only", 0)]
    ran.clear()
    value.main([*plan, "--job-arg", "aam_temperature=0.5", "--resume", str(first), "--json", str(tmp_path / "same.json")])
    assert ran == []  # the same default job: nothing to run
    value.main([*plan, "--resume", str(first), "--json", str(tmp_path / "other.json")])
    assert ran == [("few", "default", 0)]  # another default job: only its runs again
