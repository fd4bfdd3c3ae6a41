"""The Recipe in POC mode (``python -m fedsegnet.flare.recipe --env poc``): FLARE's PocEnv provisions the
kits, the FedSegNet site policy is put in them before anything starts, a real job runs to the end and
every process the run started is gone afterwards."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedsegnet.flare.ops.poc import free_port
from fedsegnet.flare.ops.policy import FEDSEGNET_ALLOW_LIST

pytestmark = pytest.mark.slow


def _processes_of(workspace: Path) -> list[int]:
    """Pids of the processes whose command line names ``workspace`` (a folder of this test's alone)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(workspace) in cmdline:
                pids.append(int(entry.name))
    return pids


def test_recipe_runs_a_job_in_poc_env(poc_sites, poc_home, tmp_path):
    ws = tmp_path / "poc"
    cmd = [
        sys.executable, "-m", "fedsegnet.flare.recipe", "--env", "poc", "-w", str(ws), "-n", "2",
        "--data-root", str(poc_sites), "--fed-learn-port", str(free_port()), "--admin-port", str(free_port()),
        "--timeout", "300", "--job", "fedsegnet",
        "num_rounds=1", "local_steps=3", "preset=tiny", "torch_threads=1", "val_max_cases=2",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    left = []
    try:
        out, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            out = ""
        left = _processes_of(ws)  # what the run left behind: stopped here, by pid, and reported below
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 0, out[-4000:]
    assert "FINISHED:COMPLETED" in out, out[-2000:]
    assert not left, f"processes of the POC system still ran after the command ended: {left}"
    kits = ws / "fedsegnet" / "prod_00"
    for kit in ("localhost", "site-1", "site-2"):
        allow = json.loads((kits / kit / "local" / "resources.json").read_text())["class_allow_list"]
        assert set(FEDSEGNET_ALLOW_LIST) <= set(allow), kit
    models = [p for p in ws.rglob("FL_global_model.pt")]
    assert models, f"no global model under {ws}:\n{out[-2000:]}"
    records = [json.loads(line) for p in ws.rglob("fedsegnet_rounds.jsonl") for line in p.read_text().splitlines()]
    assert records and all(r["bytes_up"] > 0 for r in records)  # the compression filters ran at the sites
