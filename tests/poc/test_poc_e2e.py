"""End to end in FLARE POC mode: startup kits, server and 2 sites on loopback, a tiny jobs/fedsegnet
submitted through the admin API, waited for, downloaded, and every process stopped by its pid."""

import math
import os

import pytest
import torch

from fedsegnet.flare.ops.poc import find_in_result
from fedsegnet.ledger import verify
from fedsegnet.report import read_records

from .conftest import running_poc, tiny_job

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_poc_end_to_end(tmp_path, poc_home, poc_sites):
    job = tiny_job(tmp_path / "fedsegnet_tiny", num_rounds=2, min_clients=2)
    with running_poc(tmp_path / "poc", ["site-1", "site-2"], poc_sites) as poc:
        pids = dict(poc.pids)
        assert set(pids) == {"server", "site-1", "site-2"}
        assert poc.connected_sites() == ["site-1", "site-2"]
        job_id = poc.submit(job)
        rounds = []
        status = poc.wait(job_id, timeout=480, on_round=rounds.append)
        assert status == "FINISHED:COMPLETED", f"{status}; server log:\n{poc._tail('server', 40)}"
        result = poc.download(job_id, tmp_path / "download")
        kits = poc.prod_dir
        # the same federation, a second job with secure aggregation: adverts signed with the kits' keys
        secure = poc.submit(tiny_job(tmp_path / "fedsegnet_secure", num_rounds=1, min_clients=2, secure_aggregation=True))
        secure_status = poc.wait(secure, timeout=480)
        assert secure_status == "FINISHED:COMPLETED", f"{secure_status}; server log:\n{poc._tail('server', 40)}"
        secure_result = poc.download(secure, tmp_path / "download_secure")
        witness_dirs = {s: poc.kit(s) / "fedsegnet_ledger_witness" for s in poc.sites}
    # every process group this test started is gone
    assert not any(_alive(pid) for pid in pids.values()), pids

    model_file = find_in_result(result, "FL_global_model.pt")
    assert model_file is not None, f"no global model in {result}"
    saved = torch.load(model_file, map_location="cpu", weights_only=False)
    weights = saved["model"]
    assert len(weights) > 10 and all(torch.isfinite(torch.as_tensor(v)).all() for v in weights.values())
    assert saved["train_conf"]["fedsegnet_round"]["completed"] == 2

    records = read_records(find_in_result(result, "fedsegnet_rounds.jsonl"))
    assert [r["round"] for r in records] == [0, 1]
    assert [r["round"] for r in rounds] == [0, 1], "wait() did not report each round as it was written"
    for rec in records:
        assert set(rec["sites"]) == {"site-1", "site-2"} and rec["missing_sites"] == {}
        assert rec["bytes_up"] > 0 and rec["bytes_down"] > 0
        assert rec["server_rss_mb"] > 50
        for site in rec["sites"].values():
            assert site["n_train"] == 4 and site["rss_mb"] > 50 and site["parent_rss_mb"] > 20
            assert site["aggregation"]["weight"] > 0
        assert math.isfinite(rec["val_dice_global"])
    cross = find_in_result(result, "cross_val_results.json")
    assert cross is not None and "site-1" in cross.read_text()


    # the ledger: signed with the server's kit key, countersigned by both sites' kit keys, checked
    # against the project's certificates and root CA, the downloaded model files included
    ledger_dir = find_in_result(result, "LEDGER.json").parent
    check = verify(ledger_dir, certs=kits, models={"final": model_file, "best": find_in_result(result, "best_FL_global_model.pt")})
    assert check.ok, "\n".join(check.lines())
    assert not any("generated" in note for note in check.notes), check.notes
    rounds = [c for c in check.checks if c.label.startswith("round")]
    assert [c.label for c in rounds] == ["round 0", "round 1"]
    assert all(c.signed_by == "localhost (kit)" and c.witnessed_by == ["site-1", "site-2"] for c in rounds), check.lines()
    for site, folder in witness_dirs.items():  # each site kept the heads it accepted, in its own workspace
        (seen,) = folder.glob(f"{job_id}*/ledger_heads_seen.jsonl")  # the first job's (a log id starts with its job id)
        assert sum('"kind":"head"' in line for line in seen.read_text().splitlines()) == 2, site


    # secure aggregation in POC: every advert checked against the project's root CA ("kit"), the
    # round aggregated from masked inputs only, and its ledger verified against the kits
    import json

    (secagg_round,) = [json.loads(line) for line in find_in_result(secure_result, "rounds.jsonl").read_text().splitlines()]
    assert secagg_round["aggregated"] and secagg_round["survivors"] == ["site-1", "site-2"]
    assert secagg_round["key_check"] == "kit" and set(secagg_round["key_checks"].values()) == {"kit"}
    (secure_record,) = read_records(find_in_result(secure_result, "fedsegnet_rounds.jsonl"))
    assert secure_record["aggregation_method"] == "secure_aggregation"
    secure_ledger = verify(find_in_result(secure_result, "LEDGER.json").parent, certs=kits)
    assert secure_ledger.ok and not any("generated" in note for note in secure_ledger.notes), secure_ledger.lines()
