import copy
import math

import numpy as np
import pytest
import torch

from fedsegnet.aggregation import (
    aggregate_mean,
    aggregate_median,
    aggregate_trimmed_mean,
    gate_updates,
    update_norm,
    weighted_sum,
)
from fedsegnet.aggregation.robust import coordinate_centre


def _updates(k=5, seed=0):
    rng = np.random.default_rng(seed)
    return [{"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)} for _ in range(k)]


@pytest.mark.parametrize("fn", [aggregate_mean, aggregate_median, aggregate_trimmed_mean])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_shapes_dtypes_and_inputs_untouched(fn, k):
    ups = _updates(k)
    before = copy.deepcopy(ups)
    out = fn(ups)
    assert set(out) == {"w", "b"}
    assert out["w"].shape == (4, 3) and out["w"].dtype == np.float32
    for a, b in zip(ups, before):
        for n in a:
            np.testing.assert_array_equal(a[n], b[n])


def test_values_match_numpy():
    ups = _updates(5)
    stack = np.stack([u["w"] for u in ups])
    np.testing.assert_allclose(aggregate_mean(ups)["w"], stack.mean(0), atol=1e-6)
    np.testing.assert_allclose(aggregate_median(ups)["w"], np.median(stack, 0), atol=1e-6)
    trimmed = np.sort(stack, 0)[1:4].mean(0)  # beta 0.2 of 5: drop one at each end
    np.testing.assert_allclose(aggregate_trimmed_mean(ups, 0.2)["w"], trimmed, atol=1e-6)
    w = [1, 0, 0, 0, 3]
    np.testing.assert_allclose(aggregate_mean(ups, w)["w"], (stack[0] + 3 * stack[4]) / 4, atol=1e-6)


@pytest.mark.parametrize("fn", [aggregate_median, aggregate_trimmed_mean])
def test_robust_centres_resist_one_byzantine_update(fn):
    ups = _updates(5)
    clean = aggregate_median(ups)["w"]
    ups[2] = {k: v * 1000 for k, v in ups[2].items()}
    assert np.abs(fn(ups)["w"] - clean).max() < 3
    assert np.abs(aggregate_mean(ups)["w"] - clean).max() > 50


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta"):
        aggregate_trimmed_mean(_updates(), beta=0.5)
    with pytest.raises(ValueError, match="weights"):
        aggregate_mean(_updates(3), weights=[1, -1, 1])
    with pytest.raises(ValueError, match="at least one"):
        aggregate_median([])
    ups = _updates(2)
    del ups[1]["b"]
    with pytest.raises(ValueError, match="updates\\[1\\]"):
        aggregate_mean(ups)
    with pytest.raises(ValueError, match="max_norm_ratio"):
        gate_updates({}, {}, max_norm_ratio=1)


def test_gate_accepts_clean_updates_and_names_each_problem():
    ups = dict(zip(["site-1", "site-2", "site-3", "site-4", "site-5"], _updates(5)))
    reference = {"w": (4, 3), "b": (3,)}
    ups["site-2"] = {"w": ups["site-2"]["w"], "b": np.zeros(4, np.float32)}
    ups["site-3"] = {"w": np.full((4, 3), np.nan, np.float32), "b": ups["site-3"]["b"]}
    ups["site-4"] = {k: v * 100 for k, v in ups["site-4"].items()}
    ups["site-5"] = {"w": ups["site-5"]["w"]}
    ups["site-6"] = _updates(1, seed=9)[0]
    d = gate_updates(ups, reference, max_norm_ratio=10)
    assert d["site-1"].accepted and d["site-6"].accepted and d["site-1"].reason == ""
    assert not d["site-2"].accepted and "b: shape [4]" in d["site-2"].reason
    assert not d["site-3"].accepted and "w: holds NaN" in d["site-3"].reason
    assert not d["site-4"].accepted and "the reference norm" in d["site-4"].reason
    assert not d["site-5"].accepted and "1 missing ['b']" in d["site-5"].reason
    assert d["site-1"].norm == pytest.approx(update_norm(ups["site-1"]))


def test_norm_rule_needs_three_updates():
    ups = _updates(2)
    ups[1] = {k: v * 100 for k, v in ups[1].items()}
    d = gate_updates({"a": ups[0], "b": ups[1]}, {"w": (4, 3), "b": (3,)})
    assert d["a"].accepted and d["b"].accepted


def test_weighted_sum():
    ups = _updates(2)
    out = weighted_sum(ups, [0.25, 2.0])
    for k in ups[0]:
        np.testing.assert_allclose(out[k], 0.25 * ups[0][k] + 2.0 * ups[1][k], rtol=1e-6)
    with pytest.raises(ValueError, match="factors"):
        weighted_sum(ups, [1.0])
    assert math.isfinite(update_norm(out))


@pytest.mark.parametrize("k", [1, 2, 5])
def test_coordinate_centre_matches_numpy(k):
    stacked = torch.from_numpy(np.random.default_rng(k).normal(size=(k, 7, 3)))
    np.testing.assert_allclose(coordinate_centre(stacked, "median").numpy(), np.median(stacked.numpy(), axis=0))
    cut = int(0.25 * k)
    ordered = np.sort(stacked.numpy(), axis=0)[cut : k - cut]
    np.testing.assert_allclose(coordinate_centre(stacked, "trimmed_mean", 0.25).numpy(), ordered.mean(axis=0))


@pytest.mark.parametrize("bad", [{"centre": "mean"}, {"beta": 0.5}])
def test_coordinate_centre_refuses_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        coordinate_centre(torch.zeros(3, 2), **{"centre": "trimmed_mean", "beta": 0.1, **bad})
