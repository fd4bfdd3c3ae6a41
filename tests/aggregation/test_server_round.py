"""ServerRound: one round for every method (gate, shared keys, weights, record), inputs untouched, deterministic."""

import copy

import numpy as np
import pytest

from fedsegnet.aggregation import (
    METHODS,
    AdaptiveAggregation,
    CompactUpdate,
    ServerRound,
    aggregate_mean,
    aggregate_trimmed_mean,
    check_update,
)

SHAPES = {"w": (8, 6), "b": (6,), "bn": (6,)}


def _updates(k=4, seed=0, keys=("w", "b")):
    base = np.random.default_rng(99)
    common = {n: base.normal(size=SHAPES[n]).astype(np.float32) for n in keys}
    out = {}
    for i in range(k):
        rng = np.random.default_rng(seed * 100 + i)
        out[f"site-{i}"] = {n: (common[n] + 0.3 * rng.normal(size=SHAPES[n])).astype(np.float32) for n in keys}
    return out


def _reports(sites, n=10):
    return {s: {"n_train": n + i, "label_kind": "voxel", "agreement": 0.8, "val_dice_local": 0.7} for i, s in enumerate(sites)}


def _reference():
    return {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_the_shared_keys_and_a_record_per_site(method):
    ups = _updates()
    out = ServerRound(method).round(ups, _reports(ups), _reference(), round=1, expected_personal={"bn"})
    assert set(out.update) == {"w", "b"} and all(out.update[n].shape == SHAPES[n] and out.update[n].dtype == np.float32 for n in out.update)
    assert out.record["round"] == 1 and out.record["method"] == method and set(out.record["sites"]) == set(ups)
    for r in out.record["sites"].values():
        assert r["accepted"] and r["gate"] == "accepted" and r["personal_keys"] == 1
    weights = [r["weight"] for r in out.record["sites"].values()]
    if method in ("aam", "mean"):
        assert sum(weights) == pytest.approx(1.0)
    else:
        assert weights == [None] * len(ups)


@pytest.mark.parametrize("method", METHODS)
def test_the_gate_drops_a_scaled_and_a_nan_update_for_every_method(method):
    ups = _updates(5)
    ups["site-3"] = {n: 100 * v for n, v in ups["site-3"].items()}
    ups["site-4"] = {n: np.full_like(v, np.nan) for n, v in ups["site-4"].items()}
    out = ServerRound(method).round(ups, _reports(ups), _reference(), expected_personal={"bn"})
    sites = out.record["sites"]
    assert not sites["site-3"]["accepted"] and "reference norm" in sites["site-3"]["gate"]
    assert not sites["site-4"]["accepted"] and "NaN or Inf" in sites["site-4"]["gate"]
    assert all(np.isfinite(v).all() for v in out.update.values())
    if method == "mean":
        np.testing.assert_allclose(out.update["w"], aggregate_mean([ups[f"site-{i}"] for i in range(3)], [10, 11, 12])["w"], rtol=1e-6)


def test_trimmed_beta_is_used_and_inputs_are_not_modified():
    ups = _updates(5)
    before = copy.deepcopy(ups)
    out = ServerRound("trimmed_mean", trimmed_beta=0.2).round(ups, _reports(ups), _reference(), expected_personal={"bn"})
    np.testing.assert_allclose(out.update["w"], aggregate_trimmed_mean(list(ups.values()), beta=0.2)["w"], rtol=1e-6)
    for s in ups:
        for n in ups[s]:
            np.testing.assert_array_equal(ups[s][n], before[s][n])


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_and_the_state_is_the_mechanisms(method):
    ups = {s: CompactUpdate(u) for s, u in _updates().items()}
    a, b = ServerRound(method), ServerRound(method)
    for rnd in range(2):
        ra = a.round(ups, _reports(ups), _reference(), round=rnd, expected_personal={"bn"})
        rb = b.round(ups, _reports(ups), _reference(), round=rnd, expected_personal={"bn"})
        assert ra.record == rb.record
        for n in ra.update:
            np.testing.assert_array_equal(ra.update[n], rb.update[n])
    assert a.state_dict() == b.state_dict() and len(a.state_dict()["norms"]) == 2
    fresh = ServerRound(method)
    fresh.load_state_dict(a.state_dict())
    assert fresh.aam.norm_history == a.aam.norm_history


def test_check_refuses_personal_keys_and_bad_shapes_and_the_round_trusts_it():
    server = ServerRound()
    ref = _reference()
    good = _updates(1)["site-0"]
    assert server.check(good, ref, {"bn"}, declared=["bn"]) == ""
    assert "declares 0" in server.check(good, ref, {"bn"})
    assert "sends 1 key" in server.check({**good, "bn": np.zeros(6, np.float32)}, ref, {"bn"}, declared=["bn"])
    assert "shape" in server.check({**good, "b": np.zeros(7, np.float32)}, ref, {"bn"}, declared=["bn"])
    shapes = server.shared_shapes(ref, {"bn"})
    assert shapes is server.shared_shapes(ref, {"bn"}) and set(shapes) == {"w", "b"}
    assert check_update(good, shapes) == ""
    ups = _updates(3)
    out = server.round(ups, _reports(ups), ref, expected_personal={"bn"}, refused={"site-9": "not a DXO"},
                       checked={s: shapes for s in ups})  # fmt: skip
    assert out.record["sites"]["site-9"] == {"accepted": False, "gate": "not a DXO", "weight": 0.0}
    assert all(out.record["sites"][s]["accepted"] for s in ups)


def test_no_update_no_change():
    out = ServerRound("median").round({}, {}, _reference(), round=0)
    assert out.update is None and out.record == {"round": 0, "method": "median", "sites": {}}


@pytest.mark.parametrize("bad", [dict(method="krum"), dict(trimmed_beta=0.5), dict(trimmed_beta=-0.1), dict(trimmed_beta=True)])
def test_bad_arguments_are_named(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        ServerRound(**bad)


def test_aam_round_matches_the_mechanism_alone():
    ups = _updates(4)
    ref = {n: _reference()[n] for n in ("w", "b")}
    direct = AdaptiveAggregation().aggregate(ups, _reports(ups), ref, round=0)
    out = ServerRound("aam").round(ups, _reports(ups), ref, round=0)
    assert out.record["sites"] == direct.sites
    for n in ref:
        np.testing.assert_array_equal(out.update[n], direct.update[n])
