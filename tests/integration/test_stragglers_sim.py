"""A slow site in a real `nvflare simulator` run of jobs/fedsegnet (3 sites, site-3 held by SlowSite):
by default every round waits for it; with drop_stragglers it is named as missing in the round
records, the server log and the report."""

import json

import pytest

from fedsegnet.data.synth import synthesize
from fedsegnet.flare.ops.jobs import SimResults, SimulatorRun, configure_job
from fedsegnet.report import build_report

from .conftest import JOBS, TINY_JOB_ARGS, without_cross_site

pytestmark = pytest.mark.slow

SITES = ["site-1", "site-2", "site-3"]


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("three_sites")
    synthesize(root, sites=3, cases=4, size=32, seed=5, test_cases=2)
    return root


def _run_with_slow_site_3(work, data_root, seconds, **job_args):
    """jobs/fedsegnet with site-3's train task held ``seconds`` each round; ``(rc, SimResults, SimulatorRun)``."""
    job = without_cross_site(configure_job(JOBS / "fedsegnet", work / "fedsegnet", **{**TINY_JOB_ARGS, "local_steps": 2, **job_args}))
    client_cfg = job / "app" / "config" / "config_fed_client.json"
    cfg = json.loads(client_cfg.read_text())
    cfg["task_data_filters"][0]["filters"].insert(
        0, {"path": "fedsegnet.flare.faults.SlowSite", "args": {"sites": ["site-3"], "seconds": seconds}}
    )
    client_cfg.write_text(json.dumps(cfg, indent=2))
    with SimulatorRun(job, work / "ws", n_clients=3, threads=3, data_root=data_root) as run:
        rc = run.wait(timeout=300)
    return rc, SimResults(work / "ws"), run


def _contributed(record) -> list[str]:
    return sorted(s for s, e in record["sites"].items() if (e.get("aggregation") or {}).get("accepted"))


def test_by_default_every_round_waits_for_the_slow_site(three_sites, tmp_path):
    # FLARE's rule (min_clients 2, no wait after them) would drop site-3 every round; without drop_stragglers it must not apply
    rc, res, run = _run_with_slow_site_3(tmp_path, three_sites, seconds=4, wait_after_min_clients=0)
    assert rc == 0, f"simulator failed, see {run.log_file}:\n{run.log_file.read_text()[-3000:]}"
    records = res.read_records()
    assert [r["round"] for r in records] == [0, 1]
    for record in records:
        assert _contributed(record) == SITES, f"round {record['round']}: {record['missing_sites']}"
        assert record["missing_sites"] == {}
        assert record["seconds"] >= 4
    assert "did not contribute" not in res.server_log.read_text()


def test_with_drop_stragglers_the_slow_site_is_named_in_record_log_and_report(three_sites, tmp_path):
    rc, res, run = _run_with_slow_site_3(tmp_path, three_sites, seconds=4, num_rounds=3, drop_stragglers=True,
                                         wait_after_min_clients=0)  # fmt: skip
    assert rc == 0, f"simulator failed, see {run.log_file}:\n{run.log_file.read_text()[-3000:]}"
    records = res.read_records()
    assert [r["round"] for r in records] == [0, 1, 2]
    for record in records:
        assert _contributed(record) == ["site-1", "site-2"]
        assert list(record["missing_sites"]) == ["site-3"]
        assert record["missing_sites"]["site-3"]["reason"] == "late"
        assert "drop_stragglers" in record["missing_sites"]["site-3"]["detail"]
    assert "round 2: site site-3 did not contribute: late" in res.server_log.read_text()

    page = build_report(tmp_path / "ws", tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    missed = report["series"]["missed_rounds"]
    assert list(missed) == ["site-3"] and missed["site-3"]["text"] == "site-3 missed 3 of 3 rounds (late 3)"
    assert "site-3 missed 3 of 3 rounds (late 3)" in page.read_text()
