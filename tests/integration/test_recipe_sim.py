"""The Recipe path: FedSegNetFedAvgRecipe executed in FLARE's SimEnv (python -m fedsegnet.flare.recipe)."""

import json
import subprocess
import sys

import pytest

from fedsegnet.training.spec import load_model_file

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("job", ["fedavg", "fedsegnet"])
def test_recipe_runs_in_simenv(job, tiny_sites, tmp_path):
    cmd = [
        sys.executable, "-m", "fedsegnet.flare.recipe", "--env", "sim", "--data-root", str(tiny_sites),
        "-w", str(tmp_path), "-n", "2", "--job", job, "--name", f"recipe_{job}",
        "num_rounds=1", "local_steps=3", "preset=tiny", "torch_threads=1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            import os
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    models = list((tmp_path / f"recipe_{job}").rglob("FL_global_model.pt"))
    assert len(models) == 1, out[-2000:]
    _, spec = load_model_file(models[0])
    assert spec["preset"] == "tiny"
    if job == "fedsegnet":  # the compression filters ran: bytes were measured and recorded
        records = [json.loads(line) for p in (tmp_path / f"recipe_{job}").rglob("fedsegnet_rounds.jsonl")
                   for line in p.read_text().splitlines()]  # fmt: skip
        assert records and all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in records)
