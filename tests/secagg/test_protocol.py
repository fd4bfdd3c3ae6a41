"""The protocol, played by honest sites, a curious server, a lying server and dropping sites."""

from dataclasses import replace

import numpy as np
import pytest

from fedsegnet.secagg import shamir
from fedsegnet.secagg.error_feedback import SecAggErrorFeedback
from fedsegnet.secagg.errors import DecryptionError, ProtocolViolation, SecAggError, ShareError, ThresholdError
from fedsegnet.secagg.masking import ring_sum
from fedsegnet.secagg.protocol import KeyAdvert, Roster, ServerSecAgg, SiteSecAgg, UnmaskRequest, check_threshold
from fedsegnet.secagg.plan import next_plan

CHI2_15_P1E6 = 56.49  # chi-square, 15 degrees of freedom: P(X > 56.49) = 1e-6 (scipy.stats.chi2.isf(1e-6, 15))


def wire(msg):
    """Every message crosses the wire as plain types (what a FLARE Shareable carries)."""
    return type(msg).from_dict(msg.to_dict())


def names_of(n):
    return [f"site-{i}" for i in range(1, n + 1)]


def random_inputs(names, length, bits, seed):
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, 2**bits, length, dtype=np.uint64).astype(np.uint32) for s in names}


class Round:
    """A round driven step by step, as a controller drives it."""

    def __init__(self, n, t, length=2000, bits=32, round=1):
        self.names = names_of(n)
        self.server = ServerSecAgg(round, self.names, t, bits, length)
        self.sites = {s: SiteSecAgg(s, round) for s in self.names}
        self.length, self.bits = length, bits

    def advertise(self, skip=()):
        for s in self.names:
            if s not in skip:
                self.server.receive_advert(wire(self.sites[s].advertise()))
        self.roster = wire(self.server.roster())

    def share(self, skip=()):
        for s in self.roster.adverts:
            if s not in skip:
                self.server.receive_shares(wire(self.sites[s].share_keys(self.roster)))
        self.inboxes = {s: wire(m) for s, m in self.server.inboxes().items()}

    def mask(self, xs, skip=()):
        self.masked = {}
        for s, inbox in self.inboxes.items():
            if s not in skip:
                self.masked[s] = wire(self.sites[s].masked_input(inbox, xs[s]))
                self.server.receive_masked_input(self.masked[s])
        self.request = wire(self.server.unmask_request())

    def unmask(self, skip=()):
        for s in self.request.survivors:
            if s not in skip:
                self.server.receive_unmask_reply(wire(self.sites[s].unmask(self.request)))
        return self.server.result()

    def run(self, xs, before_shares=(), before_masked=(), after_masked=()):
        self.advertise()
        self.share(before_shares)
        self.mask(xs, before_masked)
        return self.unmask(after_masked)


# ------------------------------------------------------------------------------------------ correctness


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 8])
def test_sum_is_exact_bit_for_bit(n):
    t = n // 2 + 1
    r = Round(n, t, length=3000)
    xs = random_inputs(r.names, 3000, 32, seed=n)
    result = r.run(xs)
    np.testing.assert_array_equal(result.ring_sum, ring_sum(xs.values(), 3000, 32))
    assert result.survivors == r.names and result.dropped == []


def test_quantised_updates_with_error_feedback_sum_exactly_at_the_fewest_ring_bits():
    """The end-to-end site path: update -> residual + the round's plan (shared blocks, 4-bit values,
    block scores) -> masks -> the server's decoded sum equals the sum of what every site's ring
    elements stand for."""
    n, numel = 4, 5000
    plan = next_plan(2, (("w", (numel,)),), n, b"job", ratio=0.1, value_bits=4, block=100,
                     mean_log_rms=np.linspace(-9, -7, 50))  # fmt: skip
    assert plan.ring_bits == 6 and plan.support.size == 500 and plan.length == 600  # 50 scores of 2 digits
    r = Round(n, 3, length=plan.length, bits=6, round=2)
    rng = np.random.default_rng(5)
    feedback = {s: SecAggErrorFeedback(s) for s in r.names}
    xs = {s: feedback[s].encode({"w": rng.normal(scale=0.02, size=numel).astype(np.float32)}, plan, rng) for s in r.names}
    result = r.run(xs)
    decoded, scores = plan.decode(result.ring_sum, len(result.survivors))
    singles = [plan.decode(xs[s], 1) for s in r.names]
    np.testing.assert_allclose(decoded, sum(v for v, _ in singles), rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores, np.mean([sc for _, sc in singles], axis=0), atol=1e-9)
    assert len(r.masked["site-1"].data) == -(-plan.length * 6 // 8)  # 6 bits per value on the wire, no positions


@pytest.mark.parametrize(
    "before_shares,before_masked,after_masked",
    [
        ((), ("site-4",), ()),  # fails after sharing keys, before its masked input: its s-key is rebuilt
        ((), (), ("site-3",)),  # fails after its masked input: its b-seed is rebuilt, its input counts
        ((), ("site-5",), ("site-2",)),
        (("site-1",), ("site-5",), ()),  # one never shared keys: no masks with it at all
    ],
)
def test_dropouts_before_and_after_the_masked_input_leave_the_others_sum(before_shares, before_masked, after_masked):
    r = Round(5, 3)
    xs = random_inputs(r.names, 2000, 32, seed=7)
    result = r.run(xs, before_shares, before_masked, after_masked)
    survivors = [s for s in r.names if s not in before_shares + before_masked]
    assert result.survivors == survivors
    assert result.dropped == sorted(before_masked)
    assert result.responders == [s for s in survivors if s not in after_masked]
    np.testing.assert_array_equal(result.ring_sum, ring_sum([xs[s] for s in survivors], 2000, 32))


# ------------------------------------------------------------------------------------------ the curious server


def _chi2_uniform(counts):
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def _chi2_two_sample(a, b):
    total = a + b
    ea, eb = total * a.sum() / total.sum(), total * b.sum() / total.sum()
    return float(((a - ea) ** 2 / ea).sum() + ((b - eb) ** 2 / eb).sum())


def test_a_masked_input_alone_looks_uniform_whatever_the_input():
    """The server sees y_1 for x_1 = 0 and for x_1 = 0x80000001 (constant vectors). Each y's top and
    low 4 bits are tested against uniform over 16 bins, and the two y's against each other (chi-square,
    15 df, bound at p = 1e-6): with uniform masks, the six tests all pass but with probability
    at most 6e-6. A constant input without masks would put every value in one bin (chi-square 61440)."""
    m = 4096
    seen = []
    for value in (0, 0x80000001):
        r = Round(3, 2, length=m)
        xs = {s: np.full(m, value, dtype=np.uint32) for s in r.names}
        r.advertise()
        r.share()
        r.mask(xs)
        seen.append(np.frombuffer(r.masked["site-1"].data, dtype="<u4"))
    for extract in (lambda y: y >> 28, lambda y: y & 15):
        hists = [np.bincount(extract(y), minlength=16).astype(float) for y in seen]
        for h in hists:
            assert _chi2_uniform(h) < CHI2_15_P1E6
        assert _chi2_two_sample(*hists) < CHI2_15_P1E6
    assert _chi2_uniform(np.bincount(np.full(m, 0x80000001, dtype=np.uint32) >> 28, minlength=16).astype(float)) > 1000


def test_the_server_state_never_holds_a_single_unmasked_input():
    r = Round(4, 3, length=500)
    xs = random_inputs(r.names, 500, 32, seed=3)
    result = r.run(xs, after_masked=("site-2",))
    arrays = [v for v in vars(r.server).values() if isinstance(v, np.ndarray)]
    arrays += [v for d in vars(r.server).values() if isinstance(d, dict) for v in d.values() if isinstance(v, np.ndarray)]
    assert arrays, "the check found no arrays in the server's state"
    for s in r.names:
        for a in arrays:
            assert (a != xs[s]).mean() > 0.99, f"the server holds {s}'s input in the clear"
    np.testing.assert_array_equal(result.ring_sum, ring_sum(xs.values(), 500, 32))


# ------------------------------------------------------------------------------------------ the lying server


def _masked_round(n=5, t=3):
    r = Round(n, t, length=200)
    r.advertise()
    r.share()
    r.mask(random_inputs(r.names, 200, 32, seed=1))
    return r


def test_a_server_asking_for_both_shares_of_a_site_is_refused():
    """The server received site-2's masked input, then claims it dropped: it asks for the b-share
    (survivor) and the s-share (dropped) of site-2, which would unmask y_2 alone."""
    r = _masked_round()
    lie = UnmaskRequest(round=1, survivors=list(r.names), dropped=["site-2"])
    for s in r.names:
        if s == "site-2":
            continue
        with pytest.raises(ProtocolViolation, match=r"round 1, site 'site-\d'.*both the b-share and the s-share of \['site-2'\]"):
            r.sites[s].unmask(lie)


def test_a_second_unmask_request_is_refused():
    r = _masked_round()
    honest = r.sites["site-1"].unmask(r.request)
    assert set(honest.b_shares) == set(r.names)
    later = UnmaskRequest(round=1, survivors=[s for s in r.names if s != "site-2"], dropped=["site-2"])
    with pytest.raises(ProtocolViolation, match="a second unmask request"):
        r.sites["site-1"].unmask(later)


def test_a_site_listed_as_dropped_after_its_masked_input_refuses():
    r = _masked_round()
    lie = UnmaskRequest(round=1, survivors=[s for s in r.names if s != "site-3"], dropped=["site-3"])
    with pytest.raises(ProtocolViolation, match="site 'site-3'.*listed as dropped although it sent its masked input"):
        r.sites["site-3"].unmask(lie)


def test_requests_that_are_not_a_split_of_the_sharing_set_or_below_t_are_refused():
    r = _masked_round()
    with pytest.raises(ProtocolViolation, match="not a split of the sharing set"):
        r.sites["site-1"].unmask(UnmaskRequest(round=1, survivors=r.names[:4], dropped=[]))
    with pytest.raises(ThresholdError, match="2 survivors, fewer than the threshold 3"):
        r.sites["site-1"].unmask(UnmaskRequest(round=1, survivors=["site-1", "site-2"], dropped=r.names[2:]))
    with pytest.raises(ProtocolViolation, match="round 7"):
        r.sites["site-1"].unmask(UnmaskRequest(round=7, survivors=r.names, dropped=[]))


def test_telling_two_groups_different_survivors_does_not_unmask_a_site_when_t_is_above_half():
    """The server tells {site-1, site-2} that site-1 survived (b-shares of site-1) and the others that
    it dropped (s-shares of site-1). Honest sites each answer once. With t = 3 of 5, neither split of
    the other four gives t b-shares and t s-shares at once, so y_1 stays masked."""
    for group_b in (["site-3", "site-4"], ["site-3", "site-4", "site-5"]):
        r = _masked_round()
        alive = UnmaskRequest(round=1, survivors=list(r.names), dropped=[])
        dead = UnmaskRequest(round=1, survivors=[s for s in r.names if s != "site-1"], dropped=["site-1"])
        group_a = [s for s in r.names if s not in group_b]
        b_shares = [shamir.Share.from_bytes(r.sites[s].unmask(alive).b_shares["site-1"]) for s in group_a]
        s_shares = [shamir.Share.from_bytes(r.sites[s].unmask(dead).s_shares["site-1"]) for s in group_b]
        failures = 0
        for shares in (b_shares, s_shares):
            try:
                shamir.reconstruct(shares)
            except ShareError:
                failures += 1
        assert failures >= 1, f"split {group_a} / {group_b} gave the server both secrets of site-1"


def test_a_threshold_at_or_below_half_is_refused_by_sites_and_server():
    with pytest.raises(SecAggError, match=r"secagg_threshold=2: must be an integer in 3..5 for 5 sites"):
        check_threshold(2, 5)
    with pytest.raises(SecAggError, match="secagg_threshold=6"):
        ServerSecAgg(1, names_of(5), 6, 32, 10)
    sites = {s: SiteSecAgg(s, 1) for s in names_of(4)}
    adverts = {s: sites[s].advertise() for s in sites}
    roster = Roster(round=1, threshold=2, ring_bits=32, length=10, adverts={s: [a.c_public, a.s_public] for s, a in adverts.items()})
    with pytest.raises(ThresholdError, match="round 1, site 'site-1': threshold 2 is not above half of the 4"):
        sites["site-1"].share_keys(roster)
    strict = SiteSecAgg("site-1", 1, min_threshold=4)
    a = strict.advertise()
    roster3 = replace(roster, threshold=3, adverts={**roster.adverts, "site-1": [a.c_public, a.s_public]})
    with pytest.raises(ThresholdError, match="threshold 3 is below this site's minimum 4"):
        strict.share_keys(roster3)


def test_a_roster_with_swapped_or_reused_keys_is_refused():
    sites = {s: SiteSecAgg(s, 1) for s in names_of(3)}
    adverts = {s: sites[s].advertise() for s in sites}
    keys = {s: [a.c_public, a.s_public] for s, a in adverts.items()}
    swapped = Roster(round=1, threshold=2, ring_bits=32, length=10, adverts={**keys, "site-1": keys["site-2"]})
    with pytest.raises(ProtocolViolation, match="other public keys for this site than it advertised"):
        sites["site-1"].share_keys(swapped)
    reused = Roster(round=1, threshold=2, ring_bits=32, length=10, adverts={**keys, "site-3": keys["site-2"]})
    with pytest.raises(ProtocolViolation, match="'site-2' and 'site-3' have the same public key"):
        sites["site-1"].share_keys(reused)


# ------------------------------------------------------------------------------------------ thresholds, tampering


def test_fewer_than_t_survivors_cannot_be_unmasked():
    r = Round(4, 3, length=100)
    r.advertise()
    r.share()
    xs = random_inputs(r.names, 100, 32, seed=2)
    with pytest.raises(ThresholdError, match=r"round 1: 2 masked inputs \(\['site-1', 'site-2'\]\), fewer than the threshold 3"):
        r.mask(xs, skip=("site-3", "site-4"))

    r = Round(4, 3, length=100)
    r.advertise()
    r.share()
    r.mask(xs, skip=("site-4",))
    for s in ("site-1", "site-2"):
        r.server.receive_unmask_reply(r.sites[s].unmask(r.request))
    with pytest.raises(ThresholdError, match="2 survivors sent unmasking shares"):
        r.server.result()

    r = Round(4, 3, length=100)
    with pytest.raises(ThresholdError, match="2 sites advertised keys"):
        r.advertise(skip=("site-1", "site-2"))


def test_a_tampered_or_misrouted_sealed_share_is_detected():
    r = Round(3, 2, length=50)
    r.advertise()
    r.share()
    xs = random_inputs(r.names, 50, 32, seed=4)
    inbox = r.inboxes["site-2"]
    tampered = bytearray(inbox.sealed["site-1"])
    tampered[20] ^= 0x01
    with pytest.raises(DecryptionError, match="round 1, site 'site-2': share from 'site-1' to 'site-2' failed authentication"):
        r.sites["site-2"].masked_input(replace(inbox, sealed={**inbox.sealed, "site-1": bytes(tampered)}), xs["site-2"])
    misrouted = r.inboxes["site-3"].sealed["site-1"]  # site-1's share for site-3, handed to site-2
    with pytest.raises(DecryptionError, match="share from 'site-1' to 'site-2'"):
        r.sites["site-2"].masked_input(replace(inbox, sealed={**inbox.sealed, "site-1": misrouted}), xs["site-2"])


# ------------------------------------------------------------------------------------------ misuse


def test_steps_out_of_order_wrong_rounds_and_strangers_are_refused_naming_the_site():
    r = Round(3, 2, length=20)
    site = r.sites["site-1"]
    with pytest.raises(ProtocolViolation, match="site 'site-1': asked to share_keys while at step 'advertise'"):
        site.share_keys(Roster(round=1, threshold=2, ring_bits=32, length=20))
    advert = site.advertise()
    with pytest.raises(ProtocolViolation, match="asked to advertise while at step 'share_keys'"):
        site.advertise()
    with pytest.raises(ProtocolViolation, match="site 'site-9': a secagg.advert message from a site not in"):
        r.server.receive_advert(replace(advert, site="site-9"))
    with pytest.raises(ProtocolViolation, match="site 'site-1': a secagg.advert message of round 2"):
        r.server.receive_advert(replace(advert, round=2))
    r.server.receive_advert(advert)
    with pytest.raises(ProtocolViolation, match="site 'site-1': a second secagg.advert"):
        r.server.receive_advert(advert)
    with pytest.raises(ProtocolViolation, match="site 'site-2': a public key that is already in use"):
        r.server.receive_advert(KeyAdvert(site="site-2", round=1, c_public=advert.c_public, s_public=advert.s_public))
    with pytest.raises(ProtocolViolation, match="expected a 'secagg.advert' message, got 'secagg.roster'"):
        KeyAdvert.from_dict(Roster(round=1, threshold=2, ring_bits=32, length=3).to_dict())
    with pytest.raises(SecAggError, match="round=-1"):
        SiteSecAgg("site-1", -1)
    with pytest.raises(SecAggError, match="sites: repeated"):
        ServerSecAgg(1, ["a", "a", "b"], 2, 32, 10)


def test_the_server_refuses_a_reply_with_another_sites_share():
    r = _masked_round()
    reply = r.sites["site-1"].unmask(r.request)
    other = r.sites["site-2"].unmask(r.request)
    forged = replace(reply, b_shares={**reply.b_shares, "site-3": other.b_shares["site-3"]})
    with pytest.raises(ProtocolViolation, match="site 'site-1': b-share of 'site-3' has x=2"):
        r.server.receive_unmask_reply(forged)
    with pytest.raises(ProtocolViolation, match="b-shares for"):
        r.server.receive_unmask_reply(replace(reply, b_shares={}))


def test_masked_input_of_the_wrong_length_is_refused():
    r = Round(3, 2, length=20)
    r.advertise()
    r.share()
    with pytest.raises(SecAggError, match="round 1, site 'site-1': values: 19 elements, the round's support has 20"):
        r.sites["site-1"].masked_input(r.inboxes["site-1"], np.zeros(19, dtype=np.uint32))
