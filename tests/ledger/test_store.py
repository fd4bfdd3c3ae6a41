"""The Ledger folder: append, sign, reopen and continue, resume_from, torn lines, foreign files."""

from __future__ import annotations

import pytest

from fedsegnet.ledger import Ledger, LedgerError, TornLineError, WitnessError, generate_signer, job_start_entry, round_entry, verify
from fedsegnet.ledger.errors import CanonicalError

from .conftest import SERVER, SITES, federate, payload_hash, signer


def _start(folder, log_id="job-1"):
    ledger = Ledger.create(folder, log_id)
    ledger.append(job_start_entry(job_id=log_id, job_config_sha256="1" * 64, code_version="0.1.0",
                                  participants=["site-1"], server=SERVER))
    return ledger


def test_append_sign_reopen_continue(tmp_path, kits):
    server = signer(kits, SERVER)
    ledger = _start(tmp_path / "l")
    head = ledger.sign_head(server)
    assert head["size"] == 1 and head["root"] == ledger.root().hex() and head["key_source"] == "kit"
    again = Ledger.open(tmp_path / "l")  # a restarted server
    assert again.size == 1 and again.last_head == head and again.root() == ledger.root()
    assert again.state_dict() == ledger.state_dict()
    again.load_state_dict(ledger.state_dict())
    assert Ledger.open_or_create(tmp_path / "l", "job-1").size == 1


def test_append_does_not_mutate_and_sets_index(tmp_path):
    ledger = _start(tmp_path / "l")
    entry = job_start_entry(job_id="j", job_config_sha256="2" * 64, code_version="v", participants=[], server="s")
    before = dict(entry)
    assert ledger.append(entry) == 1 and entry == before
    assert ledger.entries[1]["index"] == 1
    with pytest.raises(LedgerError, match="index 5"):
        ledger.append(dict(entry, index=5))
    with pytest.raises(CanonicalError, match="settings.x"):
        ledger.append(dict(entry, settings={"x": float("nan")}))
    assert ledger.size == 2  # the refused entries left nothing on disk
    assert len((tmp_path / "l" / "entries.jsonl").read_bytes().splitlines()) == 2


def test_torn_last_line_reported_not_dropped(tmp_path):
    ledger = _start(tmp_path / "l")
    path = tmp_path / "l" / "entries.jsonl"
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"kind":"round","ind')
    torn = path.read_bytes()
    with pytest.raises(TornLineError, match=rf"entries.jsonl: line 2 \(from byte {len(good)}\) is incomplete"):
        Ledger.open(tmp_path / "l")
    assert path.read_bytes() == torn  # nothing changed
    del ledger


def test_refuses_foreign_folder_and_tampered_reopen(tmp_path, kits):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(LedgerError, match="not an empty folder"):
        Ledger.create(tmp_path / "busy", "job-1")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(LedgerError, match="not a ledger folder"):
        Ledger.open(tmp_path / "busy")
    with pytest.raises(LedgerError, match="log_id"):
        Ledger.create(tmp_path / "x", "")
    ledger = _start(tmp_path / "l")
    ledger.sign_head(signer(kits, SERVER))
    path = tmp_path / "l" / "entries.jsonl"
    path.write_bytes(path.read_bytes().replace(b"0.1.0", b"0.1.1"))
    with pytest.raises(LedgerError, match="changed after signing"):
        Ledger.open(tmp_path / "l")
    with pytest.raises(LedgerError, match="empty"):
        Ledger.create(tmp_path / "e", "job-2").sign_head(signer(kits, SERVER))


def test_resume_from_continues_the_tree(tmp_path, kits):
    first = federate(tmp_path / "a" / "fedsegnet_ledger", tmp_path / "sites", kits, rounds=2, end=False)
    old_head = first.ledger.last_head
    resumed = Ledger.create(tmp_path / "b" / "fedsegnet_ledger", "job-2", resume_from=first.ledger.folder)
    entry = resumed.entries[-1]
    assert entry["kind"] == "resume" and entry["previous_head"] == old_head and entry["index"] == old_head["size"]
    assert resumed.root(old_head["size"]).hex() == old_head["root"]
    resumed.sign_head(signer(kits, SERVER))
    # the same sites go on witnessing across the resume: consistency proofs span it
    federate(resumed.folder, tmp_path / "sites", kits, rounds=2, ledger=resumed, witnesses=first.witnesses, start_round=2)
    result = verify(resumed.folder, certs=kits, models={})
    assert result.ok, result.lines()
    assert [c.label for c in result.checks][:5] == ["job_start", "round 0", "round 1", "resume", "round 2"]
    with pytest.raises(LedgerError, match="another job's"):
        Ledger.create(first.ledger.folder, "job-3", resume_from=first.ledger.folder)


def test_resume_head_tampered_is_caught(tmp_path, kits):
    first = federate(tmp_path / "a" / "l", tmp_path / "sites", kits, rounds=1, end=False, sites=SITES[:1])
    resumed = Ledger.create(tmp_path / "b" / "l", "job-2", resume_from=first.ledger.folder)
    resumed.sign_head(signer(kits, SERVER))
    lines = (resumed.folder / "entries.jsonl").read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"size":2', b'"size":1')
    (resumed.folder / "entries.jsonl").write_bytes(b"\n".join(lines))
    result = verify(resumed.folder, certs=kits)
    assert result.first_fault.label == "resume"


def test_generated_key_says_so(tmp_path):
    sim = generate_signer("simulator_server")
    ledger = _start(tmp_path / "l")
    head = ledger.sign_head(sim)
    assert head["key_source"] == "generated, not from a kit" and head["sig_alg"] == "ecdsa-sha256"
    result = verify(ledger.folder)
    assert result.ok
    assert any("simulator_server signed with a key generated" in n for n in result.notes)
    rsa = generate_signer("x", key_type="rsa")
    assert rsa.algorithm == "rsa-pss-sha256"
    with pytest.raises(LedgerError, match="key_type='dsa'"):
        generate_signer("x", key_type="dsa")


def test_a_resume_voids_the_payloads_the_interrupted_job_never_recorded(tmp_path, kits):
    first = federate(tmp_path / "a" / "fedsegnet_ledger", tmp_path / "sites", kits, rounds=2, end=False)
    w = first.witnesses["site-1"]
    w.record_payload(2, payload_hash("site-1", 2))  # sent; the server died before round 2's entry
    resumed = Ledger.create(tmp_path / "b" / "fedsegnet_ledger", first.ledger.log_id, resume_from=first.ledger.folder,
                            resume_fields={"job_id": "job-2", "global_model": first.globals[-1], "rounds_completed": 2})
    resumed.sign_head(signer(kits, SERVER))
    assert resumed.entries[-1]["global_model"] == first.globals[-1]
    assert w.witness(resumed.witness_bundle("site-1"))["size"] == resumed.size
    assert w.pending_payload is None
    # after that head, a payload left out is refused again: the resume lies before what the site saw
    w.record_payload(2, payload_hash("site-1", 2))
    resumed.append(round_entry(2, global_before=first.globals[-1], global_after="5" * 64, sites={}))
    resumed.sign_head(signer(kits, SERVER))
    with pytest.raises(WitnessError, match="payload of round 2 .* not in the ledger"):
        w.witness(resumed.witness_bundle("site-1"))


def test_verify_notes_a_round_the_interrupted_job_never_recorded(tmp_path, kits):
    first = federate(tmp_path / "a" / "fedsegnet_ledger", tmp_path / "sites", kits, rounds=2, end=False)
    for start, gap in ((first.globals[-1], False), ("7" * 64, True)):
        resumed = Ledger.create(tmp_path / f"b{gap}" / "l", "job-2", resume_from=first.ledger.folder,
                                resume_fields={"global_model": start, "rounds_completed": 3 if gap else 2})
        resumed.sign_head(signer(kits, SERVER))
        resumed.append(round_entry(3, global_before=start, global_after="8" * 64, sites={}))
        resumed.sign_head(signer(kits, SERVER))
        result = verify(resumed.folder, certs=kits)
        assert result.ok, result.lines()  # the rounds chain through the resume's global model
        noted = [n for n in result.notes if "ran a round it never recorded" in n]
        assert bool(noted) == gap, result.notes


def test_verify_checks_the_model_files_against_the_last_job_end(tmp_path, kits):
    """A job that failed wrote its job_end; the job that resumed it ends with its own models."""
    first = federate(tmp_path / "a" / "fedsegnet_ledger", tmp_path / "sites", kits, rounds=2, end=True)
    resumed = Ledger.create(tmp_path / "b" / "l", first.ledger.log_id, resume_from=first.ledger.folder,
                            resume_fields={"global_model": first.globals[-1]})
    resumed.sign_head(signer(kits, SERVER))
    second = federate(resumed.folder, tmp_path / "sites", kits, rounds=1, ledger=resumed, witnesses=first.witnesses,
                      start_round=2, end=True)
    assert verify(resumed.folder, certs=kits, models=second.models).ok
    stale = verify(resumed.folder, certs=kits, models=first.models)
    assert not stale.ok and stale.first_fault.index == resumed.size - 1 and "the file was replaced" in stale.first_fault.problems[0]
