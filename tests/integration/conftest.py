"""Fixtures for integration tests that run real FLARE processes on small synthetic sites."""

import json
from pathlib import Path

import pytest

from fedsegnet.data.synth import synthesize
from fedsegnet.flare.ops.jobs import SimResults, SimulatorRun

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"

# Small and quick: 2 sites x 6 cases of 32^3, tiny network, few steps.
TINY_JOB_ARGS = dict(
    num_rounds=2, min_clients=2, preset="tiny", local_steps=4, seed=0, torch_threads=1, val_max_cases=2
)


@pytest.fixture(scope="session")
def tiny_sites(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sites")
    synthesize(root, sites=2, cases=6, size=32, seed=3, test_cases=3)
    return root


def without_cross_site(job: Path) -> Path:
    """Take the cross-site evaluation workflow out of a configured job, for tests that do not look
    at its results (with 3-4 sites it is a good part of the run). Returns ``job``."""
    config = Path(job) / "app" / "config" / "config_fed_server.json"
    cfg = json.loads(config.read_text())
    kept = [w for w in cfg["workflows"] if w.get("id") != "cross_site_model_eval"]
    assert len(kept) == len(cfg["workflows"]) - 1, f"{config}: no cross_site_model_eval workflow to remove"
    cfg["workflows"] = kept
    config.write_text(json.dumps(cfg, indent=2))
    return Path(job)


def run_two_sites(job, ws, data_root, timeout=600):
    """Run ``job`` in the simulator with site-1 and site-2 (stopped by pid on any failure).

    Returns:
        ``(exit code, SimResults, SimulatorRun)``.
    """
    with SimulatorRun(job, ws, n_clients=2, threads=2, data_root=data_root) as run:
        rc = run.wait(timeout=timeout)
    return rc, SimResults(ws), run
