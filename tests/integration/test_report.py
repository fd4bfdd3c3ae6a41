"""`fedsegnet report` on a real (tiny) simulator run of jobs/fedsegnet: PNG figures, an HTML page
that references them, and figure data read from the run's records and cross-site results."""

import json
import shutil

import matplotlib.image as mpimg
import pytest

from fedsegnet.cli import main
from fedsegnet.errors import FedSegNetError
from fedsegnet.flare.ops.jobs import configure_job
from fedsegnet.report import build_report

from .conftest import JOBS, TINY_JOB_ARGS, run_two_sites

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tiny_sites, tmp_path_factory):
    work = tmp_path_factory.mktemp("report")
    job = configure_job(JOBS / "fedsegnet", work / "fedsegnet", **TINY_JOB_ARGS)
    rc, res, run = run_two_sites(job, work / "ws", tiny_sites)
    assert rc == 0 and res.records.exists(), f"simulator failed, see {run.log_file}"
    page = build_report(work / "ws", work / "report", data_dir=tiny_sites / "test", device="cpu")
    return page, res


EXPECTED = ["dice_per_round.png", "train_loss_per_round.png", "bytes_per_round.png", "aam_weights.png", "memory_per_round.png",
            "cross_site_dice.png", "cross_site_hd95.png", "test_case_slices.png"]  # fmt: skip


def test_figures_are_images_and_the_page_shows_them(report):
    page, _ = report
    text = page.read_text()
    for name in EXPECTED:
        img = mpimg.imread(page.parent / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0, name
        assert f"src='{name}'" in text, f"{name} not on the page"
    assert "Global model on the held-out test set" in text and "lesion" in text


def test_figure_data_come_from_the_run(report):
    page, res = report
    data = json.loads((page.parent / "report.json").read_text())
    records = res.read_records()
    s = data["series"]
    assert s["rounds"] == [r["round"] for r in records]
    assert s["val_dice_global"] == [r["val_dice_global"] for r in records]
    for site in ("site-1", "site-2"):
        assert s["bytes_up"][site] == [r["sites"][site]["bytes_up"] for r in records]
        assert s["train_loss"][site] == [r["sites"][site]["train_loss"] for r in records]
        assert s["aam_weight"][site] == [r["sites"][site]["aggregation"]["weight"] for r in records]
    cross = res.read_cross_site()
    m = data["cross_site"]["val_dice"]
    for i, row in enumerate(m["rows"]):
        for j, col in enumerate(m["cols"]):
            assert m["values"][i][j] == (cross[row].get(col) or {}).get("val_dice")
    assert data["test"]["summary"]["n_cases"] == 3


def test_report_cli_and_errors(report, tmp_path, capsys):
    _, res = report
    assert main(["report", str(res.workspace), "--out", str(tmp_path / "r")]) == 0  # without --data: no evaluation
    assert (tmp_path / "r" / "index.html").exists() and not (tmp_path / "r" / "test_case_slices.png").exists()
    with pytest.raises(FedSegNetError, match="no fedsegnet_rounds.jsonl"):
        build_report(tmp_path, tmp_path / "r2")


def test_the_page_has_the_verified_ledger(report, tmp_path):
    page, res = report
    ledger = json.loads((page.parent / "report.json").read_text())["ledger"]
    assert ledger["ok"] and ledger["models_checked"] == ["best", "final"]
    assert [e["label"] for e in ledger["entries"]] == ["job_start", "round 0", "round 1", "job_end"]
    assert all(e["witnessed_by"] == ["site-1", "site-2"] for e in ledger["entries"] if e["label"].startswith("round"))
    assert ledger["last_head"]["size"] == 4 and ledger["last_head"]["key_source"] == "generated, not from a kit"
    text = page.read_text()
    assert "<h2>Ledger</h2>" in text and "verified" in text and "fedsegnet ledger verify RUN --kits" in text
    # a replaced model file shows on the page as a failed check
    copy = tmp_path / "ws"
    shutil.copytree(res.workspace, copy)
    (copy / "server" / "simulate_job" / "app_server" / "FL_global_model.pt").write_bytes(b"another model")
    other = build_report(copy, tmp_path / "report")
    assert "<b>FAILED</b>" in other.read_text() and "the file was replaced" in other.read_text()
