"""AAM: each signal, the weight bounds, the gate inside aggregation, clamping, determinism, state round trip."""

import copy
import json

import numpy as np
import pytest

from fedsegnet.aggregation import (
    AdaptiveAggregation,
    CompactUpdate,
    SiteReport,
    aggregate_mean,
    bounded_weights,
    divergence_signals,
    update_norm,
)

SHAPES = {"w": (16, 8), "b": (8,)}


def _base(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _round(k=4, noise=0.3, seed=0):
    """K honest updates: a shared direction plus site noise."""
    base = _base(seed)
    rng = np.random.default_rng(seed + 100)
    return {f"site-{i + 1}": {n: (v + noise * rng.normal(size=v.shape)).astype(np.float32) for n, v in base.items()} for i in range(k)}


def _reports(sites, **over):
    return {s: {"n_train": 10, "agreement": 0.8, "val_dice_local": 0.8, **over.get(s, {})} for s in sites}


# ------------------------------------------------------------------------------ divergence signal
@pytest.mark.parametrize("centre", ["trimmed_mean", "median"])
def test_divergence_identical_updates_are_zero_and_outliers_are_far(centre):
    ups = _round(noise=0.0)
    div = divergence_signals(ups, centre=centre)
    for d in div.values():
        assert d["cos_dist"] == pytest.approx(0.0, abs=1e-6) and d["norm_ratio"] == pytest.approx(1.0)
    ups["site-4"] = {k: -v for k, v in ups["site-4"].items()}  # sign-flipped
    ups["site-3"] = {k: 5 * v for k, v in ups["site-3"].items()}  # scaled: same direction, 5x the norm
    div = divergence_signals(ups, centre=centre)
    assert div["site-4"]["cos_dist"] == pytest.approx(2.0, abs=1e-5)
    assert div["site-3"]["cos_dist"] == pytest.approx(0.0, abs=1e-5)
    assert div["site-3"]["norm_ratio"] > 4.0
    assert div["site-1"]["cos_dist"] == pytest.approx(0.0, abs=1e-5)


def test_divergence_random_update_is_orthogonal():
    ups = _round(noise=0.1)
    rng = np.random.default_rng(9)
    ups["site-2"] = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in ups["site-2"].items()}
    div = divergence_signals(ups)
    assert div["site-2"]["cos_dist"] > 0.9  # the others' centre does not contain it: near-orthogonal
    # each honest update is compared with a centre that holds the random one: a little further off
    assert max(div[s]["cos_dist"] for s in ("site-1", "site-3", "site-4")) < 0.2


def test_divergence_bad_arguments():
    with pytest.raises(ValueError, match="centre"):
        divergence_signals(_round(), centre="mode")
    with pytest.raises(ValueError, match="beta"):
        divergence_signals(_round(), beta=0.5)
    with pytest.raises(ValueError, match="at least one"):
        divergence_signals({})


# ------------------------------------------------------------------------------ weight bounds
@pytest.mark.parametrize(
    "raw,floor,cap",
    [([1, 0, 0, 100], 0.02, 0.6), ([1, 1, 1, 1], 0.02, 0.6), ([5, 1], 0.1, 0.6), ([1, 2, 3, 1000, 1000], 0.02, 0.3),
     ([0, 0, 0], 0.1, 0.5), ([1e-30, 1, 1], 0.05, 0.9)],
)  # fmt: skip
def test_bounded_weights_respect_floor_cap_and_sum(raw, floor, cap):
    w = bounded_weights(raw, floor, cap)
    assert w.sum() == pytest.approx(1.0)
    assert (w >= floor - 1e-9).all() and (w <= cap + 1e-9).all()


def test_bounded_weights_inside_bounds_are_proportional_and_infeasible_bounds_relax():
    np.testing.assert_allclose(bounded_weights([1, 2, 3, 4], 0.05, 0.5), [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(bounded_weights([1, 100], 0.0, 0.3), [0.5, 0.5])  # cap 0.3 impossible for 2 sites
    np.testing.assert_allclose(bounded_weights([1, 3, 0], 0.1, 0.6), [0.3, 0.6, 0.1])  # cap first, then floor
    with pytest.raises(ValueError, match="raw"):
        bounded_weights([1, -1])
    with pytest.raises(ValueError, match="floor"):
        bounded_weights([1, 1], floor=0.6, cap=0.5)


# ------------------------------------------------------------------------------ signals move weights
def _weights(aam, ups, reports, rnd=0):
    return {s: r["weight"] for s, r in aam.aggregate(ups, reports, SHAPES, round=rnd).sites.items()}


def test_quality_signal_downweights_disagreeing_labels():
    ups = _round()
    w = _weights(AdaptiveAggregation(performance_coef=0, divergence_coef=0, norm_coef=0), ups,
                 _reports(ups, **{"site-4": {"agreement": 0.5}}))  # fmt: skip
    assert w["site-4"] < 0.75 * min(w[s] for s in ("site-1", "site-2", "site-3"))  # 0.19 against 0.27 at T = 0.2


def test_quality_is_compared_within_a_label_kind():
    """A box site's weak-label agreement lives on another scale than a voxel site's Dice: it is
    judged against the other box sites only (and with none, not at all)."""
    ups = _round()
    aam = AdaptiveAggregation(performance_coef=0, divergence_coef=0, norm_coef=0)
    kinds = {"site-1": {"label_kind": "voxel"}, "site-2": {"label_kind": "voxel"},
             "site-3": {"label_kind": "box", "agreement": 0.3}, "site-4": {"label_kind": "box", "agreement": 0.3}}  # fmt: skip
    w = _weights(aam, ups, _reports(ups, **kinds))
    prior = {s: 1.0 if s in ("site-1", "site-2") else 0.5 for s in ups}
    for s in ups:  # only the kind prior separates them: nobody falls behind its own kind
        assert w[s] == pytest.approx(prior[s] / sum(prior.values()), rel=1e-6)
    kinds["site-4"] = {"label_kind": "box", "agreement": 0.1}  # sloppy boxes: behind the other box site
    w = _weights(AdaptiveAggregation(performance_coef=0, divergence_coef=0, norm_coef=0), ups, _reports(ups, **kinds))
    assert w["site-4"] < 0.5 * w["site-3"]


def test_quality_is_smoothed_over_rounds():
    aam = AdaptiveAggregation(smoothing=0.5)
    ups = _round()
    aam.aggregate(ups, _reports(ups, **{"site-2": {"agreement": 0.2}}), SHAPES)
    aam.aggregate(ups, _reports(ups, **{"site-2": {"agreement": 0.6}}), SHAPES)
    assert aam.site_quality["site-2"] == pytest.approx(0.4)
    assert aam.site_quality["site-1"] == pytest.approx(0.8)


def test_performance_signal_downweights_a_site_whose_model_cannot_fit_its_labels():
    ups = _round()
    w = _weights(AdaptiveAggregation(quality_coef=0, divergence_coef=0, norm_coef=0), ups,
                 _reports(ups, **{"site-1": {"val_dice_local": 0.4}}))  # fmt: skip
    assert w["site-1"] < min(w[s] for s in ("site-2", "site-3", "site-4")) / 2.5  # 0.11 against 0.30 at T = 0.2


def test_divergence_signal_downweights_a_random_update_and_a_scaled_one_is_brought_to_the_reference_norm():
    ups = _round(noise=0.1)
    rng = np.random.default_rng(3)
    ups["site-2"] = {k: rng.normal(size=v.shape).astype(np.float32) * float(np.abs(v).mean()) for k, v in ups["site-2"].items()}
    ups["site-3"] = {k: 8 * v for k, v in ups["site-3"].items()}  # under the gate's 10x
    result = AdaptiveAggregation().aggregate(ups, _reports(ups), SHAPES)
    assert result.sites["site-2"]["weight"] <= 0.04  # 0.03 at T = 0.2, near the floor 0.02
    # the scaled one is brought back to the reference norm: its direction counts, its size does not
    assert result.sites["site-3"]["clip"] * result.sites["site-3"]["norm"] == pytest.approx(result.sites["site-3"]["reference_norm"])
    assert update_norm(result.update) <= 1.05 * max(update_norm(ups[s]) for s in ("site-1", "site-4"))
    honest = aggregate_mean([ups["site-1"], ups["site-4"]])
    cos = sum(float(np.dot(result.update[k].ravel(), honest[k].ravel())) for k in SHAPES) / (
        update_norm(result.update) * update_norm(honest)
    )
    assert cos > 0.99


def test_zero_coefficients_give_fedavg_weights_and_the_weighted_mean():
    ups = _round()
    n = {"site-1": 5, "site-2": 10, "site-3": 20, "site-4": 15}
    reports = {s: {"n_train": n[s], "agreement": 0.1 * i, "val_dice_local": 0.2 * i} for i, s in enumerate(ups)}
    aam = AdaptiveAggregation(quality_coef=0, performance_coef=0, divergence_coef=0, norm_coef=0, floor=0, cap=1, clip_norm=0)
    result = aam.aggregate(ups, reports, SHAPES)
    total = sum(n.values())
    for s in ups:
        assert result.sites[s]["weight"] == pytest.approx(n[s] / total)
    expected = aggregate_mean(list(ups.values()), [n[s] for s in ups])
    for k in SHAPES:
        np.testing.assert_allclose(result.update[k], expected[k], rtol=1e-5, atol=1e-6)


def test_label_kind_prior():
    ups = _round()
    aam = AdaptiveAggregation(quality_coef=0, performance_coef=0, divergence_coef=0, norm_coef=0, floor=0, cap=1)
    reports = _reports(ups, **{"site-1": {"label_kind": "tag"}, "site-2": {"label_kind": "box"}})
    w = _weights(aam, ups, reports)
    assert w["site-1"] == pytest.approx(0.3 * w["site-3"]) and w["site-2"] == pytest.approx(0.5 * w["site-3"])


# ------------------------------------------------------------------------------ gate and clamping
@pytest.mark.parametrize(
    "broken,reason",
    [
        (lambda u: {**u, "w": np.full_like(u["w"], np.nan)}, "NaN or Inf"),
        (lambda u: {**u, "b": np.zeros(9, np.float32)}, "shape"),
        (lambda u: {"w": u["w"]}, "names differ"),
        (lambda u: {k: 1000 * v for k, v in u.items()}, "reference norm"),
    ],
)
def test_gate_drops_bad_updates_and_the_others_carry_the_round(broken, reason):
    ups = _round()
    ups["site-3"] = broken(ups["site-3"])
    result = AdaptiveAggregation().aggregate({s: CompactUpdate(u) for s, u in ups.items()}, _reports(ups), SHAPES)
    r = result.sites["site-3"]
    assert not r["accepted"] and reason in r["gate"] and r["weight"] == 0.0
    assert sum(result.sites[s]["weight"] for s in ups) == pytest.approx(1.0)
    assert all(np.isfinite(v).all() for v in result.update.values())


def test_nothing_accepted_gives_no_update():
    ups = {"site-1": {"w": np.full((16, 8), np.nan, np.float32), "b": np.zeros(8, np.float32)}}
    result = AdaptiveAggregation().aggregate(ups, {}, SHAPES)
    assert result.update is None and not result.sites["site-1"]["accepted"]


def test_self_reported_values_are_clamped_and_an_overclaiming_site_gets_at_most_the_cap():
    report, notes = SiteReport.clamped(max_cases=1000, n_train=1e9, agreement=7.0, val_dice_local=float("nan"),
                                       val_dice_global="x", label_kind="gold")  # fmt: skip
    assert report.n_train == 1000 and report.agreement == 1.0 and report.val_dice_local is None
    assert report.val_dice_global is None and len(notes) == 5
    ups = _round()
    reports = _reports(ups, **{"site-1": {"n_train": 1e12, "agreement": 1.0, "val_dice_local": 1.0}})
    result = AdaptiveAggregation(cap=0.6, peer_cases_ratio=0).aggregate(ups, reports, SHAPES)  # no peer bound: the cap
    assert result.sites["site-1"]["weight"] == pytest.approx(0.6)
    assert result.sites["site-1"]["n_train"] == 100_000 and result.sites["site-1"]["notes"]
    result = AdaptiveAggregation(cap=0.6).aggregate(ups, reports, SHAPES)  # peer bound: 2 x the others' 10 cases
    assert result.sites["site-1"]["n_train"] == 20 and result.sites["site-1"]["weight"] == pytest.approx(20 / 50)


# ------------------------------------------------------------------------------ determinism, inputs, state
def test_deterministic_and_inputs_untouched():
    ups, reports = _round(), _reports(_round())
    before = copy.deepcopy(ups), copy.deepcopy(reports)
    a = AdaptiveAggregation().aggregate(ups, reports, SHAPES)
    b = AdaptiveAggregation().aggregate(ups, reports, SHAPES)
    for k in SHAPES:
        np.testing.assert_array_equal(a.update[k], b.update[k])
    assert a.sites == b.sites
    for s in ups:
        for k in SHAPES:
            np.testing.assert_array_equal(ups[s][k], before[0][s][k])
    assert reports == before[1]


def test_state_round_trip_continues_identically():
    a = AdaptiveAggregation()
    for rnd in range(3):
        ups = _round(seed=rnd)
        a.aggregate(ups, _reports(ups, **{"site-2": {"agreement": 0.3 + 0.1 * rnd}}), SHAPES, round=rnd)
    state = json.loads(json.dumps(a.state_dict()))  # plain values: survives JSON and torch.save
    b = AdaptiveAggregation()
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict() and b.rounds == 3
    ups = _round(seed=7)
    ra = a.aggregate(ups, _reports(ups), SHAPES, round=3)
    rb = b.aggregate(ups, _reports(ups), SHAPES, round=3)
    assert ra.sites == rb.sites


def test_load_state_rejects_foreign_state():
    with pytest.raises(ValueError, match="version"):
        AdaptiveAggregation().load_state_dict({"version": 99})
    with pytest.raises(ValueError, match="malformed"):
        AdaptiveAggregation().load_state_dict({"version": 1, "sites": {"a": {"bogus": 1}}, "rounds": 0})


def test_history_is_bounded():
    aam = AdaptiveAggregation(history=2)
    for rnd in range(5):
        aam.aggregate(_round(seed=rnd), _reports(_round()), SHAPES, round=rnd)
    assert [h["round"] for h in aam.state_dict()["history"]] == [3, 4]


@pytest.mark.parametrize("bad", [{"temperature": 0}, {"floor": 1.0}, {"cap": 0}, {"smoothing": 0}, {"centre": "x"}, {"clip_norm": 0.5}])
def test_bad_arguments_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        AdaptiveAggregation(**bad)


def test_sampled_divergence_matches_the_exact_one():
    rng = np.random.default_rng(2)
    base = {"a": rng.normal(size=(400, 500)).astype(np.float32), "b": rng.normal(size=(300, 300)).astype(np.float32)}
    ups = {f"s{i}": {k: v + (0.5 + i) * rng.normal(size=v.shape).astype(np.float32) for k, v in base.items()} for i in range(4)}
    exact = divergence_signals(ups, sample_size=0)
    sampled = divergence_signals({s: CompactUpdate(u) for s, u in ups.items()}, sample_size=20_000)
    for s in ups:
        assert sampled[s]["cos_dist"] == pytest.approx(exact[s]["cos_dist"], abs=0.02)
        assert sampled[s]["norm"] == pytest.approx(exact[s]["norm"], rel=1e-5)


def test_sites_within_the_tolerance_keep_fedavg_weights():
    """Small differences in the signals (noise, ordinary heterogeneity) do not move the weights."""
    ups = _round()
    reports = {s: {"n_train": 10, "agreement": 0.80 + 0.01 * i, "val_dice_local": 0.78 + 0.01 * i} for i, s in enumerate(ups)}
    w = _weights(AdaptiveAggregation(), ups, reports)
    for s in ups:
        assert w[s] == pytest.approx(0.25)


@pytest.mark.parametrize("centre,beta", [("trimmed_mean", 0.0), ("trimmed_mean", 0.25), ("trimmed_mean", 0.4), ("median", 0.0)])
@pytest.mark.parametrize("k", [2, 3, 4, 7, 8])
def test_every_leave_one_out_centre_is_the_centre_of_the_others(centre, beta, k):
    import torch

    from fedsegnet.aggregation.divergence import _leave_one_out_centres
    from fedsegnet.aggregation.robust import coordinate_centre

    stacked = torch.from_numpy(np.random.default_rng(k).normal(size=(k, 501))).double()
    stacked[:, :20] = 0.0  # ties
    centres = _leave_one_out_centres(stacked, centre, beta)
    assert centres.shape == (k, 501) and centres.is_contiguous()
    for i in range(k):
        others = torch.cat([stacked[:i], stacked[i + 1 :]])
        assert torch.allclose(centres[i], coordinate_centre(others, centre, beta), atol=1e-12)
