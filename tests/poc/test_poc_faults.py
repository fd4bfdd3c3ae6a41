"""Faults with real FLARE processes in POC mode: a site killed mid-job, a site whose data fails
preflight, the server killed mid-job and the federation resumed in a new job."""

import json
import shutil
import signal
import time

import pytest
import torch

from fedsegnet.flare.ops.jobs import configure_job
from fedsegnet.flare.ops.poc import find_in_result
from fedsegnet.ledger import Ledger, verify
from fedsegnet.report import read_records

from .conftest import running_poc, tiny_job

pytestmark = pytest.mark.slow


def _text(path) -> str:
    return path.read_text(errors="replace") if path and path.exists() else ""


def test_poc_server_killed_then_resumed_loses_no_round(tmp_path, poc_home, poc_sites):
    rounds = 5
    job = tiny_job(tmp_path / "fedsegnet_tiny", num_rounds=rounds, min_clients=2, local_steps=6)
    with running_poc(tmp_path / "poc", ["site-1", "site-2"], poc_sites) as poc:
        first = poc.submit(job)
        seen = []

        def kill_after_round_1(rec):
            seen.append(rec["round"])
            if rec["round"] >= 1 and poc.running().get("server"):
                poc.kill("server", signal.SIGKILL)  # a crash: no shutdown, nothing saved on the way out

        with pytest.raises(Exception):  # the admin API loses its server
            poc.wait(first, timeout=300, on_round=kill_after_round_1, poll=0.5)
        assert not poc.running()["server"] and seen and seen[-1] < rounds - 1, f"killed too late: rounds {seen}"
        old_run = poc.server_run_dir(first)
        saved = torch.load(old_run / "app_server" / "FL_global_model.pt", map_location="cpu", weights_only=False)
        completed = saved["train_conf"]["fedsegnet_round"]["completed"]
        assert completed >= 2 and "fedsegnet_aam" in saved["train_conf"]
        old_records = read_records(old_run / "fedsegnet_rounds.jsonl")

        poc.start_participant("server")
        poc.wait_ready(poc.sites, timeout=180)
        resumed_job = configure_job(job, tmp_path / "fedsegnet_resume", resume_from=first)
        second = poc.submit(resumed_job)
        status = poc.wait(second, timeout=480)
        assert status == "FINISHED:COMPLETED", f"{status}; server log:\n{poc._tail('server', 40)}"
        site_logs = {s: _text(poc.site_run_dir(s, second) / "log.txt") for s in poc.sites}
        result = poc.download(second, tmp_path / "download")
        kits, old_ledger = poc.prod_dir, Ledger.open(old_run / "fedsegnet_ledger")
        witness_logs = {s: sorted(p.name for p in (poc.kit(s) / "fedsegnet_ledger_witness").iterdir()) for s in poc.sites}

    # the resumed job's ledger continues the interrupted one's (same log, its signed entries verbatim, a
    # resume entry) and verifies against the kits; the sites witnessed one log across both jobs
    ledger_dir = find_in_result(result, "LEDGER.json").parent
    check = verify(ledger_dir, certs=kits, models={"final": find_in_result(result, "FL_global_model.pt")})
    assert check.ok, "\n".join(check.lines())
    ledger = Ledger.open(ledger_dir)
    assert ledger.log_id == old_ledger.log_id and witness_logs == {s: [ledger.log_id] for s in poc.sites}
    entries = ledger.entries
    signed = old_ledger.last_head["size"]
    assert [json.dumps(e, sort_keys=True) for e in entries[:signed]] == [json.dumps(e, sort_keys=True) for e in old_ledger.entries[:signed]]
    resume = entries[signed]
    assert resume["kind"] == "resume" and resume["job_id"] == second and resume["rounds_completed"] == completed
    ledger_rounds = [e["round"] for e in entries if e["kind"] == "round"]
    assert ledger_rounds == sorted(set(ledger_rounds)) and ledger_rounds[-(rounds - completed):] == list(range(completed, rounds))
    records = read_records(find_in_result(result, "fedsegnet_rounds.jsonl"))
    assert [r["round"] for r in records] == list(range(rounds)), "a round was lost or repeated"
    assert records[:completed] == old_records[:completed], "the interrupted job's records were not carried over"
    final = torch.load(find_in_result(result, "FL_global_model.pt"), map_location="cpu", weights_only=False)
    assert final["train_conf"]["fedsegnet_round"]["completed"] == rounds
    assert final["train_conf"]["fedsegnet_aam"]["rounds"] >= rounds - 1
    server_log = _text(find_in_result(result, "log.txt"))
    assert f"resuming job {first}: global model after {completed} completed round(s)" in server_log
    assert "AAM state restored from the checkpoint" in server_log
    assert f"running rounds {completed}..{rounds - 1}" in server_log
    for site, log in site_logs.items():
        assert f"resuming job {first}: residual of round {completed - 1}" in log, f"{site}:\n{log[-3000:]}"


def test_poc_resume_from_an_unknown_job_ends_cleanly_naming_it(tmp_path, poc_home, poc_sites):
    job = tiny_job(tmp_path / "fedsegnet_bad_resume", num_rounds=2, min_clients=2, resume_from="no-such-job")
    with running_poc(tmp_path / "poc", ["site-1", "site-2"], poc_sites) as poc:
        job_id = poc.submit(job)
        status = poc.wait(job_id, timeout=300)
        assert status != "FINISHED:COMPLETED"
        result = poc.download(job_id, tmp_path / "download")
        still_up = poc.connected_sites()
    assert still_up == ["site-1", "site-2"], "the server or a site went down with the failed job"
    assert "resume_from='no-such-job': no global model at" in _text(find_in_result(result, "log.txt"))


FAST_END = dict(wait_after_min_clients=5, cse_submit_timeout=10, cse_validation_timeout=20)


def test_poc_site_killed_mid_job_the_others_finish(tmp_path, poc_home, poc_sites):
    """With drop_stragglers the rounds go on with the two live sites (by default each round would
    wait for site-3 until FLARE finds it disconnected, or until train_timeout)."""
    job = tiny_job(tmp_path / "fedsegnet_tiny", num_rounds=4, min_clients=2, drop_stragglers=True, **FAST_END)
    with running_poc(tmp_path / "poc", ["site-1", "site-2", "site-3"], poc_sites) as poc:
        job_id = poc.submit(job)
        killed_after = []

        def kill_site_3(rec):
            if not killed_after:
                poc.kill("site-3", signal.SIGKILL)  # the whole site: parent and job process
                killed_after.append(rec["round"])

        status = poc.wait(job_id, timeout=480, on_round=kill_site_3, poll=0.5)
        assert status == "FINISHED:COMPLETED", f"{status}; server log:\n{poc._tail('server', 40)}"
        result = poc.download(job_id, tmp_path / "download")
    records = read_records(find_in_result(result, "fedsegnet_rounds.jsonl"))
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    contributed = lambda r: sorted(s for s, e in r["sites"].items() if e.get("n_train"))  # noqa: E731
    assert contributed(records[0]) == ["site-1", "site-2", "site-3"], "site-3 was not part of the first round"
    after = [r for r in records if r["round"] > killed_after[0] + 1]
    assert after, "the job ended before a round without site-3"
    for rec in after:
        assert contributed(rec) == ["site-1", "site-2"] and list(rec["missing_sites"]) == ["site-3"]
        assert rec["missing_sites"]["site-3"]["reason"] in ("late", "dead")
    log = _text(find_in_result(result, "log.txt"))
    assert "site site-3 did not contribute" in log
    cross = json.loads(find_in_result(result, "cross_val_results.json").read_text())
    assert {"site-1", "site-2"} <= set(cross)


def test_poc_site_failing_preflight_reports_and_the_job_goes_on(tmp_path, poc_home, poc_sites):
    broken = tmp_path / "broken"
    shutil.copytree(poc_sites / "site-3", broken / "site-3")
    missing = broken / "site-3" / "labelsTr" / "site-3_001.nii.gz"
    missing.unlink()
    roots = {"site-1": poc_sites, "site-2": poc_sites, "site-3": broken}
    job = tiny_job(tmp_path / "fedsegnet_tiny", num_rounds=2, min_clients=2, **FAST_END)
    started = time.monotonic()
    with running_poc(tmp_path / "poc", ["site-1", "site-2", "site-3"], roots) as poc:
        job_id = poc.submit(job)
        status = poc.wait(job_id, timeout=480)
        assert status == "FINISHED:COMPLETED", f"{status}; server log:\n{poc._tail('server', 40)}"
        assert poc.connected_sites() == ["site-1", "site-2", "site-3"], "the failing site went down"
        result = poc.download(job_id, tmp_path / "download")
    assert time.monotonic() - started < 400
    records = read_records(find_in_result(result, "fedsegnet_rounds.jsonl"))
    assert [r["round"] for r in records] == [0, 1]
    errors = [e for r in records for e in r["errors"]]
    assert errors and errors[0]["site"] == "site-3" and "site-3_001.nii.gz" in errors[0]["message"]
    for rec in records:
        assert sorted(s for s, e in rec["sites"].items() if e.get("n_train")) == ["site-1", "site-2"]
    log = _text(find_in_result(result, "log.txt"))
    assert "site site-3 reported an error" in log and "site-3_001.nii.gz" in log


def test_poc_site_job_process_dies_flare_fails_the_job_and_it_resumes(tmp_path, poc_home, poc_sites):
    """FLARE 2.9 fails the whole job when a site's job process dies (the site itself stays up); the
    federation continues from the failed job's archived model with resume_from."""
    import psutil

    rounds = 4
    job = tiny_job(tmp_path / "fedsegnet_tiny", num_rounds=rounds, min_clients=2, local_steps=6)
    with running_poc(tmp_path / "poc", ["site-1", "site-2"], poc_sites) as poc:
        first = poc.submit(job)
        killed = []

        def kill_site_2_job_process(rec):
            if rec["round"] >= 1 and not killed:
                for child in psutil.Process(poc.pids["site-2"]).children(recursive=True):  # started by our site-2
                    child.kill()
                    killed.append(child.pid)

        status = poc.wait(first, timeout=300, on_round=kill_site_2_job_process, poll=0.5)
        assert killed and status.startswith("FINISHED") and status != "FINISHED:COMPLETED", status
        assert poc.connected_sites() == ["site-1", "site-2"]
        second = poc.submit(configure_job(job, tmp_path / "fedsegnet_resume", resume_from=first))
        status = poc.wait(second, timeout=480)
        assert status == "FINISHED:COMPLETED", f"{status}; server log:\n{poc._tail('server', 40)}"
        result = poc.download(second, tmp_path / "download")
        kits = poc.prod_dir
    records = read_records(find_in_result(result, "fedsegnet_rounds.jsonl"))
    assert [r["round"] for r in records] == list(range(rounds))
    final = torch.load(find_in_result(result, "FL_global_model.pt"), map_location="cpu", weights_only=False)
    assert final["train_conf"]["fedsegnet_round"]["completed"] == rounds
    assert f"resuming job {first}" in _text(find_in_result(result, "log.txt"))
    # the failed job's ledger came out of FLARE's job store with its model, and the new one continues it
    ledger_dir = find_in_result(result, "LEDGER.json").parent
    check = verify(ledger_dir, certs=kits, models={"final": find_in_result(result, "FL_global_model.pt")})
    assert check.ok, "\n".join(check.lines())
    assert [c.label for c in check.checks].count("resume") == 1
