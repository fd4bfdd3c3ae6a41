"""Fixtures for integration tests that run real FLARE processes on small synthetic sites."""

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


def run_two_sites(job, ws, data_root, timeout=600):
    """Run ``job`` in the simulator with site-1 and site-2 (stopped by pid on any failure).

    Returns:
        ``(exit code, SimResults, SimulatorRun)``.
    """
    with SimulatorRun(job, ws, n_clients=2, threads=2, data_root=data_root) as run:
        rc = run.wait(timeout=timeout)
    return rc, SimResults(ws), run
