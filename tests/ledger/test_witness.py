"""The site witness: accepts an honest head, refuses each lie of the server naming sizes and rounds."""

from __future__ import annotations

import pytest

from fedsegnet.ledger import Ledger, SiteWitness, WitnessError, generate_signer, round_entry
from fedsegnet.ledger.signing import sign_head

from .conftest import SERVER, federate, payload_hash, root_ca, signer


@pytest.fixture
def two_rounds(tmp_path, kits):
    return federate(tmp_path / "server" / "l", tmp_path / "sites", kits, rounds=2, end=False)


def test_honest_head_is_witnessed(two_rounds, kits):
    ledger, w = two_rounds.ledger, two_rounds.witnesses["site-1"]
    rec = w.witness(ledger.witness_bundle("site-1"))
    assert rec["size"] == ledger.size and rec["root"] == ledger.root().hex()
    assert w.last_head["size"] == ledger.size and w.pending_payload is None
    from fedsegnet.ledger import verify_witness

    verify_witness(rec, signer(kits, "site-1").cert, root_ca(kits))
    reopened = SiteWitness(w.folder, w.signer, SERVER, root_ca=root_ca(kits))  # a restarted site
    assert reopened.last_head == w.last_head
    reopened.load_state_dict(w.state_dict())


def _fork(ledger: Ledger, kits, tmp_path, size: int):
    """The server shows a site another history of ``size`` entries: round 0's weights changed."""
    forked = Ledger.create(tmp_path / f"fork{size}", ledger.log_id)
    for i, entry in enumerate(ledger.entries[:size]):
        entry.pop("index")
        if i == 1:
            entry["sites"]["site-2"]["weight"] = 0.99
        forked.append(entry)
    forked.sign_head(signer(kits, SERVER))
    return forked


def test_rewritten_history_refused(two_rounds, kits, tmp_path):
    w = two_rounds.witnesses["site-3"]
    assert w.last_head["size"] == 2  # seen with the task of round 1
    with pytest.raises(WitnessError, match=r"head of size 2 \(round 0\) has another root than the head of size 2 \(round 0\) seen before.*fork"):
        w.witness(_fork(two_rounds.ledger, kits, tmp_path, 2).witness_bundle("site-3"))
    with pytest.raises(WitnessError, match=r"head of size 3 \(round 1\) is not consistent with the head of size 2 \(round 0\) seen before"):
        w.witness(_fork(two_rounds.ledger, kits, tmp_path, 3).witness_bundle("site-3", seen_sizes=[2]))
    assert w.last_head["size"] == 2  # nothing recorded


def test_rollback_and_missing_proofs_refused(two_rounds, kits):
    ledger, w = two_rounds.ledger, two_rounds.witnesses["site-1"]
    w.witness(ledger.witness_bundle("site-1"))  # the head of size 3
    old = ledger.witness_bundle("site-1")
    old["head"] = ledger.heads[1]  # an older signed head
    with pytest.raises(WitnessError, match=r"size 2 \(round 0\) is smaller than the head of size 3 \(round 1\).*went back"):
        w.witness(old)
    ledger.append(round_entry(2, global_before="0" * 64, global_after="1" * 64, sites={}))
    ledger.sign_head(signer(kits, SERVER))
    bundle = ledger.witness_bundle("site-1")
    bundle["consistency"] = []
    with pytest.raises(WitnessError, match="no consistency proof from the head of size 3"):
        w.witness(bundle)
    assert w.witness(ledger.witness_bundle("site-1"))["size"] == 4


def test_payload_left_out_refused(two_rounds, kits):
    ledger, w = two_rounds.ledger, two_rounds.witnesses["site-2"]
    w.record_payload(2, payload_hash("site-2", 2))
    ledger.append(round_entry(2, global_before="0" * 64, global_after="1" * 64,
                              sites={"site-1": {"payload_sha256": payload_hash("site-1", 2)}}))
    ledger.sign_head(signer(kits, SERVER))
    with pytest.raises(WitnessError, match=r"payload of round 2 .* not in the ledger: entry 2 \(round 1\)"):
        w.witness(ledger.witness_bundle("site-2"))
    bundle = ledger.witness_bundle("site-2")
    bundle["inclusion"] = None
    with pytest.raises(WitnessError, match="no inclusion proof of this site's payload of round 2"):
        w.witness(bundle)


def test_refused_payload_counts_as_included(two_rounds, kits):
    ledger, w = two_rounds.ledger, two_rounds.witnesses["site-2"]
    w.record_payload(2, payload_hash("site-2", 2))
    ledger.append(round_entry(2, global_before="0" * 64, global_after="1" * 64, sites={},
                              refused={"site-2": {"payload_sha256": payload_hash("site-2", 2), "reason": "norm"}}))
    ledger.sign_head(signer(kits, SERVER))
    assert w.witness(ledger.witness_bundle("site-2"))["size"] == 4


def test_wrong_server_key_refused(two_rounds, kits, other_kits):
    ledger, w = two_rounds.ledger, two_rounds.witnesses["site-1"]
    bundle = ledger.witness_bundle("site-1")
    rogue = signer(other_kits, SERVER)
    head = bundle["head"]
    bundle["head"] = sign_head(rogue, head["size"], head["root"], head["log_id"], head["round"])
    bundle["cert_pem"] = rogue.cert_pem
    with pytest.raises(WitnessError, match="not issued by the root CA"):
        w.witness(bundle)
    bundle["cert_pem"] = signer(kits, SERVER).cert_pem  # the right certificate, another key's signature
    with pytest.raises(WitnessError, match="signed with certificate"):
        w.witness(bundle)
    impostor = signer(kits, "site-2")  # a site's kit posing as the server
    bundle["head"] = sign_head(impostor, head["size"], head["root"], head["log_id"], head["round"])
    bundle["cert_pem"] = impostor.cert_pem
    with pytest.raises(WitnessError, match="is 'site-2''s, not 'localhost''s"):
        w.witness(bundle)


def test_simulator_pins_the_first_certificate(tmp_path):
    server, other = generate_signer(SERVER), generate_signer(SERVER)
    ledger = Ledger.create(tmp_path / "l", "sim")
    ledger.append(round_entry(0, global_before="0" * 64, global_after="1" * 64, sites={}))
    ledger.sign_head(server)
    w = SiteWitness(tmp_path / "site", generate_signer("site-1"), SERVER)
    assert w.witness(ledger.witness_bundle("site-1"))["key_source"] == "generated, not from a kit"
    ledger.append(round_entry(1, global_before="1" * 64, global_after="2" * 64, sites={}))
    ledger.sign_head(other)
    with pytest.raises(WitnessError, match="no root CA to check a new one"):
        w.witness(ledger.witness_bundle("site-1"))


def test_bad_arguments(tmp_path, kits):
    with pytest.raises(Exception, match="signer="):
        SiteWitness(tmp_path, "site-1", SERVER)
    with pytest.raises(Exception, match="server="):
        SiteWitness(tmp_path, signer(kits, "site-1"), "")
    w = SiteWitness(tmp_path, signer(kits, "site-1"), SERVER)
    with pytest.raises(WitnessError, match="malformed"):
        w.witness({"head": {}})
    with pytest.raises(Exception, match="payload_sha256"):
        w.record_payload(0, "xyz")
