"""Fixtures for integration tests that run real FLARE processes on small synthetic sites."""

from pathlib import Path

import pytest

from fedsegnet.data.synth import synthesize

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
