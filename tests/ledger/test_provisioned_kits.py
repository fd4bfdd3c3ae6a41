"""Signing and verifying with keys from real kits made by ``nvflare provision`` (about 2 s)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedsegnet.ledger import SiteWitness, certs_from_kits, root_ca_from_kits, verify

from .conftest import federate

REPO = Path(__file__).resolve().parents[2]


def test_ledger_verifies_with_provisioned_kits(tmp_path):
    nvflare = shutil.which("nvflare") or str(Path(sys.executable).parent / "nvflare")
    if not Path(nvflare).exists():
        pytest.skip("the nvflare command is not installed")
    project = (REPO / "poc" / "project.yml").read_text().replace("name: fedsegnet", "name: ledgerkits", 1)
    (tmp_path / "project.yml").write_text(project)
    subprocess.run([nvflare, "provision", "-p", "project.yml", "-w", "ws"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=120)
    kits = next((tmp_path / "ws" / "ledgerkits").glob("prod_*"))
    assert {"localhost", "site-1", "site-2"} <= set(certs_from_kits(kits))
    run = federate(tmp_path / "server" / "fedsegnet_ledger", tmp_path / "sites", kits, rounds=2, sites=("site-1", "site-2"))
    assert isinstance(run.witnesses["site-1"], SiteWitness)
    assert run.ledger.last_head["sig_alg"] == "rsa-pss-sha256" and run.ledger.last_head["key_source"] == "kit"
    result = verify(run.ledger.folder, root_ca=root_ca_from_kits(kits), certs=kits, models=run.models)
    assert result.ok, result.lines()
    assert result.checks[-2].witnessed_by == ["site-1", "site-2"]
    # the site-2 kit's key cannot pass for site-1: swap its certificate in the verifier's view
    certs = certs_from_kits(kits)
    certs["site-1"] = certs["site-2"]
    bad = verify(run.ledger.folder, certs=certs, root_ca=root_ca_from_kits(kits))
    assert bad.first_fault.label == "round 0" and "site-1" in bad.first_fault.problems[0]
