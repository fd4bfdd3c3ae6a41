"""A site privacy policy (local/privacy.json) enforces the compression filter whatever the job says.

FLARE applies a site's scope filters before the job's own filters, to every task result; the job
here has had its site-side encoder removed, so only the site's policy can have encoded the updates.
"""

import json
from pathlib import Path

import pytest

from fedsegnet.flare.ops.poc import PocSystem, find_in_result, free_port
from fedsegnet.report import read_records

from .conftest import REPO, running_poc, tiny_job

POLICY = REPO / "poc" / "privacy.json"


def _without_site_encoder(job: Path) -> Path:
    path = job / "app" / "config" / "config_fed_client.json"
    config = json.loads(path.read_text())
    config["task_result_filters"] = []
    path.write_text(json.dumps(config, indent=2))
    return job


def test_poc_prepare_replaces_a_hand_placed_policy(tmp_path, poc_home, poc_sites):
    """`nvflare poc prepare` recreates the workspace: a privacy.json placed before is lost, so
    PocSystem.prepare writes the policy after preparing."""
    system = PocSystem(tmp_path / "poc", sites=["site-1"], data_root=poc_sites, fed_learn_port=free_port(), admin_port=free_port())
    system.prepare()
    placed = system.kit("site-1") / "local" / "privacy.json"
    placed.write_text(POLICY.read_text())
    system.prepare(overwrite=True)
    assert not placed.exists(), "nvflare poc prepare kept a hand-placed privacy.json"
    system.prepare(privacy_policy=POLICY, overwrite=True)
    assert json.loads(placed.read_text())["default_scope"] == "compressed"


def test_policy_file_is_checked(tmp_path, poc_home):
    system = PocSystem(tmp_path / "poc", sites=["site-1"], fed_learn_port=free_port(), admin_port=free_port())
    bad = tmp_path / "privacy.json"
    bad.write_text("{not json")
    with pytest.raises(Exception, match="privacy.json"):
        system.set_privacy_policy(bad)


@pytest.mark.slow
def test_poc_site_policy_encodes_updates(tmp_path, poc_home, poc_sites):
    job = _without_site_encoder(tiny_job(tmp_path / "no_site_encoder", num_rounds=2, min_clients=2))
    with running_poc(tmp_path / "poc", ["site-1", "site-2"], poc_sites, privacy_policy=POLICY) as poc:
        job_id = poc.submit(job)
        status = poc.wait(job_id, timeout=480)
        assert status == "FINISHED:COMPLETED", f"{status}; server log:\n{poc._tail('server', 40)}"
        residuals = {s: poc.site_run_dir(s, job_id) / "fedsegnet_site_policy_residual.pt" for s in poc.sites}
        result = poc.download(job_id, tmp_path / "download")
    # the site's policy filter ran: it left its residual file in the site's job folder ...
    assert all(p.exists() for p in residuals.values()), residuals
    # ... and the server received encoded updates (the encoder's meta; a small fraction of the dense size)
    records = read_records(find_in_result(result, "fedsegnet_rounds.jsonl"))
    assert len(records) == 2
    for rec in records:
        for site, entry in rec["sites"].items():
            assert entry["sent_values"] is not None and entry["sent_values"] > 0, (site, entry)
            dense_bytes = 4 * entry["n_values"]  # float32 values the decoded update holds
            assert entry["bytes_up"] > 0
            assert entry["residual_norm"] is not None and entry["residual_norm"] > 0
            assert entry["bytes_up"] < dense_bytes / 3, (entry["bytes_up"], dense_bytes)
