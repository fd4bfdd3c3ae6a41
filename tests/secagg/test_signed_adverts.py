"""Signed key adverts, played by the attacker: a server that swaps, drops or replays a site's keys,
a kit of another project, a colluding site that signs for another, and the honest path with real
kit keys (RSA 2048 under a root CA, laid out as FLARE provisions them)."""

import base64
import datetime as dt
from dataclasses import replace

import numpy as np
import pytest

from fedsegnet.ledger.canonical import canonical_bytes
from fedsegnet.ledger.signing import Signer, cert_sha256, generate_signer
from fedsegnet.secagg.adverts import KEYS_KIT, KEYS_UNCHECKED, KEYS_UNSIGNED, advert_body, check_advert, sign_advert
from fedsegnet.secagg.errors import AdvertError, ProtocolViolation, SecAggError
from fedsegnet.secagg.keys import KeyPair
from fedsegnet.secagg.masking import ring_sum
from fedsegnet.secagg.protocol import KeyAdvert, Roster, ServerSecAgg, SiteSecAgg
from tests.ledger.conftest import SERVER, write_kits

NAMES = ["site-1", "site-2", "site-3", "site-4"]
SESSION = "job-7f3a"
LENGTH = 300


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    """Kits of project ``secaggtest`` (server + 4 sites, one root CA); made once: RSA keys are slow."""
    return write_kits(tmp_path_factory.mktemp("secagg_kits"), "secaggtest", names=(SERVER, *NAMES))


@pytest.fixture(scope="module")
def other_kits(tmp_path_factory):
    """Kits of another project: the same site names under another root CA."""
    return write_kits(tmp_path_factory.mktemp("secagg_other_kits"), "otherproject", names=("site-2",))


@pytest.fixture(scope="module")
def signers(kits):
    return {name: Signer.from_kit(kits / name / "startup") for name in (SERVER, *NAMES)}


@pytest.fixture(scope="module")
def root_ca(kits):
    return (kits / SERVER / "startup" / "rootCA.pem").read_bytes()


def wire(msg):
    """Every message crosses the wire as plain types (what a FLARE Shareable carries)."""
    return type(msg).from_dict(msg.to_dict())


def inputs(seed, bits=32):
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, 2**bits, LENGTH, dtype=np.uint64).astype(np.uint32) for s in NAMES}


class SignedRound:
    """A round of 4 sites with kit keys and a threshold of 3, driven step by step."""

    def __init__(self, signers, root_ca, round=1, session=SESSION, require_signed=True, server_root_ca=None, server_certs=None, **site_kw):
        self.round, self.session = round, session
        self.server = ServerSecAgg(round, NAMES, 3, 32, LENGTH, session=session, root_ca=server_root_ca, certs=server_certs)
        self.sites = {
            s: SiteSecAgg(s, round, session=session, signer=signers[s], root_ca=root_ca, require_signed=require_signed, **site_kw)
            for s in NAMES
        }  # fmt: skip

    def advertise(self):
        self.adverts = {s: wire(site.advertise()) for s, site in self.sites.items()}
        for a in self.adverts.values():
            self.server.receive_advert(a)
        self.roster = wire(self.server.roster())
        return self.roster

    def run(self, xs, before_masked=(), after_masked=()):
        self.advertise()
        for s in NAMES:
            self.server.receive_shares(wire(self.sites[s].share_keys(self.roster)))
        inboxes = self.server.inboxes()
        for s in NAMES:
            if s not in before_masked:
                self.server.receive_masked_input(wire(self.sites[s].masked_input(wire(inboxes[s]), xs[s])))
        request = wire(self.server.unmask_request())
        for s in request.survivors:
            if s not in after_masked:
                self.server.receive_unmask_reply(wire(self.sites[s].unmask(request)))
        return self.server.result()


def swap_in(roster, site, c_public, s_public, record=None, keep_record=True):
    """The roster as a lying server rewrites it: ``site``'s keys replaced (and its record, if given)."""
    signatures = dict(roster.signatures)
    if record is not None:
        signatures[site] = record
    elif not keep_record:
        signatures.pop(site, None)
    return replace(roster, adverts={**roster.adverts, site: [c_public, s_public]}, signatures=signatures)


def refused_by_all_but(r, roster, culprit, match):
    """Every honest site other than ``culprit`` refuses ``roster`` naming ``culprit``, before sharing anything."""
    for s in NAMES:
        if s == culprit:
            continue
        with pytest.raises(AdvertError, match=match) as info:
            r.sites[s].share_keys(roster)
        assert info.value.advertiser == culprit and info.value.round == r.round and info.value.site == s
        assert f"round {r.round}, site '{s}': the key advert of '{culprit}'" in str(info.value)
        assert r.sites[s].step == "share_keys" and r.sites[s].roster is None  # nothing was shared


# ------------------------------------------------------------------------------------------ the honest path


def test_an_honest_round_with_kit_keys_sums_exactly_and_says_kit(signers, root_ca):
    r = SignedRound(signers, root_ca, server_root_ca=root_ca)
    xs = inputs(seed=1)
    result = r.run(xs)
    np.testing.assert_array_equal(result.ring_sum, ring_sum(xs.values(), LENGTH, 32))
    assert result.survivors == NAMES and result.dropped == []
    assert result.key_check == KEYS_KIT and result.key_checks == {s: KEYS_KIT for s in NAMES}
    for s, site in r.sites.items():
        assert site.key_check == KEYS_KIT and set(site.key_checks) == set(NAMES)
        assert sorted(site.peer_certs) == sorted(set(NAMES) - {s})
        assert all(cert_sha256(c) == cert_sha256(signers[v].cert) for v, c in site.peer_certs.items())
    record = r.roster.signatures["site-2"]
    assert set(r.roster.signatures) == set(NAMES)
    assert record["sig_alg"] == "rsa-pss-sha256" and record["key_source"] == "kit" and len(record["signature"]) == 256
    assert (record["round"], record["session"]) == (1, SESSION) and record["cert"].startswith("-----BEGIN CERTIFICATE")


@pytest.mark.parametrize("before_masked,after_masked", [(("site-4",), ()), ((), ("site-2",))])
def test_a_drop_out_in_a_signed_round_still_recovers_the_survivors_sum(signers, root_ca, before_masked, after_masked):
    r = SignedRound(signers, root_ca)
    xs = inputs(seed=2)
    result = r.run(xs, before_masked, after_masked)
    survivors = [s for s in NAMES if s not in before_masked]
    assert result.survivors == survivors and result.dropped == sorted(before_masked)
    np.testing.assert_array_equal(result.ring_sum, ring_sum([xs[s] for s in survivors], LENGTH, 32))
    assert result.key_check == KEYS_UNCHECKED  # this server was given no root CA: it checked signatures only


# ------------------------------------------------------------------------------------------ the lying server


def test_a_server_that_swaps_site_2s_keys_for_its_own_is_refused_naming_site_2(signers, root_ca):
    """The attack signatures exist to stop: the server's own keys for site-2 would let it open every
    share sent to site-2 and agree site-2's pairwise masks."""
    r = SignedRound(signers, root_ca)
    roster = r.advertise()
    mine_c, mine_s = KeyPair.generate(), KeyPair.generate()
    # keeps site-2's genuine signature record: it covers other keys
    refused_by_all_but(r, swap_in(roster, "site-2", mine_c.public, mine_s.public), "site-2", "signature does not verify")
    # drops the record: refused as unsigned
    refused_by_all_but(r, swap_in(roster, "site-2", mine_c.public, mine_s.public, keep_record=False), "site-2", "is not signed")
    # signs its keys itself, with the server's own kit key (a certificate of the root CA, but not site-2's)
    own = sign_advert(signers[SERVER], 1, SESSION, mine_c.public, mine_s.public)
    refused_by_all_but(r, swap_in(roster, "site-2", mine_c.public, mine_s.public, own), "site-2", "'localhost''s, not 'site-2''s")
    # only one of the two keys swapped
    refused_by_all_but(r, swap_in(roster, "site-2", roster.adverts["site-2"][0], mine_s.public), "site-2", "does not verify")
    # the untouched roster still goes through
    assert r.sites["site-1"].share_keys(roster).sealed.keys() == {"site-2", "site-3", "site-4"}


def test_a_server_that_replays_site_2s_advert_of_the_previous_round_is_refused(signers, root_ca):
    earlier = SignedRound(signers, root_ca, round=4)
    old = earlier.advertise()
    r = SignedRound(signers, root_ca, round=5)
    roster = r.advertise()
    pair, record = old.adverts["site-2"], old.signatures["site-2"]
    replayed = swap_in(roster, "site-2", pair[0], pair[1], record)
    refused_by_all_but(r, replayed, "site-2", r"signed for round 4, not round 5 \(a replayed advert\)")
    relabelled = swap_in(roster, "site-2", pair[0], pair[1], {**record, "round": 5})  # the round it says is not what was signed
    refused_by_all_but(r, relabelled, "site-2", "signature does not verify")


def test_a_server_that_replays_site_2s_advert_of_another_job_is_refused(signers, root_ca):
    other_job = SignedRound(signers, root_ca, round=1, session="job-0001")
    old = other_job.advertise()
    r = SignedRound(signers, root_ca, round=1)
    roster = r.advertise()
    pair, record = old.adverts["site-2"], old.signatures["site-2"]
    refused_by_all_but(r, swap_in(roster, "site-2", *pair, record), "site-2", "signed for session 'job-0001', not 'job-7f3a'")
    refused_by_all_but(r, swap_in(roster, "site-2", *pair, {**record, "session": SESSION}), "site-2", "does not verify")


def test_an_advert_signed_with_another_projects_kit_is_refused(signers, root_ca, other_kits):
    """A server that runs its own CA makes itself a 'site-2' certificate: right name, wrong root."""
    impostor = Signer.from_kit(other_kits / "site-2" / "startup")
    r = SignedRound(signers, root_ca)
    roster = r.advertise()
    c, s = KeyPair.generate(), KeyPair.generate()
    forged = sign_advert(impostor, 1, SESSION, c.public, s.public)
    refused_by_all_but(r, swap_in(roster, "site-2", c.public, s.public, forged), "site-2", "not issued by the root CA 'secaggtest'")
    # the same advert passes a check given no root CA: which is why the label then says what was proved
    assert check_advert("site-2", 1, SESSION, c.public, s.public, forged)[0] == KEYS_UNCHECKED
    with pytest.raises(SecAggError, match="not issued by the root CA"):
        SiteSecAgg("site-2", 1, session=SESSION, signer=impostor, root_ca=root_ca)  # nor can such a site join


def test_site_3s_kit_signing_an_advert_that_claims_to_be_site_2_is_refused(signers, root_ca):
    r = SignedRound(signers, root_ca)
    roster = r.advertise()
    c, s = KeyPair.generate(), KeyPair.generate()
    body = canonical_bytes(advert_body("site-2", 1, SESSION, c.public, s.public))
    sig = base64.b64decode(signers["site-3"].sign(body))
    base = {"round": 1, "session": SESSION, "sig_alg": "rsa-pss-sha256", "signature": sig, "key_source": "kit"}
    with_own_cert = {**base, "cert_sha256": signers["site-3"].cert_sha256, "cert": signers["site-3"].cert_pem}
    refused_by_all_but(r, swap_in(roster, "site-2", c.public, s.public, with_own_cert), "site-2", "'site-3''s, not 'site-2''s")
    with_site2s_cert = {**base, "cert_sha256": signers["site-2"].cert_sha256, "cert": signers["site-2"].cert_pem}
    refused_by_all_but(r, swap_in(roster, "site-2", c.public, s.public, with_site2s_cert), "site-2", "does not verify")


def test_a_missing_signature_is_refused_under_require_signed_and_labelled_otherwise(signers, root_ca):
    unsigned = SiteSecAgg("site-2", 1, session=SESSION)
    sites = {s: SiteSecAgg(s, 1, session=SESSION, signer=signers[s], root_ca=root_ca, require_signed=True) for s in ("site-1", "site-3")}
    sites["site-4"] = SiteSecAgg("site-4", 1, session=SESSION, signer=signers["site-4"], root_ca=root_ca)  # accepts unsigned
    server = ServerSecAgg(1, NAMES, 3, 32, LENGTH, session=SESSION)
    for site in [*sites.values(), unsigned]:
        server.receive_advert(wire(site.advertise()))
    roster = wire(server.roster())
    assert "site-2" not in roster.signatures and server.key_checks["site-2"] == KEYS_UNSIGNED
    for s in ("site-1", "site-3"):
        with pytest.raises(AdvertError, match=f"round 1, site '{s}': the key advert of 'site-2' is not signed"):
            sites[s].share_keys(roster)
    sites["site-4"].share_keys(roster)
    assert sites["site-4"].key_checks == {"site-1": KEYS_KIT, "site-2": KEYS_UNSIGNED, "site-3": KEYS_KIT, "site-4": KEYS_KIT}
    assert sites["site-4"].key_check == KEYS_UNSIGNED
    strict = ServerSecAgg(1, NAMES, 3, 32, LENGTH, session=SESSION, require_signed=True)
    with pytest.raises(AdvertError, match="round 1, site 'site-2': the key advert of 'site-2' is not signed") as info:
        strict.receive_advert(wire(SiteSecAgg("site-2", 1, session=SESSION).advertise()))
    assert info.value.advertiser == "site-2" and "site-2" not in strict.adverts


# ------------------------------------------------------------------------------------------ colluding sites


ATTACKS = ["own_cert", "victims_cert", "replay", "victims_record", "unsigned", "cert_left_out"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_colluding_sites_with_the_server_cannot_make_an_honest_site_accept_a_key_for_another(signers, root_ca, attack):
    """site-3 and site-4 (k = 2) collude with the server: they hold their kit keys, their own round
    secrets and everything the server saw (site-2's genuine adverts of this and the last round). They
    want site-1 to take keys they chose for the honest site-2; each way they have of dressing them is refused."""
    last = SignedRound(signers, root_ca, round=1)
    old = last.advertise()
    r = SignedRound(signers, root_ca, round=2)
    roster = r.advertise()
    c, s = KeyPair.generate(), KeyPair.generate()
    body = canonical_bytes(advert_body("site-2", 2, SESSION, c.public, s.public))
    colluder_sig = {
        "round": 2, "session": SESSION, "sig_alg": "rsa-pss-sha256", "key_source": "kit",
        "signature": base64.b64decode(signers["site-3"].sign(body)),
    }  # fmt: skip
    genuine = roster.signatures["site-2"]
    records = {
        "own_cert": ({**colluder_sig, "cert_sha256": signers["site-3"].cert_sha256, "cert": signers["site-3"].cert_pem}, "'site-3''s, not 'site-2''s"),
        "victims_cert": ({**colluder_sig, "cert_sha256": signers["site-2"].cert_sha256, "cert": signers["site-2"].cert_pem}, "does not verify"),
        "replay": (old.signatures["site-2"], "signed for round 1, not round 2"),
        "victims_record": (genuine, "does not verify"),
        "unsigned": ({}, "is not signed"),
        "cert_left_out": ({**genuine, "cert": ""}, "carries no certificate and none is known"),
    }  # fmt: skip
    record, match = records[attack]
    pair = old.adverts["site-2"] if attack == "replay" else [c.public, s.public]
    forged = swap_in(roster, "site-2", *pair, record, keep_record=bool(record))
    with pytest.raises(AdvertError, match=match) as info:
        r.sites["site-1"].share_keys(forged)
    assert info.value.advertiser == "site-2"
    # the colluders' own adverts stay acceptable: the refusal is about site-2, not a broken round
    assert r.sites["site-1"].step == "share_keys"
    r.sites["site-1"].share_keys(roster)
    assert r.sites["site-1"].key_check == KEYS_KIT


# ------------------------------------------------------------------------------------------ no kits: the simulator


def test_a_simulator_round_with_generated_or_no_keys_runs_and_says_so():
    signers = {s: generate_signer(s) for s in NAMES}
    server = ServerSecAgg(1, NAMES, 3, 32, LENGTH, session="sim-job")
    sites = {s: SiteSecAgg(s, 1, session="sim-job", signer=signers[s], require_signed=True) for s in NAMES[:3]}
    sites["site-4"] = SiteSecAgg("site-4", 1)  # unsigned: its session is left empty, so the server refuses it
    for s in NAMES[:3]:
        server.receive_advert(wire(sites[s].advertise()))
    with pytest.raises(ProtocolViolation, match="site 'site-4': an advert of session '', this round is of session 'sim-job'"):
        server.receive_advert(wire(sites["site-4"].advertise()))
    roster = wire(server.roster())
    assert roster.signatures["site-1"]["key_source"] == "generated, not from a kit"
    for s in NAMES[:3]:
        server.receive_shares(wire(sites[s].share_keys(roster)))
        assert sites[s].key_check == KEYS_UNCHECKED
    xs = inputs(seed=3)
    inboxes = server.inboxes()
    for s in NAMES[:3]:
        server.receive_masked_input(wire(sites[s].masked_input(wire(inboxes[s]), xs[s])))
    request = server.unmask_request()
    for s in NAMES[:3]:
        server.receive_unmask_reply(wire(sites[s].unmask(request)))
    result = server.result()
    np.testing.assert_array_equal(result.ring_sum, ring_sum([xs[s] for s in NAMES[:3]], LENGTH, 32))
    assert result.key_check == KEYS_UNCHECKED
    plain = ServerSecAgg(1, NAMES, 3, 32, LENGTH)
    plain_sites = {s: SiteSecAgg(s, 1) for s in NAMES}
    for site in plain_sites.values():
        plain.receive_advert(site.advertise())
    plain_roster = plain.roster()
    for site in plain_sites.values():
        site.share_keys(plain_roster)
        assert site.key_check == KEYS_UNSIGNED and set(site.key_checks.values()) == {KEYS_UNSIGNED}


def test_a_generated_key_is_refused_where_a_root_ca_is_given(signers, root_ca):
    with pytest.raises(SecAggError, match="round 1, site 'site-2'.*not issued by the root CA 'secaggtest'"):
        SiteSecAgg("site-2", 1, session=SESSION, signer=generate_signer("site-2"), root_ca=root_ca)
    r = SignedRound(signers, root_ca)
    roster = r.advertise()
    c, s = KeyPair.generate(), KeyPair.generate()
    generated = sign_advert(generate_signer("site-2"), 1, SESSION, c.public, s.public)
    refused_by_all_but(r, swap_in(roster, "site-2", c.public, s.public, generated), "site-2", "not issued by the root CA")


# ------------------------------------------------------------------------------------------ certificates once per job


def test_certificates_sent_once_per_job_then_fingerprints_and_a_changed_certificate_is_refused(signers, root_ca):
    first = SignedRound(signers, root_ca, round=1)
    first.run(inputs(seed=4))
    known = first.server.peer_certs  # what the server kept of round 1; certificates are checked under the root CA anyway
    assert sorted(known) == NAMES and sorted(first.sites["site-1"].peer_certs) == ["site-2", "site-3", "site-4"]
    with pytest.raises(AdvertError, match="round 2, site 'site-1': the key advert of 'site-1' carries no certificate and none is known"):
        SignedRound(signers, root_ca, round=2, send_cert=False, certs=known).advertise()  # a server that kept none
    later = SignedRound(signers, root_ca, round=2, send_cert=False, certs=known, server_certs=known)
    xs = inputs(seed=5)
    result = later.run(xs)
    np.testing.assert_array_equal(result.ring_sum, ring_sum(xs.values(), LENGTH, 32))
    assert all(rec["cert"] == "" for rec in later.roster.signatures.values())
    assert first.adverts["site-2"].nbytes() - later.adverts["site-2"].nbytes() == len(signers["site-2"].cert_pem)
    assert all(site.key_check == KEYS_KIT for site in later.sites.values())
    # a site that never saw the certificates cannot check fingerprints alone
    newcomer = SiteSecAgg("site-1", 2, session=SESSION, signer=signers["site-1"], root_ca=root_ca, require_signed=True)
    mine = newcomer.advertise()
    with pytest.raises(AdvertError, match="the key advert of 'site-2' carries no certificate and none is known"):
        newcomer.share_keys(swap_in(later.roster, "site-1", mine.c_public, mine.s_public, mine.signature))


def test_with_generated_keys_a_certificate_pinned_in_round_1_cannot_be_swapped_later():
    """No root CA (the simulator): the first round's certificates are taken on trust; after that a
    server that swaps site-2's certificate for one it generated is refused."""
    signers = {s: generate_signer(s) for s in NAMES}
    server = ServerSecAgg(1, NAMES, 3, 32, LENGTH, session="sim")
    sites = {s: SiteSecAgg(s, 1, session="sim", signer=signers[s]) for s in NAMES}
    for site in sites.values():
        server.receive_advert(site.advertise())
    roster = server.roster()
    sites["site-1"].share_keys(roster)
    pinned = sites["site-1"].peer_certs
    round2 = {s: SiteSecAgg(s, 2, session="sim", signer=signers[s], certs=pinned if s == "site-1" else None) for s in NAMES}
    server2 = ServerSecAgg(2, NAMES, 3, 32, LENGTH, session="sim")
    for site in round2.values():
        server2.receive_advert(site.advertise())
    roster2 = server2.roster()
    c, s = KeyPair.generate(), KeyPair.generate()
    swapped = swap_in(roster2, "site-2", c.public, s.public, sign_advert(generate_signer("site-2"), 2, "sim", c.public, s.public))
    with pytest.raises(AdvertError, match="signed with another certificate .* than the one known for 'site-2'"):
        round2["site-1"].share_keys(swapped)
    round2["site-1"].share_keys(roster2)
    assert round2["site-1"].key_check == KEYS_UNCHECKED


# ------------------------------------------------------------------------------------------ the record itself


def test_check_advert_refuses_expired_certificates_and_malformed_records(signers, root_ca):
    c, s = KeyPair.generate(), KeyPair.generate()
    record = sign_advert(signers["site-2"], 3, SESSION, c.public, s.public)
    assert check_advert("site-2", 3, SESSION, c.public, s.public, record, root_ca=root_ca)[0] == KEYS_KIT
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)
    with pytest.raises(AdvertError, match="round 3: the key advert of 'site-2' is refused: .*valid from .* not at"):
        check_advert("site-2", 3, SESSION, c.public, s.public, record, root_ca=root_ca, at=later)
    with pytest.raises(AdvertError, match=r"without \['cert_sha256'\]"):
        check_advert("site-2", 3, SESSION, c.public, s.public, {k: v for k, v in record.items() if k != "cert_sha256"})
    with pytest.raises(AdvertError, match=r"malformed signature record \(fields \['signature'\]\)"):
        check_advert("site-2", 3, SESSION, c.public, s.public, {**record, "signature": "not bytes"})
    with pytest.raises(AdvertError, match="names certificate"):
        check_advert("site-2", 3, SESSION, c.public, s.public, {**record, "cert_sha256": "0" * 64})
    with pytest.raises(AdvertError, match="of type list"):
        check_advert("site-2", 3, SESSION, c.public, s.public, [record])


def test_messages_keep_their_records_on_the_wire_and_old_adverts_still_parse(signers, root_ca):
    site = SiteSecAgg("site-1", 1, session=SESSION, signer=signers["site-1"], root_ca=root_ca)
    advert = site.advertise()
    assert wire(advert) == advert and isinstance(wire(advert).signature["signature"], bytes)
    old = {k: v for k, v in advert.to_dict().items() if k not in ("session", "signature")}
    parsed = KeyAdvert.from_dict(old)
    assert parsed.session == "" and parsed.signature == {}
    roster = Roster(round=1, threshold=3, ring_bits=32, length=5, adverts={"site-1": [advert.c_public, advert.s_public]},
                    signatures={"site-1": advert.signature})  # fmt: skip
    assert wire(roster) == roster
    with pytest.raises(ProtocolViolation, match=r"lacks \['c_public'\]"):
        KeyAdvert.from_dict({k: v for k, v in old.items() if k != "c_public"})


def test_a_roster_with_a_signature_for_a_site_it_does_not_list_is_refused(signers, root_ca):
    r = SignedRound(signers, root_ca)
    roster = r.advertise()
    stray = replace(roster, signatures={**roster.signatures, "site-9": roster.signatures["site-2"]})
    with pytest.raises(ProtocolViolation, match=r"signatures of sites \['site-9'\] that have no keys"):
        r.sites["site-1"].share_keys(stray)


# ------------------------------------------------------------------------------------------ bad arguments


def test_bad_signing_arguments_are_refused_naming_them(signers, root_ca, tmp_path):
    with pytest.raises(SecAggError, match="round 1, site 'site-1'.*certificate is 'site-2''s, not 'site-1''s"):
        SiteSecAgg("site-1", 1, session=SESSION, signer=signers["site-2"])
    with pytest.raises(SecAggError, match="session='': signed adverts need the job id"):
        SiteSecAgg("site-1", 1, signer=signers["site-1"])
    with pytest.raises(SecAggError, match="session='': signed adverts need the job id"):
        ServerSecAgg(1, NAMES, 3, 32, 10, require_signed=True)
    with pytest.raises(SecAggError, match="require_signed=True without a signer"):
        SiteSecAgg("site-1", 1, session=SESSION, require_signed=True)
    with pytest.raises(SecAggError, match="session=7: must be a string"):
        SiteSecAgg("site-1", 1, session=7)
    with pytest.raises(SecAggError, match="require_signed='yes': must be True or False"):
        ServerSecAgg(1, NAMES, 3, 32, 10, session=SESSION, require_signed="yes")
    with pytest.raises(SecAggError, match="signer='key.pem': must be a fedsegnet.ledger.signing.Signer"):
        SiteSecAgg("site-1", 1, session=SESSION, signer="key.pem")
    with pytest.raises(SecAggError, match=f"root_ca: {tmp_path / 'nope.pem'}: cannot read"):
        SiteSecAgg("site-1", 1, session=SESSION, signer=signers["site-1"], root_ca=tmp_path / "nope.pem")
    with pytest.raises(SecAggError, match="certs: must be a dict"):
        SiteSecAgg("site-1", 1, session=SESSION, signer=signers["site-1"], certs=["a"])
    with pytest.raises(SecAggError, match="send_cert=1: must be True or False"):
        SiteSecAgg("site-1", 1, session=SESSION, signer=signers["site-1"], send_cert=1)
