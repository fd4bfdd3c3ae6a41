"""Patient-level DP-SGD in a real `nvflare simulator` run of jobs/fedsegnet: every round's epsilon per
site in the round records, the accountant state in each site's workspace, and a budget that lets
two of three rounds train: in the third every site refuses, the server records why, and the job
ends with the last global model."""

import json

import pytest

from fedsegnet.config import get_preset
from fedsegnet.data.datalist import load_datalist
from fedsegnet.flare.constants import PRIVACY_DIR
from fedsegnet.flare.ops.jobs import configure_job
from fedsegnet.privacy import PrivacyAccountant, cases_per_step, default_delta, sample_rate
from fedsegnet.report import build_report

from .conftest import JOBS, TINY_JOB_ARGS, run_two_sites

pytestmark = pytest.mark.slow

SITES = ["site-1", "site-2"]
STEPS = 2
NOISE = 1.0


def _budget_for_two_rounds(data_root) -> float:
    """A budget between the epsilon of 2 and of 3 rounds at the site that spends the most."""
    rounds = {2: 0.0, 3: float("inf")}
    for site in SITES:
        n = len(load_datalist(data_root / site).training)
        q = sample_rate(cases_per_step(get_preset("tiny")), n)
        spent = {r: PrivacyAccountant(default_delta(n)).epsilon_after(r * STEPS, NOISE, q) for r in rounds}
        rounds = {2: max(rounds[2], spent[2]), 3: min(rounds[3], spent[3])}
    assert rounds[2] < rounds[3]
    return (rounds[2] + rounds[3]) / 2


def test_epsilon_is_recorded_each_round_and_the_budget_ends_the_job(tiny_sites, tmp_path):
    budget = _budget_for_two_rounds(tiny_sites)
    job = configure_job(
        JOBS / "fedsegnet", tmp_path / "job",
        **{**TINY_JOB_ARGS, "num_rounds": 3, "local_steps": STEPS, "dp": "patient", "dp_noise": NOISE, "dp_budget": budget},
    )  # fmt: skip
    rc, res, run = run_two_sites(job, tmp_path / "ws", tiny_sites)
    assert rc == 0, f"simulator failed, see {run.log_file}:\n{run.log_file.read_text()[-3000:]}"
    records = res.read_records()
    assert [r["round"] for r in records] == [0, 1, 2]
    for record in records[:2]:
        assert record["missing_sites"] == {}
        for site in SITES:
            entry = record["sites"][site]
            assert entry["dp"]["steps"] == STEPS * (record["round"] + 1) and 0 < entry["dp"]["epsilon"] <= budget
            assert entry["train_loss"] is None and entry["label_agreement"] is None  # not private: not sent
            assert entry["aggregation"]["accepted"]
        assert record["dp_epsilon_max"] == max(record["sites"][s]["dp"]["epsilon"] for s in SITES)
    last = records[2]
    assert sorted(last["missing_sites"]) == SITES
    for site in SITES:
        why = last["missing_sites"][site]
        assert why["reason"] == "budget" and f"dp_budget={budget:g}" in why["detail"] and site in why["detail"]
    log = res.server_log.read_text()
    assert "no site can train, so this is the last round" in log
    assert "round 2: no update passed the gate; the global model stays as it is" in log
    assert res.global_model.is_file() and res.cross_site.is_file()
    for site in SITES:  # the accountant state the sites keep: 2 rounds of steps
        state = json.loads((tmp_path / "ws" / site / "simulate_job" / PRIVACY_DIR / f"{site}.json").read_text())
        assert sum(n for _, _, n in state["accountant"]["history"]) == 2 * STEPS and state["round"] == 1

    # the report shows the spend against the budget
    page = build_report(tmp_path / "ws", tmp_path / "report").read_text()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["series"]["dp_budget"] == pytest.approx(budget)
    for site in SITES:
        spent = report["series"]["dp_epsilon"][site]
        assert spent[0] < spent[1] <= budget and spent[2] is None  # no point for the round not trained
        assert f"<td>{site}</td><td>{spent[1]:.3f}</td>" in page
    assert (tmp_path / "report" / "dp_epsilon.png").is_file() and "Differential privacy" in page

    # the ledger records each site's spend, and the budget refusals with their reason
    from fedsegnet.ledger import Ledger, verify

    folder = res.job_root / "fedsegnet_ledger"
    assert verify(folder, models={"final": res.global_model}).ok
    rounds = [e for e in Ledger.open(folder).entries if e["kind"] == "round"]
    for entry, record in zip(rounds[:2], records[:2]):
        assert {s: v["epsilon"] for s, v in entry["sites"].items()} == {s: record["sites"][s]["dp"]["epsilon"] for s in SITES}
        assert all("train_loss" not in v["meta"] for v in entry["sites"].values())  # what DP keeps at the site stays there
    assert rounds[2]["sites"] == {} and sorted(rounds[2]["refused"]) == SITES
    assert all(r["reason"].startswith("budget: ") and r["payload_sha256"] is None for r in rounds[2]["refused"].values())
    assert rounds[2]["global_before"] == rounds[2]["global_after"]
