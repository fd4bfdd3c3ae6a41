"""Faults with real FLARE processes in POC mode: a site killed mid-job, a site whose data fails
preflight, the server killed mid-job and the federation resumed in a new job."""

import json
import shutil
import signal
import time

import pytest
import torch

from fedsegnet.flare.jobs import configure_job
from fedsegnet.flare.poc import find_in_result

from .conftest import read_records, running_poc, tiny_job

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
