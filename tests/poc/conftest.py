"""Fixtures for tests that run a real FLARE POC system (server + sites from startup kits, admin API).

Each test gets its own workspace and free loopback ports; the system is stopped (by the pids it
recorded) when the test ends, also when it fails. ``HOME`` points into the test's folder because
``nvflare poc prepare`` records its startup kits in ``~/.nvflare``.
"""

from contextlib import contextmanager
from pathlib import Path

import pytest

from fedsegnet.data.synth import synthesize
from fedsegnet.flare.ops.jobs import configure_job
from fedsegnet.flare.ops.poc import PocSystem, free_port

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"

# tiny model, few steps: a round takes seconds on one CPU core per site
TINY = dict(preset="tiny", local_steps=4, seed=0, torch_threads=1, val_max_cases=2)


@pytest.fixture(scope="session")
def poc_sites(tmp_path_factory) -> Path:
    """Three synthetic sites (6 cases of 32^3 each) and a test split."""
    root = tmp_path_factory.mktemp("poc_sites")
    synthesize(root, sites=3, cases=6, size=32, seed=5, test_cases=2)
    return root


@pytest.fixture
def poc_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@contextmanager
def running_poc(workspace, sites, data_root, privacy_policy=None, start=True):
    """A prepared (and started) POC system, always stopped at the end."""
    system = PocSystem(workspace, sites=sites, data_root=data_root, fed_learn_port=free_port(), admin_port=free_port())
    try:
        system.prepare(privacy_policy=privacy_policy)
        if start:
            system.start(timeout=180)
        yield system
    finally:
        system.stop()


def tiny_job(dst, job="fedsegnet", **values) -> Path:
    return configure_job(JOBS / job, dst, **{**TINY, **values})


