"""verify(): a clean run verifies; every tamper makes it fail naming the round at fault."""

from __future__ import annotations

import json

import pytest

from fedsegnet.ledger import canonical_bytes, verify
from fedsegnet.ledger.signing import sign_head

from .conftest import SERVER, root_ca, signer


def _lines(path):
    return path.read_bytes().split(b"\n")[:-1]


def _write(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _edit_entry(folder, index, change):
    lines = _lines(folder / "entries.jsonl")
    entry = json.loads(lines[index])
    change(entry)
    lines[index] = canonical_bytes(entry)
    _write(folder / "entries.jsonl", lines)


def test_clean_run_verifies(run, kits):
    result = verify(run.ledger.folder, certs=kits, models=run.models)
    assert result.ok, result.lines()
    assert result.exit_code == 0 and result.first_fault is None
    labels = [c.label for c in result.checks]
    assert labels == ["job_start", "round 0", "round 1", "round 2", "job_end"]
    assert result.checks[2].witnessed_by == ["site-1", "site-2", "site-3"]
    assert "signed by localhost (kit)" in result.checks[1].line()
    assert result.lines()[-1].endswith("verified")
    assert result.notes == []


def test_without_kits_notes_what_was_not_checked(run):
    result = verify(run.ledger.folder)
    assert result.ok
    assert any("root CA" in n for n in result.notes)


def _fails_at(result, label, text):
    assert not result.ok and result.exit_code == 1
    fault = result.first_fault
    assert fault.label == label, result.lines()
    assert any(text in p for p in fault.problems), fault.problems
    assert f"first at fault: {label}" in result.lines()[-1]


def test_edited_weight_fails_at_its_round(run, kits):
    _edit_entry(run.ledger.folder, 2, lambda e: e["sites"]["site-2"].update(weight=0.9))
    _fails_at(verify(run.ledger.folder, certs=kits), "round 1", "signed root is not the root")


def test_removed_entry_fails_at_its_place(run, kits):
    lines = _lines(run.ledger.folder / "entries.jsonl")
    del lines[2]  # round 1
    _write(run.ledger.folder / "entries.jsonl", lines)
    result = verify(run.ledger.folder, certs=kits)
    _fails_at(result, "round 2", "removed, inserted or moved")
    assert any("global_before" in p for p in result.first_fault.problems)


def test_swapped_entries_fail(run, kits):
    lines = _lines(run.ledger.folder / "entries.jsonl")
    lines[1], lines[2] = lines[2], lines[1]
    _write(run.ledger.folder / "entries.jsonl", lines)
    _fails_at(verify(run.ledger.folder, certs=kits), "round 1", "removed, inserted or moved")


def test_replaced_model_file_fails(run, kits):
    run.models["best"].write_bytes(b"another model")
    result = verify(run.ledger.folder, certs=kits, models=run.models)
    _fails_at(result, "job_end", "the file was replaced")
    assert "best model of round 2" in result.first_fault.problems[0]


def test_head_resigned_with_another_key(run, kits, other_kits):
    rogue = signer(other_kits, SERVER)  # same name, another project's key
    lines = _lines(run.ledger.folder / "heads.jsonl")
    head = json.loads(lines[2])  # head after round 1
    forged = sign_head(rogue, head["size"], head["root"], head["log_id"], head["round"], head["timestamp"])
    run.ledger.add_cert(rogue.cert)
    lines[2] = canonical_bytes(forged)
    _write(run.ledger.folder / "heads.jsonl", lines)
    _fails_at(verify(run.ledger.folder, certs=kits), "round 1", "not 'localhost''s")
    # with only the root CA (certificates from the ledger), the rogue certificate is not the CA's
    _fails_at(verify(run.ledger.folder, root_ca=root_ca(kits)), "round 1", "not issued by the root CA")


def test_fork_two_heads_for_one_size(run, kits):
    server = signer(kits, SERVER)
    head = run.ledger.heads[2]
    fork = sign_head(server, head["size"], "ab" * 32, head["log_id"], head["round"])
    with open(run.ledger.folder / "heads.jsonl", "ab") as f:
        f.write(canonical_bytes(fork) + b"\n")
    _fails_at(verify(run.ledger.folder, certs=kits), "round 1", "fork")


def test_missing_site_signature(run, kits):
    _edit_entry(run.ledger.folder, 2, lambda e: e["witnesses"].pop("site-3"))
    # re-sign honestly so that only the missing witness is wrong (the server dropped it)
    _resign_all(run, kits)
    _fails_at(verify(run.ledger.folder, certs=kits), "round 1", "'site-3' carries no witness")


def test_site_signature_from_another_kit(run, kits):
    other = signer(kits, "site-2")

    def swap(entry):
        rec = entry["witnesses"]["site-1"]
        from fedsegnet.ledger.witness import witness_body

        rec["signature"] = other.sign(canonical_bytes(witness_body(rec)))
        rec["cert_sha256"] = other.cert_sha256

    _edit_entry(run.ledger.folder, 2, swap)
    _resign_all(run, kits)
    _fails_at(verify(run.ledger.folder, certs=kits), "round 1", "site-1")
    # and with the site's own certificate but a signature by another key
    _edit_entry(run.ledger.folder, 2, lambda e: e["witnesses"]["site-1"].update(cert_sha256=signer(kits, "site-1").cert_sha256))
    _resign_all(run, kits)
    _fails_at(verify(run.ledger.folder, certs=kits), "round 1", "does not verify")


def test_unsigned_tail_and_torn_line_reported(run, kits):
    with open(run.ledger.folder / "entries.jsonl", "ab") as f:
        f.write(b'{"kind":"rou')
    result = verify(run.ledger.folder, certs=kits)
    assert not result.ok and result.first_fault.label == "ledger"
    assert "line 6" in result.first_fault.problems[0] and "incomplete" in result.first_fault.problems[0]


def test_witness_of_a_fork_is_caught(run, kits):
    def fork(entry):
        entry["witnesses"]["site-2"]["root"] = "cd" * 32

    _edit_entry(run.ledger.folder, 3, fork)
    _resign_all(run, kits)
    _fails_at(verify(run.ledger.folder, certs=kits), "round 2", "a fork shown to 'site-2'")


def _resign_all(run, kits):
    """Play a server that rewrites entries and re-signs every head with its own (valid) key."""
    from fedsegnet.ledger.merkle import MerkleTree, leaf_hash

    folder = run.ledger.folder
    tree = MerkleTree([leaf_hash(line) for line in _lines(folder / "entries.jsonl")])
    server = signer(kits, SERVER)
    heads = [json.loads(h) for h in _lines(folder / "heads.jsonl")]
    new = [canonical_bytes(sign_head(server, h["size"], tree.root(h["size"]), h["log_id"], h["round"], h["timestamp"])) for h in heads]
    _write(folder / "heads.jsonl", new)


def test_resigned_rewrite_still_caught_by_witnesses(run, kits):
    """The server changes round 1's weights and re-signs every head: the heads verify, but the sites
    witnessed the old root of size 2 in round 1, so round 1's... later witnesses show a fork."""
    _edit_entry(run.ledger.folder, 1, lambda e: e["sites"]["site-1"].update(weight=0.0))
    _resign_all(run, kits)
    result = verify(run.ledger.folder, certs=kits)
    assert not result.ok
    assert result.first_fault.label in ("round 0", "round 1")
    assert any("fork" in p for c in result.checks for p in c.problems)


@pytest.mark.parametrize("require", [True, False])
def test_require_witnesses_flag(run, kits, require):
    # the last round: no later witness shows its changed root to anyone
    _edit_entry(run.ledger.folder, 3, lambda e: e["witnesses"].pop("site-3"))
    _resign_all(run, kits)
    assert verify(run.ledger.folder, certs=kits, require_witnesses=require).ok is (not require)
