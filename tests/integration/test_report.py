"""`fedsegnet report` on a real (tiny) simulator run of jobs/fedsegnet: PNG figures, an HTML page
that references them, and figure data read from the run's records and cross-site results; the job
config as deployed, models named for readers, the final model's Dice, the held-out cases; the page
in a real headless Chromium where one is installed."""

import html
import json
import re
import shutil
import subprocess

import matplotlib.image as mpimg
import pytest

from fedsegnet.cli import main
from fedsegnet.errors import FedSegNetError
from fedsegnet.flare.ops.jobs import configure_job
from fedsegnet.report import BEST_MODEL, FINAL_MODEL, build_report

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
    assert "Global (final) model on the held-out test set" in text and "lesion" in text


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


def test_the_page_says_what_ran_with_the_names_a_reader_knows(report):
    page, res = report
    data = json.loads((page.parent / "report.json").read_text())
    job = data["job"]
    assert job["server_config"].endswith("simulate_job/app_server/config/config_fed_server.json")
    assert job["site_config"] is not None and job["differ"] == []
    for name, value in TINY_JOB_ARGS.items():  # what configure_job wrote is what the report read
        assert job["args"][name] == value, name
    summary = job["summary"]
    assert summary["federation"].startswith("2 rounds (0 to 1), at least 2 sites")
    assert summary["model"].startswith("preset tiny: network ") and f"{data['model']['n_values']:,} weights" in summary["model"]
    assert summary["aggregation"].startswith("AAM") and summary["compression"].startswith("up: top 10 %")
    assert summary["differential privacy"] == "none" and summary["personalisation"] == "none"
    text = page.read_text()
    assert "<h2>What ran</h2>" in text and html.escape(summary["compression"]) in text
    # FLARE's names only in report.json; the page says global (final) / global (best) / site-N local
    assert "SRV_" not in text and data["display_names"][FINAL_MODEL] == "global (final)"
    assert data["cross_site"]["val_dice"]["display_cols"] == ["global (final)", "global (best)", "site-1 local", "site-2 local"]
    assert "rounds 0 to 1" in text and "Last round (round 1)" in text


def test_the_final_model_and_the_model_size_come_from_the_run(report):
    page, res = report
    data = json.loads((page.parent / "report.json").read_text())
    cross = res.read_cross_site()
    assert data["final_global_dice"]["sites"] == {site: cross[site][FINAL_MODEL]["val_dice"] for site in cross}
    assert BEST_MODEL in data["display_names"]
    import torch

    state = torch.load(res.global_model, map_location="cpu", weights_only=True)["model"]
    assert data["model"]["float32_bytes"] == 4 * sum(v.numel() for v in state.values() if v.is_floating_point())
    assert "Stars at the last round (1)" in page.read_text()


def test_the_held_out_cases_are_each_in_a_row(report):
    page, _ = report
    test = json.loads((page.parent / "report.json").read_text())["test"]
    cases = test["per_case"]
    assert [c["name"] for c in cases] == ["test_000.nii.gz", "test_001.nii.gz", "test_002.nii.gz"]
    for cls, row in test["summary"]["per_class"].items():  # the per-class Dice is the mean of the cases'
        assert row["dice"] == pytest.approx(sum(c["dice"][cls] for c in cases) / len(cases))
    text = page.read_text()
    assert "<h3>Per case</h3>" in text and all(f"<td>{c['name']}</td>" in text for c in cases)


BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_CHECK = """<script>window.addEventListener('load', () => { const out = document.createElement('pre');
out.id = 'fedsegnet-check'; out.textContent = JSON.stringify({
  images: [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]),
  scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
  headings: [...document.querySelectorAll('h2')].map(h => h.textContent)});
document.body.appendChild(out); });</script>"""


def test_the_page_renders_in_a_headless_browser(report, tmp_path):
    browser = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if browser is None:
        pytest.skip(f"no Chromium on this machine (looked for {', '.join(BROWSERS)}; Debian: apt-get install "
                    "chromium-headless-shell); the page's HTML is checked by the tests above")  # fmt: skip
    page, _ = report
    folder = tmp_path / "page"
    shutil.copytree(page.parent, folder)
    (folder / "check.html").write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files", "--window-size=1200,900"]
    dom = subprocess.run([*flags, "--virtual-time-budget=10000", "--dump-dom", (folder / "check.html").as_uri()],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    found = re.search(r'<pre id="fedsegnet-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the browser did not run the page's load handler: {dom.stderr[-2000:]}"
    seen = json.loads(html.unescape(found.group(1)))
    shown = {src: (w, h) for src, w, h in seen["images"]}
    assert sorted(shown) == sorted(EXPECTED)
    for name, (w, h) in shown.items():  # every figure decoded, at its own size
        img = mpimg.imread(folder / name)
        assert (h, w) == img.shape[:2], name
    assert seen["scrollWidth"] <= seen["innerWidth"], "the page scrolls sideways at 1200 px"
    assert seen["headings"][:2] == ["What ran", "Last round (round 1)"] and "Ledger" in seen["headings"]
    shot = tmp_path / "page.png"
    subprocess.run([*flags, "--hide-scrollbars", f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    img = mpimg.imread(shot)
    assert img.shape[1] == 1200 and img.std() > 0.05, "the screenshot is blank"
