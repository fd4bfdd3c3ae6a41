"""A real `nvflare simulator` run of jobs/fedavg: 2 sites, 2 rounds, tiny preset."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from fedsegnet.flare.ops.jobs import configure_job
from fedsegnet.training.spec import build_from_spec, load_model_file

from .conftest import JOBS, TINY_JOB_ARGS, run_two_sites

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fedavg_run(tiny_sites, tmp_path_factory):
    work = tmp_path_factory.mktemp("fedavg")
    job = configure_job(JOBS / "fedavg", work / "fedavg", **TINY_JOB_ARGS)
    return run_two_sites(job, work / "ws", tiny_sites)


def test_simulator_exits_cleanly(fedavg_run):
    rc, res, run = fedavg_run
    assert rc == 0, f"simulator failed, see {run.log_file}:\n{run.log_file.read_text()[-3000:]}"


def test_global_model_saved_trained_and_self_describing(fedavg_run):
    _, res, _ = fedavg_run
    model, spec = load_model_file(res.global_model)
    assert spec["network"] == "hybrid_unetr" and spec["num_classes"] == 3 and spec["preset"] == "tiny"
    torch.manual_seed(TINY_JOB_ARGS["seed"])
    initial = build_from_spec(spec).state_dict()
    trained = model.state_dict()
    assert set(initial) == set(trained)
    assert all(torch.isfinite(v).all() for v in trained.values())
    changed = [k for k in trained if not torch.equal(trained[k].float(), initial[k].float())]
    assert len(changed) > len(trained) // 2, "the global model barely changed: did the updates get applied?"


def test_round_records_have_both_sites(fedavg_run):
    _, res, _ = fedavg_run
    records = res.read_records()
    assert [r["round"] for r in records] == [0, 1]
    for r in records:
        assert sorted(r["sites"]) == ["site-1", "site-2"]
        for s in r["sites"].values():
            assert s["n_train"] > 0 and s["local_steps"] == TINY_JOB_ARGS["local_steps"]
            assert s["label_kind"] == "voxel"
            assert 0.0 <= s["val_dice_local"] <= 1.0
    # round 1's sites validated the global model of round 0 before training
    assert all(s["val_dice_global"] is not None for s in records[1]["sites"].values())


def test_cross_site_evaluation(fedavg_run):
    _, res, _ = fedavg_run
    cross = res.read_cross_site()
    assert sorted(cross) == ["site-1", "site-2"]
    for site, row in cross.items():
        models = set(row)
        assert {"site-1", "site-2"} <= models, f"{site} did not evaluate both local models: {models}"
        assert any(m.startswith("SRV_") for m in models), f"{site} did not evaluate the server model: {models}"
        for metrics in row.values():
            assert 0.0 <= metrics["val_dice"] <= 1.0
            assert metrics["val_hd95"] is None or math.isfinite(metrics["val_hd95"])
        for owner, metrics in row.items():  # no harm: each site keeps its best model of each server model
            choice = metrics.get("site_choice")
            assert (choice is not None) == owner.startswith("SRV_"), (site, owner)
            if choice:
                scores = {k: v for k, v in choice["val_dice"].items() if v is not None}
                assert set(choice["val_dice"]) == {"global", "local"} and choice["val_dice"]["global"] == metrics["val_dice"]
                assert scores[choice["chosen"]] == max(scores.values())
    from fedsegnet.report import site_choices

    kept = site_choices(cross)
    assert sorted(kept) == ["site-1", "site-2"] and all(any(o.startswith("SRV_") for o in v) for v in kept.values())


def test_tensorboard_streams_from_both_sites(fedavg_run):
    _, res, _ = fedavg_run
    streams = {p.parent.name for p in res.tb_dir.rglob("events.out.tfevents.*")}
    assert {"site-1", "site-2", "server"} <= streams


def test_eval_cli_on_the_held_out_set(fedavg_run, tiny_sites):
    _, res, _ = fedavg_run
    out = subprocess.run(
        [sys.executable, "-m", "fedsegnet.cli", "eval", "--model", str(res.global_model), "--data",
         str(tiny_sites / "test"), "--json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result = json.loads(out)
    assert set(result) >= {"dice_mean", "hd95_mean", "per_class"}
    assert 0.0 <= result["dice_mean"] <= 1.0
    assert set(result["per_class"]) == {"organ", "lesion"} or len(result["per_class"]) == 2


def test_the_ledger_verifies_and_holds_the_final_model(fedavg_run):
    from fedsegnet.ledger import Ledger, hash_weights, verify

    _, res, _ = fedavg_run
    folder = res.job_root / "fedsegnet_ledger"
    result = verify(folder, models={"final": res.global_model, "best": res.best_model})
    assert result.ok, "\n".join(result.lines())
    assert any("generated for the run" in note for note in result.notes)  # the simulator has no kits, and says so
    entries = Ledger.open(folder).entries
    rounds = [e for e in entries if e["kind"] == "round"]
    assert [e["round"] for e in rounds] == [0, 1]
    assert entries[0]["kind"] == "job_start" and entries[0]["participants"] == ["site-1", "site-2"]
    assert entries[-1]["kind"] == "job_end" and set(entries[-1]["models"]) == {"final", "best"}
    for e in rounds:
        assert sorted(e["sites"]) == sorted(e["witnesses"]) == ["site-1", "site-2"]
    model, _ = load_model_file(res.global_model)
    assert hash_weights({k: v.numpy() for k, v in model.state_dict().items()}) == rounds[-1]["global_after"]


def test_eval_and_infer_use_the_model_a_site_chose(fedavg_run, tiny_sites, tmp_path):
    from fedsegnet.training.choice import chosen_model

    _, res, _ = fedavg_run
    site_job = res.workspace / "site-1" / "simulate_job"
    model, info = chosen_model(site_job)
    run = lambda *a: subprocess.run([sys.executable, "-m", "fedsegnet.cli", *a], capture_output=True, text=True)  # noqa: E731
    chose = run("eval", "--site-choice", str(site_job), "--data", str(tiny_sites / "test"), "--json")
    direct = run("eval", "--model", str(model), "--data", str(tiny_sites / "test"), "--json")
    assert chose.returncode == 0 and json.loads(chose.stdout) == json.loads(direct.stdout)
    assert f"site-1 keeps its '{info['chosen']}' model of SRV_FL_global_model.pt" in chose.stderr
    image = tiny_sites / "test" / json.loads((tiny_sites / "test" / "dataset.json").read_text())["test"][0]["image"]
    out = tmp_path / "seg.nii.gz"
    infer = run("infer", "--site-choice", str(site_job), "--image", str(image), "--out", str(out))
    assert infer.returncode == 0 and out.is_file(), infer.stderr
    both = run("eval", "--site-choice", str(site_job), "--model", str(model), "--data", str(tiny_sites / "test"))
    assert both.returncode == 2 and "exactly one of --model and --site-choice" in both.stderr
