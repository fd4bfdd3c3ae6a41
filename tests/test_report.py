"""fedsegnet.report without a simulator run: the count of missed rounds on records old and new; model
names for readers, heatmap text colours, the job config read from a run folder, the final global
model's Dice from cross-site results, the bytes figure's shared lines, and a page built from records."""

import json
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from fedsegnet.report import (
    BEST_MODEL,
    FINAL_MODEL,
    MISSED_ROUNDS_NAMED,
    build_report,
    bytes_curves,
    display_name,
    final_global_dice,
    job_summary,
    missed_rounds,
    missing_sites,
    model_facts,
    read_job_config,
    series,
    text_colour,
)


def _record(rnd, missing):
    return {"round": rnd, "sites": {}, "missing_sites": missing}


def test_a_site_that_missed_more_than_two_rounds_is_named_with_how_many_of_how_many():
    late, failed = {"reason": "late", "detail": "..."}, {"reason": "failed", "detail": "preflight"}
    records = [_record(0, {"site-3": late, "site-2": failed}), _record(1, {"site-3": late}), _record(2, {}),
               _record(3, {"site-3": failed, "site-2": failed}), _record(4, {"site-3": late})]  # fmt: skip
    out = missed_rounds(records)
    assert MISSED_ROUNDS_NAMED == 2 and list(out) == ["site-3"]  # site-2 missed 2: not more than 2
    assert out["site-3"]["text"] == "site-3 missed 4 of 5 rounds (failed 1, late 3)"
    assert out["site-3"]["missed"] == 4 and out["site-3"]["rounds"] == 5
    assert list(missed_rounds(records, more_than=1)) == ["site-2", "site-3"]
    assert series(records)["missed_rounds"] == out


def test_records_written_before_the_reasons_count_too():
    old = [_record(r, ["site-2"]) for r in range(3)]
    assert missing_sites(old[0]) == {"site-2": {"reason": None, "detail": "no update"}}
    assert missed_rounds(old)["site-2"]["text"] == "site-2 missed 3 of 3 rounds (no update 3)"
    assert missed_rounds([{"round": 0, "sites": {}}]) == {}


JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.mark.parametrize("raw, shown", [(FINAL_MODEL, "global (final)"), (BEST_MODEL, "global (best)"),
                                        ("SRV_other.pt", "global (other)"), ("site-1", "site-1 local")])  # fmt: skip
def test_models_are_named_for_readers(raw, shown):
    assert FINAL_MODEL == "SRV_FL_global_model.pt" and BEST_MODEL == "SRV_best_FL_global_model.pt"
    assert display_name(raw) == shown


@pytest.mark.parametrize("value, colour", [(0.0, "white"), (1.0, "black")])
def test_heatmap_text_contrasts_with_its_cell(value, colour):
    viridis = matplotlib.colormaps["viridis"]  # 0: dark purple, 1: yellow
    assert text_colour(viridis(value)) == colour
    assert text_colour((1, 1, 1, 1)) == "black" and text_colour((0, 0, 0, 1)) == "white"
    assert text_colour((1, 1, 0)) == "black"  # white on yellow was the complaint


def _job_dir(tmp_path: Path, job: str, server_only: bool = False, **site_changes) -> Path:
    """A run folder laid out as the simulator deploys ``jobs/<job>``: the server's app, and one site's."""
    root = tmp_path / job
    config = JOBS / job / "app" / "config"
    (root / "server" / "simulate_job" / "app_server" / "config").mkdir(parents=True)
    shutil.copy(config / "config_fed_server.json", root / "server" / "simulate_job" / "app_server" / "config")
    site = root / "site-1" / "simulate_job" / "app_site-1" / "config"
    site.mkdir(parents=True)
    client = json.loads((config / "config_fed_client.json").read_text())
    (site / "config_fed_client.json").write_text(json.dumps({**client, **site_changes}))
    return root


def test_the_job_config_is_read_from_the_server_and_a_site(tmp_path):
    root = _job_dir(tmp_path, "fedsegnet", local_steps=7, dp="patient", dp_target_epsilon=8.0, preset="synthetic")
    job = read_job_config(root / "server" / "simulate_job", root)
    server = json.loads((JOBS / "fedsegnet" / "app" / "config" / "config_fed_server.json").read_text())
    assert job["site_config"].endswith("app_site-1/config/config_fed_client.json")
    assert job["args"]["num_rounds"] == server["num_rounds"] and job["source"]["aggregation"] == "server"
    assert job["args"]["local_steps"] == 7 and job["source"]["local_steps"] == "site"
    assert job["args"]["preset"] == server["preset"] and job["differ"] == ["preset"]  # the server's shown, the difference named
    assert "format_version" not in job["args"] and "components" not in job["args"]
    facts = {"network": "hybrid_unetr", "patch_size": [32, 32, 32], "num_classes": 3, "in_channels": 1,
             "n_values": 1000, "float32_bytes": 4000}  # fmt: skip
    lines = job_summary(job, facts)
    assert list(lines) == ["federation", "model", "local training", "aggregation", "compression", "personalisation",
                           "differential privacy"]  # fmt: skip
    assert lines["model"].startswith(f"preset {server['preset']}: network hybrid_unetr, patch 32×32×32 voxels, 3 classes")
    assert "the preset's" in lines["model"] and "1,000 weights (0.00 MB as float32)" in lines["model"]
    assert lines["aggregation"].startswith("AAM") and lines["compression"].startswith("up: top 10 % of the values at 4 bits")
    assert lines["local training"] == "7 optimiser steps per site and round"
    assert lines["differential privacy"].startswith("DP-SGD, one patient as the unit: noise chosen to spend epsilon 8")
    assert lines["personalisation"] == "none"


def test_a_secure_aggregation_job_says_what_the_server_saw_and_what_did_not_run(tmp_path):
    root = _job_dir(tmp_path, "fedsegnet")
    job = read_job_config(root / "server" / "simulate_job", root)
    assert job["args"]["secure_aggregation"] is False and not job_summary(job)["aggregation"].startswith("secure")
    job["args"].update(secure_aggregation=True, secagg_threshold=3)  # as both configs of such a job have them
    lines = job_summary(job)
    assert lines["aggregation"].startswith("secure aggregation") and "only each round's weighted sum" in lines["aggregation"]
    assert "threshold 3 sites" in lines["aggregation"] and "weights: AAM's from the sites' reports" in lines["aggregation"]
    assert lines["compression"].startswith("up: one support per round for every site, 10 % of each tensor's blocks")
    assert "4-bit values in the fewest ring bits; down: top 10 % at 4 bits" in lines["compression"]
    job["args"]["aggregation"] = "mean"
    assert "weights: the sites' training-case counts" in job_summary(job)["aggregation"]


def test_the_fedavg_job_says_fedavg_and_no_compression(tmp_path):
    root = _job_dir(tmp_path, "fedavg")
    lines = job_summary(read_job_config(root / "server" / "simulate_job", root))
    assert lines["aggregation"].startswith("FedAvg (FLARE's InTimeAccumulateWeightedAggregator")
    assert lines["compression"] == "none: updates and models travel as float32"
    assert lines["differential privacy"] == "none"


def test_no_server_config_means_no_job_section(tmp_path):
    assert read_job_config(tmp_path) is None


def test_model_facts_count_the_float32_weights(tmp_path):
    spec = {"network": "unet", "patch_size": [8, 8, 8], "num_classes": 2, "in_channels": 1}
    state = {"a.weight": torch.zeros(3, 4), "a.bias": torch.zeros(3), "steps": torch.zeros((), dtype=torch.int64)}
    torch.save({"model": state, "train_conf": {"fedsegnet": spec}}, tmp_path / "m.pt")
    facts = model_facts(tmp_path / "m.pt")
    assert facts["n_values"] == 15 and facts["float32_bytes"] == 60 and facts["network"] == "unet"
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    assert model_facts(tmp_path / "bad.pt") is None and model_facts(None) is None and model_facts(tmp_path / "none.pt") is None


def test_the_final_global_model_dice_comes_from_cross_site_weighted_by_cases():
    cross = {"site-1": {FINAL_MODEL: {"val_dice": 0.5}, "site-1": {"val_dice": 0.9}},
             "site-2": {FINAL_MODEL: {"val_dice": 0.8}, BEST_MODEL: {"val_dice": 0.1}}}  # fmt: skip
    records = [{"round": 0, "sites": {"site-1": {"n_train": 1}, "site-2": {"n_train": 9}}},
               {"round": 1, "sites": {"site-1": {"n_train": 3}}}]  # fmt: skip
    out = final_global_dice(cross, records)
    assert out["sites"] == {"site-1": 0.5, "site-2": 0.8}
    assert out["mean"] == pytest.approx((0.5 * 3 + 0.8 * 9) / 12)  # each site's last case count
    assert final_global_dice({"site-1": {"site-1": {"val_dice": 0.9}}}, records) is None
    assert final_global_dice({"site-1": {FINAL_MODEL: {"val_dice": 0.5}}}, [])["mean"] is None


def test_sites_with_the_same_bytes_share_one_named_line():
    s = {"bytes_up": {"site-1": [10, 20], "site-2": [10, 21], "site-3": [None, None]},
         "bytes_down": {"site-1": [400, 50], "site-2": [400, 50], "site-3": [None, None]}}  # fmt: skip
    curves = bytes_curves(s)
    assert list(curves) == ["site-1 up", "site-2 up", "site-1, site-2 down (identical)"]
    assert curves["site-1, site-2 down (identical)"] == {"sites": ["site-1", "site-2"], "direction": "down", "kB": [0.4, 0.05]}


def _site(dice_global, dice_local, n_train=4):
    return {"n_train": n_train, "train_loss": 1.0 - dice_local, "val_dice_global": dice_global, "val_dice_local": dice_local,
            "bytes_up": 5000, "bytes_down": 40000, "aggregation": {"weight": 0.5, "accepted": True}}  # fmt: skip


def test_a_page_from_records_and_cross_site_results_names_models_and_says_what_ran(tmp_path):
    root = _job_dir(tmp_path, "fedsegnet")
    job = root / "server" / "simulate_job"
    records = [{"round": r, "sites": {"site-1": _site(0.1 * r, 0.1 * r + 0.05), "site-2": _site(0.1 * r, 0.2)},
                "val_dice_global": 0.1 * r, "val_dice_local": 0.2} for r in range(3)]  # fmt: skip
    (job / "fedsegnet_rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cross = {site: {FINAL_MODEL: {"val_dice": 0.6, "val_hd95": 3.0}, BEST_MODEL: {"val_dice": 0.5, "val_hd95": 4.0},
                    "site-1": {"val_dice": 0.55, "val_hd95": 5.0}, "site-2": {"val_dice": 0.45, "val_hd95": 6.0}}
             for site in ("site-1", "site-2")}  # fmt: skip
    (job / "cross_site_val").mkdir()
    (job / "cross_site_val" / "cross_val_results.json").write_text(json.dumps(cross))
    page = build_report(root, tmp_path / "report")
    text = page.read_text()
    assert "SRV_" not in text and "FL_global_model" not in text  # FLARE's file names stay in report.json
    for name in ("global (final)", "global (best)", "site-1 local", "site-2 local"):
        assert f"<th>{name}</th>" in text
    assert "<h2>What ran</h2>" in text and "AAM (Adaptive Aggregation Mechanism)" in text
    assert "rounds 0 to 2" in text and "Last round (round 2)" in text and "numbered from 0" in text
    assert "Stars at the last round (2)" in text
    data = json.loads((page.parent / "report.json").read_text())
    assert data["display_names"] == {BEST_MODEL: "global (best)", FINAL_MODEL: "global (final)",
                                     "site-1": "site-1 local", "site-2": "site-2 local"}  # fmt: skip
    assert data["cross_site"]["val_dice"]["cols"] == [FINAL_MODEL, BEST_MODEL, "site-1", "site-2"]
    assert data["final_global_dice"] == {"sites": {"site-1": 0.6, "site-2": 0.6}, "mean": pytest.approx(0.6)}
    assert data["job"]["summary"]["compression"].startswith("up: top 10 %") and data["model"] is None  # no model file


def test_slices_fill_the_label_and_outline_the_prediction_in_another_colour(tmp_path):
    import matplotlib.image as mpimg

    from fedsegnet.report import LABEL_FILLS, PREDICTION_LINES, _plot_slices

    label, pred = np.zeros((32, 32, 8), dtype=np.int64), np.zeros((32, 32, 8), dtype=np.int64)
    label[8:20, 8:20, 2:6] = 1
    pred[12:24, 12:24, 2:6] = 1
    _plot_slices(tmp_path / "s.png", np.zeros((32, 32, 8), dtype=np.float32), label, pred, "t", ["background", "organ"])
    rgb = mpimg.imread(tmp_path / "s.png")[..., :3].reshape(-1, 3)

    def near(hex_colour, tol):
        target = np.array(matplotlib.colors.to_rgb(hex_colour))
        return (np.abs(rgb - target).max(axis=1) < tol).sum()

    fill_on_black = 0.45 * np.array(matplotlib.colors.to_rgb(LABEL_FILLS[0]))  # alpha 0.45 over a black image
    assert near(PREDICTION_LINES[0], 0.05) > 50, "no prediction line in its colour"
    assert (np.abs(rgb - fill_on_black).max(axis=1) < 0.05).sum() > 500, "no label fill in its colour"
    assert LABEL_FILLS[0] != PREDICTION_LINES[0]


def test_a_case_row_names_classes_and_regions_and_means_over_classes_only():
    from fedsegnet.report import _case_row

    case = {"name": "c.nii.gz", "dice": {1: 0.8, 2: 0.4, "whole_organ": 0.9}, "hd95": {1: 2.0, 2: None, "whole_organ": 1.5}}
    row = _case_row(case, {0: "background", 1: "organ", 2: "lesion"})
    assert row == {"name": "c.nii.gz", "dice_mean": pytest.approx(0.6), "dice": {"organ": 0.8, "lesion": 0.4, "whole_organ": 0.9},
                   "hd95": {"organ": 2.0, "lesion": None, "whole_organ": 1.5}}  # fmt: skip
