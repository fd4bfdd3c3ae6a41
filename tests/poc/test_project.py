"""poc/project.yml provisions: one startup kit per participant with certificates, ports and start scripts."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "poc" / "project.yml"


def test_project_provisions_startup_kits(tmp_path):
    nvflare = Path(sys.executable).with_name("nvflare")
    proc = subprocess.run([str(nvflare), "provision", "-p", str(PROJECT), "-w", str(tmp_path), "--force"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    project = yaml.safe_load(PROJECT.read_text())
    prod = tmp_path / project["name"] / "prod_00"
    server = next(p for p in project["participants"] if p["type"] == "server")
    kits = {p["name"]: prod / p["name"] / "startup" for p in project["participants"]}
    assert (kits[server["name"]] / "server.crt").exists() and (kits[server["name"]] / "start.sh").exists()
    conf = json.loads((kits[server["name"]] / "fed_server.json").read_text())
    text = json.dumps(conf)
    assert f'{server["name"]}:{server["fed_learn_port"]}' in text and f'"admin_port": {server["admin_port"]}' in text
    for p in project["participants"]:
        if p["type"] == "client":
            assert (kits[p["name"]] / "client.crt").exists() and (kits[p["name"]] / "fed_client.json").exists()
        elif p["type"] == "admin":
            assert (kits[p["name"]] / "fed_admin.json").exists()
    assert {p["role"] for p in project["participants"] if p["type"] == "admin"} >= {"project_admin"}
