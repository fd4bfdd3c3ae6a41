"""The math behind the threat model: reference norm, peer-bounded counts, the leave-one-out direction signal, state."""

import copy
import json

import numpy as np
import pytest

from fedsegnet.aggregation import AdaptiveAggregation, divergence_signals, peer_bounded_counts, reference_norm, update_norm

SHAPES = {"w": (64, 32), "b": (32,)}


def _honest(seed, spread=1.0):
    rng, base = np.random.default_rng(seed), np.random.default_rng(0)
    return {k: (base.normal(size=s) + spread * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}


def _orthogonal(seed):
    """Updates that share nothing (as late sparse updates of different sites): independent noise."""
    rng = np.random.default_rng(1000 + seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _reports(sites):
    return {s: {"n_train": 10, "agreement": 0.8, "val_dice_local": 0.8} for s in sites}


# ------------------------------------------------------------------------------ reference norm
def test_reference_norm_median_smaller_and_history_clamp():
    assert reference_norm([1.0, 2.0, 30.0]) == 2.0  # median: one large value does not move it
    assert reference_norm([1.0, 10.0]) == 1.0  # two: the smaller
    assert reference_norm([5.0]) == 5.0 and reference_norm([]) is None
    assert reference_norm([10.0, 20.0], history=[1.0, 1.0]) == 2.0  # at most growth x the history's median
    assert reference_norm([0.01, 1.0], history=[1.0]) == 0.5  # at least history / growth
    assert reference_norm([10.0], history=[1.0]) == 1.0  # a lone update cannot raise it
    assert reference_norm([], history=[3.0, 1.0, 2.0]) == 2.0
    assert reference_norm([9.0, 9.0, 9.0], history=[100.0] * 5 + [1.0] * 3, window=3) == 2.0  # only the last window counts


@pytest.mark.parametrize("bad", [{"growth": 1.0}, {"window": 0}, {"window": 2.5}])
def test_reference_norm_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        reference_norm([1.0], **bad)


def test_slowly_growing_colluders_move_the_reference_at_most_growth_per_window():
    aam = AdaptiveAggregation()
    history = []
    for r in range(10):  # all 3 sites grow their norm x1.5 every round
        rho = reference_norm([1.5**r] * 3, history, aam.norm_growth, aam.norm_window)
        if history:
            assert rho <= aam.norm_growth * float(np.median(history[-aam.norm_window :])) + 1e-9
        history.append(rho)
    assert history[-1] < 0.5 * 1.5**9  # the reference lags the growth (the clip binds on the grown updates)


# ------------------------------------------------------------------------------ peer-bounded counts
def test_peer_bounded_counts_one_and_k_overclaiming_sites_and_inputs_untouched():
    counts = {"a": 10.0, "b": 10.0, "c": 10.0, "d": 1e9}
    before = dict(counts)
    assert peer_bounded_counts(counts) == {"a": 10.0, "b": 10.0, "c": 10.0, "d": 20.0}
    assert counts == before
    # two of three overclaim: each one's bound is the lower median of the others (the honest 10)
    assert peer_bounded_counts({"a": 1e9, "b": 1e9, "c": 10.0}) == {"a": 20.0, "b": 20.0, "c": 10.0}
    assert peer_bounded_counts({"a": 100.0, "b": 10.0}, ratio=0) == {"a": 100.0, "b": 10.0}  # off
    assert peer_bounded_counts({"a": 1e9}) == {"a": 1e9}  # no peers
    with pytest.raises(ValueError, match="ratio"):
        peer_bounded_counts(counts, ratio=0.5)


# ------------------------------------------------------------------------------ direction signal
@pytest.mark.parametrize("k", [3, 4, 6])
def test_leave_one_out_separates_a_random_update_where_the_inclusive_centre_does_not(k):
    ups = {f"site-{i}": _honest(i) for i in range(1, k)}
    rng = np.random.default_rng(12345)  # a stream no honest site uses
    ups["rand"] = {n: (rng.normal(size=v.shape) * float(v.std())).astype(np.float32) for n, v in ups["site-1"].items()}
    loo = divergence_signals(ups)
    inc = divergence_signals(ups, leave_one_out=False)
    sims = {s: 1 - v["cos_dist"] for s, v in loo.items()}
    honest_min = min(v for s, v in sims.items() if s != "rand")
    assert sims["rand"] < 0.1 and honest_min > 0.3
    assert 1 - inc["rand"]["cos_dist"] > sims["rand"] + 0.1  # the inclusive centre holds the update itself


def test_leave_one_out_median_centre_of_two_is_the_other_update():
    a, b = _honest(1), _honest(2)
    for centre in ("median", "trimmed_mean"):
        d = divergence_signals({"a": a, "b": b}, centre=centre)
        assert d["a"]["cos_dist"] == pytest.approx(d["b"]["cos_dist"], abs=1e-6)


def test_a_random_site_flagged_while_updates_agree_stays_down_weighted_when_they_no_longer_do():
    aam = AdaptiveAggregation()
    honest = {f"site-{i}": _honest(i) for i in (1, 2, 3)}
    rng = np.random.default_rng(54321)
    rand = {n: (rng.normal(size=v.shape) * float(v.std())).astype(np.float32) for n, v in honest["site-1"].items()}
    first = aam.aggregate({**honest, "site-4": rand}, _reports([*honest, "site-4"]), SHAPES, round=0)
    assert first.sites["site-4"]["weight"] <= 0.1
    # a later round where no two updates share a direction: the signal is not informative, the flag is kept
    later = {s: _orthogonal(i) for i, s in enumerate(["site-1", "site-2", "site-3", "site-4"])}
    second = aam.aggregate(later, _reports(later), SHAPES, round=1)
    assert second.sites["site-4"]["weight"] <= 0.1
    assert min(second.sites[s]["weight"] for s in ("site-1", "site-2", "site-3")) > 0.3  # the honest ones are not penalised


def test_uninformative_rounds_leave_fedavg_weights():
    aam = AdaptiveAggregation()
    ups = {f"site-{i}": _orthogonal(i) for i in range(1, 5)}
    result = aam.aggregate(ups, _reports(ups), SHAPES)
    assert all(r["weight"] == pytest.approx(0.25) for r in result.sites.values())


# ------------------------------------------------------------------------------ state
def test_norm_history_survives_the_state_and_a_version_1_state_loads():
    aam = AdaptiveAggregation()
    for r in range(3):
        ups = {f"site-{i}": _honest(10 * r + i) for i in (1, 2)}
        aam.aggregate(ups, _reports(ups), SHAPES, round=r)
    state = json.loads(json.dumps(aam.state_dict()))
    assert len(state["norms"]) == 3 and state["version"] == 2
    fresh = AdaptiveAggregation()
    fresh.load_state_dict(copy.deepcopy(state))
    assert fresh.norm_history == aam.norm_history
    old = {k: v for k, v in state.items() if k != "norms"}
    old["version"] = 1
    older = AdaptiveAggregation()
    older.load_state_dict(old)
    assert older.norm_history == [] and older.rounds == 3
    with pytest.raises(ValueError, match="norms"):
        AdaptiveAggregation().load_state_dict({**state, "norms": [-1.0]})


def test_two_sites_a_shrunken_update_moves_the_model_less_never_more():
    """The limit the threat model states: shrinking one's update slows a two-site round, it does not steer it further."""
    honest, own = _honest(1), _honest(2)
    aam = AdaptiveAggregation()
    result = aam.aggregate({"a": honest, "b": {k: 0.01 * v for k, v in own.items()}}, _reports(["a", "b"]), SHAPES)
    assert update_norm(result.update) <= update_norm(honest)


@pytest.mark.parametrize("bad", [{"peer_cases_ratio": 0.5}, {"norm_window": 0}, {"norm_growth": 1.0}, {"min_similarity": 1.0}])
def test_new_arguments_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        AdaptiveAggregation(**bad)
