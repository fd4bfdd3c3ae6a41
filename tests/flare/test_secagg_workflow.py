"""Unit tests of the secure-aggregation FLARE adapters: layout, weights, arguments, messages through FOBS."""

import numpy as np
import pytest
from nvflare.apis.shareable import Shareable
from nvflare.fuel.utils import fobs

from fedsegnet.errors import ConfigError
from fedsegnet.flare.constants import SECAGG_KEY
from fedsegnet.flare.secagg_executor import SecAggLearnerExecutor
from fedsegnet.aggregation import reported_weights, sample_weights
from fedsegnet.flare.secagg_workflow import SecureScatterAndGather, fitting_value_bits, model_layout
from fedsegnet.ledger.signing import generate_signer
from fedsegnet.secagg import (
    KeyAdvert,
    MaskedInput,
    Roster,
    RoundPlan,
    SecAggErrorFeedback,
    ServerSecAgg,
    ShareBundle,
    ShareInbox,
    SiteSecAgg,
    UnmaskReply,
    UnmaskRequest,
    flatten,
    next_plan,
    ring_bits_needed,
)


def test_model_layout_is_sorted_and_leaves_out_integer_buffers():
    weights = {"b.w": np.zeros((2, 3), np.float32), "a.bias": np.zeros(4, np.float32), "bn.n": np.array(3, np.int64)}
    assert model_layout(weights) == (("a.bias", (4,)), ("b.w", (2, 3)))
    assert set(weights) == {"b.w", "a.bias", "bn.n"}  # input not modified


@pytest.mark.parametrize("counts", [{"s1": 4, "s2": 4}, {"s1": 2, "s2": 3, "s3": 4}])  # within the peer bound
def test_sample_weights_are_the_shares_of_the_cases(counts):
    w = sample_weights(counts)
    assert list(w) == sorted(counts) and sum(w.values()) == pytest.approx(1.0)
    for s, n in counts.items():
        assert w[s] == pytest.approx(n / sum(counts.values()))


@pytest.mark.parametrize("bad", [{}, {"s1": 0}, {"s1": 2, "s2": -1}, {"s1": 1.5}, {"s1": True}])
def test_sample_weights_refuse_bad_counts(bad):
    with pytest.raises(ValueError, match="n_train" if bad else "no site"):
        sample_weights(bad)


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(step_timeout=-1), "step_timeout"), (dict(secagg_threshold=1), "secagg_threshold"),
     (dict(secagg_threshold=-2), "secagg_threshold"), (dict(value_bits=5), "up_bits"), (dict(first_clip=0.0), "first_clip"),
     (dict(support_ratio=0.0), "up_ratio"), (dict(scope="layer"), "compression_scope"), (dict(block=-1), "compression_block"),
     (dict(keep_masked_inputs="yes"), "keep_masked_inputs"), (dict(num_rounds=0), "num_rounds")],
)  # fmt: skip
def test_the_controller_refuses_bad_arguments_naming_them(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SecureScatterAndGather(persistor_id="persistor", **kwargs)


def test_the_controller_keeps_its_settings():
    c = SecureScatterAndGather(persistor_id="persistor", step_timeout=5, secagg_threshold=3, support_ratio=0.2, value_bits=8,
                               block=128, scope="global", first_clip=0.5)  # fmt: skip
    assert (c.step_timeout, c.secagg_threshold, c.support_ratio, c.value_bits, c.block, c.scope, c.first_clip,
            c.keep_masked_inputs) == (5, 3, 0.2, 8, 128, "global", 0.5, False)  # fmt: skip


@pytest.mark.parametrize("bits, n, expected", [(4, 2, 4), (16, 32, 16), (32, 2, 31), (32, 8, 29), (32, 32, 27)])
def test_value_bits_are_lowered_to_what_a_32_bit_ring_holds(bits, n, expected):
    assert fitting_value_bits(bits, n) == expected
    assert ring_bits_needed(expected, n) <= 32


@pytest.mark.parametrize("kwargs, field", [(dict(adverts="pki"), "adverts"), (dict(min_threshold=1), "min_threshold"),
                                           (dict(keep_inputs=1), "keep_inputs")])  # fmt: skip
def test_the_executor_refuses_bad_arguments_naming_them(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SecAggLearnerExecutor(**kwargs)


def _wire(message):
    """``message`` as the controller and the executor send it: in a Shareable, through FOBS."""
    s = Shareable()
    s[SECAGG_KEY] = {"message": message.to_dict()}
    return type(message).from_dict(fobs.loads(fobs.dumps(s))[SECAGG_KEY]["message"])


@pytest.mark.parametrize("seed", [0, 1])
def test_a_round_through_fobs_sums_the_weighted_updates(seed):
    """Every message of a round, and the round's plan, cross FOBS as the FLARE tasks carry them (bytes
    fields intact); the server's decoded sum divided by the survivors' weight is the weighted mean of
    what the sites' inputs stand for, and on a full support (round 0's 16-bit values) that is the
    weighted mean of the updates within one step per site."""
    rng = np.random.default_rng(seed)
    counts = {"site-1": 2, "site-2": 5, "site-3": 3}
    names = sorted(counts)
    updates = {s: {"a": rng.normal(0, 0.01, (7, 5)), "b": rng.normal(0, 0.01, 11)} for s in names}
    weights = sample_weights(counts)
    layout = (("a", (7, 5)), ("b", (11,)))
    plan = next_plan(0, layout, len(names), b"job-1", ratio=1.0, block=8)
    s = Shareable()
    s[SECAGG_KEY] = {"plan": plan.to_dict()}
    plan = RoundPlan.from_dict(fobs.loads(fobs.dumps(s))[SECAGG_KEY]["plan"], layout)
    assert plan.support.size == 46 and plan.value_bits == 16 and plan.n_blocks == 7  # 5 + 2 blocks of <= 8 values
    server = ServerSecAgg(0, names, 2, plan.ring_bits, plan.length, session="job-1")
    sites = {s: SiteSecAgg(s, 0, session="job-1", signer=generate_signer(s)) for s in names}
    for s in names:
        server.receive_advert(_wire(sites[s].advertise()))
    roster = _wire(server.roster())
    assert isinstance(roster, Roster)
    for s in names:
        server.receive_shares(_wire(sites[s].share_keys(roster)))
    inboxes = {s: _wire(i) for s, i in server.inboxes().items()}
    assert all(isinstance(i, ShareInbox) for i in inboxes.values())
    for s in names:
        weighted = {k: weights[s] * v for k, v in updates[s].items()}
        ring = SecAggErrorFeedback(s).encode(weighted, plan, np.random.default_rng(seed + 10))
        server.receive_masked_input(_wire(sites[s].masked_input(inboxes[s], ring)))
    request = _wire(server.unmask_request())
    for s in names:
        server.receive_unmask_reply(_wire(sites[s].unmask(request)))
    result = server.result()
    assert result.survivors == names and result.key_check == "signed, no root CA"
    values, scores = plan.decode(result.ring_sum, len(names))
    mean = values / sum(weights[s] for s in result.survivors)
    expected = sum(weights[s] * flatten(updates[s])[0] for s in names)
    np.testing.assert_allclose(mean, expected, atol=len(names) * plan.quantizer.step.max())
    assert scores.shape == (7,) and np.all(np.abs(scores - np.log2(0.01 / 3)) < 2)  # mean log2 RMS of w x N(0, 0.01)
    assert not np.allclose(expected, sum(flatten(updates[s])[0] for s in names) / len(names))  # not the plain mean
    for cls in (KeyAdvert, MaskedInput, ShareBundle, UnmaskReply, UnmaskRequest):
        assert cls.KIND.startswith("secagg.")


def _site_ctx(site="site-1"):
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext

    ctx = FLContext()
    ctx.put(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    return ctx


@pytest.mark.parametrize("task", ["train", "submit_model"])
def test_under_secure_aggregation_a_site_refuses_tasks_that_would_send_its_update_in_the_clear(task):
    """The server (honest or not) asks for a plain update or the site's local model: the site answers
    with an error naming the mode, and its learner is never asked (no update is computed)."""
    from nvflare.apis.shareable import ReturnCode
    from nvflare.apis.signal import Signal

    from fedsegnet.flare.constants import ERROR_HEADER

    ex = SecAggLearnerExecutor(secure_aggregation=True)
    reply = ex.execute(task, Shareable(), _site_ctx(), Signal())
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    why = reply.get_header(ERROR_HEADER)
    assert "site site-1" in why and repr(task) in why and "secure_aggregation=true" in why and "masked" in why
    assert ex.learner is None and not ex.is_initialized  # nothing trained, nothing built


def test_without_secure_aggregation_a_site_refuses_the_secure_steps_and_answers_plain_tasks_as_flare():
    from nvflare.apis.shareable import ReturnCode
    from nvflare.apis.signal import Signal

    from fedsegnet.flare.constants import ERROR_HEADER, SecAggTask

    ex = SecAggLearnerExecutor(secure_aggregation=False)
    for task in SecAggTask.ALL:
        reply = ex.execute(task, Shareable(), _site_ctx("site-2"), Signal())
        assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
        assert "secure_aggregation=false" in reply.get_header(ERROR_HEADER) and "site-2" in reply.get_header(ERROR_HEADER)
    assert ex._refusal("train") is None and ex._refusal("submit_model") is None and ex._refusal("validate") is None


def test_the_executor_refuses_a_mode_that_is_not_a_bool():
    with pytest.raises(ValueError, match="secure_aggregation"):
        SecAggLearnerExecutor(secure_aggregation="true")
    with pytest.raises(ConfigError, match="secure_aggregation"):
        SecureScatterAndGather(persistor_id="persistor", secure_aggregation="yes")


def test_a_site_overclaiming_cases_is_bounded_by_its_peers_as_in_the_plain_modes():
    """Under secure aggregation the count is the only weight: 1e9 claimed cases count as 2 x the
    others' lower median (weight 0.4 against 0.2 each for three honest sites, as AAM and mean give)."""
    w = sample_weights({"site-1": 10, "site-2": 10, "site-3": 10, "site-4": 10**9})
    assert w["site-4"] == pytest.approx(0.4) and all(w[s] == pytest.approx(0.2) for s in ("site-1", "site-2", "site-3"))
    assert sample_weights({"a": 10, "b": 10**9}, peer_cases_ratio=0)["b"] > 0.99  # 0: counts as reported
    with pytest.raises(ConfigError, match="aam_peer_cases_ratio"):
        SecureScatterAndGather(persistor_id="persistor", peer_cases_ratio=0.5)


def test_with_a_startup_kit_adverts_are_signed_with_its_key_and_checked_against_its_root_ca(tmp_path):
    """POC and production: each site signs with its kit's client key and requires kit-signed adverts
    under the kit's root CA, and so does the server; a round of such sites says "kit". Without a kit
    (the simulator) a generated key, no root CA; ``adverts="kit"`` without one is refused."""
    from fedsegnet.flare.secagg_executor import advert_keys
    from fedsegnet.flare.secagg_workflow import server_root_ca
    from fedsegnet.secagg import KEYS_KIT, SecAggError
    from tests.ledger.conftest import SERVER, write_kits

    kits = write_kits(tmp_path / "kits", "secaggjob", names=(SERVER, "site-1", "site-2"))
    root_ca = server_root_ca(kits / SERVER / "startup")
    assert root_ca == (kits / SERVER / "startup" / "rootCA.pem").read_bytes()
    keys = {s: advert_keys(kits / s / "startup", s) for s in ("site-1", "site-2")}
    assert all(ca == root_ca and required and signer.key_source == "kit" for signer, ca, required in keys.values())
    names = ["site-1", "site-2"]
    server = ServerSecAgg(0, names, 2, 32, 4, session="job-9", root_ca=root_ca, require_signed=True)
    sites = {s: SiteSecAgg(s, 0, session="job-9", signer=keys[s][0], root_ca=keys[s][1], require_signed=keys[s][2]) for s in names}
    for s in names:
        server.receive_advert(_wire(sites[s].advertise()))
    roster = _wire(server.roster())
    for s in names:
        server.receive_shares(_wire(sites[s].share_keys(roster)))
        assert sites[s].key_check == KEYS_KIT
    # a site running with a generated key (no kit) is refused by a server that has one
    stranger = SiteSecAgg("site-2", 0, session="job-9", signer=generate_signer("site-2"))
    strict = ServerSecAgg(0, names, 2, 32, 4, session="job-9", root_ca=root_ca, require_signed=True)
    strict.receive_advert(_wire(SiteSecAgg("site-1", 0, session="job-9", signer=keys["site-1"][0], root_ca=root_ca, require_signed=True).advertise()))
    with pytest.raises(SecAggError, match="site-2"):
        strict.receive_advert(_wire(stranger.advertise()))
    # no kit: generated keys, nothing required; "kit" refused naming the folder
    empty = tmp_path / "sim" / "startup"
    empty.mkdir(parents=True)
    assert server_root_ca(empty) is None
    signer, ca, required = advert_keys(empty, "site-1")
    assert signer.key_source != "kit" and ca is None and not required
    assert advert_keys(empty, "site-1", "unsigned") == (None, None, False)
    with pytest.raises(SecAggError, match=str(empty)):
        advert_keys(empty, "site-1", "kit")


# ------------------------------------------------------------------------------ AAM from reports
def _aam():
    from fedsegnet.aggregation import AdaptiveAggregation

    return AdaptiveAggregation()  # the job's defaults


def test_reported_weights_without_aam_are_sample_counts():
    w, signals = reported_weights(None, {"a": 3, "b": 5}, {}, {})
    assert w == pytest.approx({"a": 3 / 8, "b": 5 / 8}) and signals == {}


def test_reported_weights_are_fedavgs_while_the_sites_report_alike():
    counts = {"s1": 4, "s2": 4, "s3": 8}
    same = {s: {"agreement": 0.7, "val_dice_global": 0.6, "val_dice_local": 0.7} for s in counts}
    w, signals = reported_weights(_aam(), counts, {}, same)
    assert w == pytest.approx({"s1": 0.25, "s2": 0.25, "s3": 0.5})
    assert all(signals[s]["score"] == 0 for s in counts)
    w0, _ = reported_weights(_aam(), counts, {}, {})  # round 0: nothing reported yet
    assert w0 == pytest.approx(w)


def test_a_site_whose_reported_dice_falls_far_behind_loses_weight_and_label_kind_sets_the_prior():
    counts = {f"s{i}": 5 for i in range(1, 5)}
    reports = {s: {"agreement": 0.8, "val_dice_local": 0.8} for s in counts}
    reports["s4"] = {"agreement": 0.2, "val_dice_local": 0.15}  # labels that contradict what the others learned
    w, signals = reported_weights(_aam(), counts, {}, reports)
    assert w["s4"] < 0.1 < 0.25 < w["s1"] and signals["s4"]["score"] < 0
    assert sum(w.values()) == pytest.approx(1.0)
    w, _ = reported_weights(_aam(), {"v1": 5, "v2": 5, "v3": 5, "b": 5}, {"b": "box"}, {})
    assert w["b"] == pytest.approx(w["v1"] / 2)  # box labels: prior trust 0.5 of voxel's
    w, _ = reported_weights(_aam(), {"a": 5, "b": 5, "c": 5, "liar": 10**9}, {}, {})
    assert w["liar"] <= 0.6 and w["liar"] == pytest.approx(2 * w["a"])  # bounded by its peers, as in the plain modes
    with pytest.raises(ValueError, match="site 'x'"):
        reported_weights(_aam(), {"x": 0, "y": 3}, {}, {})
