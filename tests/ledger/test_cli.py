"""``fedsegnet ledger verify | show`` on ledgers written as a job writes them, honest and tampered."""

from __future__ import annotations

import json
import shutil

import pytest

from fedsegnet.cli import main

from .conftest import federate


@pytest.fixture
def job_folder(tmp_path, kits):
    """A server job folder: ``fedsegnet_ledger/`` and ``app_server/`` with the two model files."""
    job = tmp_path / "server" / "job-1"
    run = federate(job / "fedsegnet_ledger", tmp_path / "sites", kits, rounds=3)
    (job / "app_server").mkdir(parents=True)
    for name, path in run.models.items():
        shutil.move(path, job / "app_server" / ("FL_global_model.pt" if name == "final" else "best_FL_global_model.pt"))
    return job


def _rewrite(ledger_dir, index, change):
    lines = (ledger_dir / "entries.jsonl").read_text().splitlines()
    entry = json.loads(lines[index])
    change(entry)
    lines[index] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    (ledger_dir / "entries.jsonl").write_text("\n".join(lines) + "\n")


def test_verify_an_honest_ledger_from_any_folder_above_it(job_folder, kits, capsys):
    for run in (job_folder / "fedsegnet_ledger", job_folder, job_folder.parent.parent):
        assert main(["ledger", "verify", str(run), "--kits", str(kits)]) == 0
        out = capsys.readouterr().out
        assert "round 2    OK    signed by localhost (kit); witnessed by site-1, site-2, site-3" in out
        assert ": verified" in out and "model files checked: final" in out and "best" in out


def test_verify_names_the_round_at_fault(job_folder, kits, capsys):
    _rewrite(job_folder / "fedsegnet_ledger", 2, lambda e: e["sites"]["site-2"].update(weight=0.99))
    assert main(["ledger", "verify", str(job_folder), "--kits", str(kits)]) == 1
    out = capsys.readouterr().out
    assert "first at fault: round 1" in out


def test_verify_catches_a_replaced_model_file(job_folder, kits, capsys):
    (job_folder / "app_server" / "FL_global_model.pt").write_bytes(b"another model")
    assert main(["ledger", "verify", str(job_folder), "--kits", str(kits)]) == 1
    assert "the file was replaced" in capsys.readouterr().out


def test_verify_against_another_projects_kits_fails(job_folder, other_kits, capsys):
    assert main(["ledger", "verify", str(job_folder), "--kits", str(other_kits)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_show_prints_the_history(job_folder, capsys):
    assert main(["ledger", "show", str(job_folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"ledger {job_folder / 'fedsegnet_ledger'}: log job-1, 5 entries, 5 signed heads")
    assert [line.split()[2] for line in out[1:]] == ["job_start", "round", "round", "round", "job_end"]
    assert any("round 1" in line and "witnessed by site-1, site-2, site-3" in line for line in out)
    assert "[head 5 signed by localhost (kit)]" in out[-1]


def test_no_ledger_or_two_ledgers_are_refused_naming_the_folder(tmp_path, job_folder, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ledger", "verify", str(empty)]) == 3
    assert f"{empty}: no ledger here" in capsys.readouterr().err
    shutil.copytree(job_folder, job_folder.parent / "job-2")
    assert main(["ledger", "show", str(job_folder.parent)]) == 2
    assert "2 ledgers below it, name one" in capsys.readouterr().err
    assert main(["ledger", "verify", str(job_folder), "--final", str(tmp_path / "nope.pt")]) == 3
    assert "--final" in capsys.readouterr().err
