"""The round's plan under secure aggregation: shared blocks, per-block ranges, block scores, next plans."""

import math

import numpy as np
import pytest

from fedsegnet.secagg import RoundPlan, SecAggError, SecAggErrorFeedback, next_plan, ring_bits_needed
from fedsegnet.secagg.masking import ring_sum
from fedsegnet.secagg.plan import FIRST_VALUE_BITS, model_blocks

LAYOUT = (("a.weight", (40, 30)), ("b.bias", (7,)), ("c.weight", (3, 100)))  # 1200 + 7 + 300 values


def _updates(rng, scale=(1e-3, 1e-4, 1e-2)):
    return {name: rng.normal(0, s, shape) for (name, shape), s in zip(LAYOUT, scale)}


def test_blocks_cut_each_tensor_and_never_straddle_two():
    starts, sizes = model_blocks(LAYOUT, 256)
    assert starts.tolist() == [0, 256, 512, 768, 1024, 1200, 1207, 1463]
    assert sizes.tolist() == [256, 256, 256, 256, 176, 7, 256, 44]
    starts, sizes = model_blocks(LAYOUT, 0)  # one block per tensor
    assert starts.tolist() == [0, 1200, 1207] and sizes.tolist() == [1200, 7, 300]
    for bad in (-1, 2.5, True):
        with pytest.raises(SecAggError, match="block="):
            model_blocks(LAYOUT, bad)


def test_round_0_draws_blocks_of_every_tensor_at_random_with_wide_values():
    plan = next_plan(0, LAYOUT, 4, b"job-1", dense_below=0, ratio=0.25, value_bits=4, block=100)
    assert plan.value_bits == FIRST_VALUE_BITS and plan.ring_bits == 18 and np.all(plan.clips == 1.0)
    starts, _ = model_blocks(LAYOUT, 100)
    tensor_of = np.searchsorted([1200, 1207], starts, side="right")
    chosen = tensor_of[plan.blocks]
    assert sorted(np.unique(chosen)) == [0, 1, 2]  # at least one block of every tensor
    assert np.sum(chosen == 0) == 3 and np.sum(chosen == 2) == 1  # 25% of 12 blocks, of 3 (rounded to the nearer block)
    again = next_plan(0, LAYOUT, 4, b"job-1", dense_below=0, ratio=0.25, value_bits=4, block=100)
    np.testing.assert_array_equal(plan.blocks, again.blocks)  # public: anyone can recompute it
    others = [next_plan(r, LAYOUT, 4, b"job-1", dense_below=0, ratio=0.25, block=100).blocks for r in range(1, 6)]
    assert any(not np.array_equal(plan.blocks, o) for o in others)
    assert not np.array_equal(plan.blocks, next_plan(0, LAYOUT, 4, b"job-2", dense_below=0, ratio=0.25, block=100).blocks)


def test_a_plan_survives_its_dict_and_refuses_bad_fields_naming_them():
    plan = next_plan(3, LAYOUT, 8, b"s", dense_below=0, ratio=0.3, block=64, mean_log_rms=np.linspace(-14, -6, 25))
    back = RoundPlan.from_dict(plan.to_dict(), LAYOUT)
    np.testing.assert_array_equal(back.support, plan.support)
    np.testing.assert_array_equal(back.quantizer.step, plan.quantizer.step)
    assert (back.ring_bits, back.length, back.value_bits) == (plan.ring_bits, plan.length, 4) and plan.ring_bits == 7
    good = plan.to_dict()
    for field, value, match in [
        ("blocks", [3, 2], "'blocks' must be sorted"), ("blocks", [0, 99], "'blocks' must be sorted"),
        ("blocks", [], "'blocks' must be a non-empty"), ("clips", [1.0], "'clips' must hold"),
        ("clips", [-1.0] * len(good["clips"]), "'clips' must hold"), ("value_bits", 1, "'value_bits'"),
        ("value_bits", 30, "needs a 33-bit ring"), ("n_sites", 0, "'n_sites'"), ("score_centre", float("nan"), "'score_centre'"),
    ]:  # fmt: skip
        with pytest.raises(SecAggError, match=match):
            RoundPlan.from_dict({**good, field: value}, LAYOUT)
    with pytest.raises(SecAggError, match="missing field"):
        RoundPlan.from_dict({k: v for k, v in good.items() if k != "clips"}, LAYOUT)
    with pytest.raises(SecAggError, match="must be a mapping"):
        RoundPlan.from_dict(None, LAYOUT)


@pytest.mark.parametrize("n", [2, 3, 8, 32])
def test_the_ring_sum_decodes_to_the_exact_sum_of_what_the_sites_inputs_stand_for(n):
    """Values and block scores of n sites in the fewest ring bits: the decoded sum is the sum of every
    site's carried values (exactly, no wrap), and the scores are the mean of the sites' scores."""
    rng = np.random.default_rng(n)
    scores = None
    feedback = {s: SecAggErrorFeedback(f"site-{s}") for s in range(n)}
    for rnd in range(3):
        plan = next_plan(rnd, LAYOUT, n, b"job", dense_below=0, ratio=0.2, value_bits=4, block=64, mean_log_rms=scores)
        rings, carried = [], []
        for s in range(n):
            before = np.zeros(plan.numel) if feedback[s].residual is None else feedback[s].residual.copy()
            u = _updates(rng)
            flat = np.concatenate([u[k].ravel() for k, _ in LAYOUT])
            rings.append(feedback[s].encode(u, plan, rng))
            carried.append(flat + before - feedback[s].residual)
            assert np.all(carried[-1][np.setdiff1d(np.arange(plan.numel), plan.support)] == 0)  # nothing off the support
        values, scores = plan.decode(ring_sum(rings, plan.length, plan.ring_bits), n)
        np.testing.assert_allclose(values, sum(carried), rtol=0, atol=1e-12)
        singles = [plan.decode(r, 1)[1] for r in rings]
        np.testing.assert_allclose(scores, np.mean(singles, axis=0), atol=1e-9)
        assert plan.value_bits == (FIRST_VALUE_BITS if rnd == 0 else 4)
        assert plan.ring_bits == ring_bits_needed(plan.value_bits, n) <= plan.value_bits + math.ceil(math.log2(n)) + 1


def test_scores_measure_each_blocks_log_rms_and_steer_the_support_to_where_the_mass_is():
    rng = np.random.default_rng(0)
    plan = next_plan(0, LAYOUT, 2, b"job", dense_below=0, ratio=0.2, value_bits=4, block=100)
    flat = np.concatenate([u.ravel() for u in _updates(rng).values()])
    ring, _ = plan.encode(flat, rng)
    _, scores = plan.decode(ring, 1)
    expected = np.repeat([np.log2(1e-3), np.log2(1e-4), np.log2(1e-2)], [12, 1, 3])
    assert np.all(np.abs(scores - expected) < 0.6)  # within a step of rounding (16 / 65,535 octaves here) and sampling
    global_plan = next_plan(1, LAYOUT, 2, b"job", dense_below=0, ratio=0.2, value_bits=4, block=100, scope="global", mean_log_rms=scores, random_share=0)
    assert set(global_plan.blocks.tolist()) == {13, 14, 15}  # the largest values: c.weight's three blocks
    tensor_plan = next_plan(1, LAYOUT, 2, b"job", dense_below=0, ratio=0.2, value_bits=4, block=100, mean_log_rms=scores, random_share=0)
    assert len(tensor_plan.blocks) == 4 and 12 in tensor_plan.blocks  # 2 blocks of a, b's one, 1 of c (20% of each)
    # each block's range: 3x its RMS (the values of an N(0, s) block rarely pass it)
    np.testing.assert_allclose(tensor_plan.clips, 3 * np.exp2(scores[tensor_plan.blocks]), rtol=1e-3)  # 4 digits travel


def test_no_block_starves_what_it_holds_back_grows_until_its_score_brings_it_in():
    """Every site sends the same small constant update everywhere: with 10% of the values per round and
    no random share, the scores alone must visit the blocks as a round robin would (every 10 rounds),
    not re-pick what was just sent, and what reached the server plus what the sites hold back is
    exactly what they trained."""
    n, rounds = 3, 40
    feedback = {s: SecAggErrorFeedback(f"site-{s}") for s in range(n)}
    rng = np.random.default_rng(1)
    n_blocks = model_blocks(LAYOUT, 50)[0].size
    scores, last, gap = None, np.full(n_blocks, -1), np.zeros(n_blocks, dtype=int)
    delivered, trained = np.zeros(1507), np.zeros(1507)
    for rnd in range(rounds):
        plan = next_plan(rnd, LAYOUT, n, b"job", dense_below=0, ratio=0.1, value_bits=4, block=50, scope="global", mean_log_rms=scores, random_share=0)
        gap[plan.blocks] = np.maximum(gap[plan.blocks], rnd - last[plan.blocks])
        last[plan.blocks] = rnd
        rings = []
        for s in range(n):
            u = {name: np.full(shape, 1e-3 * (1 + s)) for name, shape in LAYOUT}
            trained += np.concatenate([v.ravel() for v in u.values()])
            rings.append(feedback[s].encode(u, plan, rng))
        values, scores = plan.decode(ring_sum(rings, plan.length, plan.ring_bits), n)
        delivered += values
    gap = np.maximum(gap, rounds - last)  # the wait since the last visit counts too
    # a round robin of 31 blocks, 3 per round, visits each every 10.3 rounds: within a quarter of that
    assert gap.max() <= 13, f"blocks waiting more than 13 rounds: {np.flatnonzero(gap > 13).tolist()}"
    np.testing.assert_allclose(delivered + sum(f.residual for f in feedback.values()), trained, atol=1e-9)
    per_round = 1e-3 * (1 + 2 + 3)
    assert np.abs(delivered - trained).max() <= 13 * per_round  # at most 13 rounds' worth held back anywhere


def test_small_tensors_are_in_every_rounds_support_whole():
    """As the plain codec sends tensors below dense_below dense: here every tensor but c.weight's 300
    values at dense_below=256, whatever the scores say."""
    scores = np.full(model_blocks(LAYOUT, 64)[0].size, -20.0)
    for rnd, s in ((0, None), (1, scores)):
        plan = next_plan(rnd, LAYOUT, 2, b"job", ratio=0.1, block=64, dense_below=256, mean_log_rms=s)
        assert set(range(1200, 1207)) <= set(plan.support.tolist())  # b.bias (7 values) whole
        assert np.isin(np.arange(1200), plan.support).sum() < 200  # a.weight (1200 >= 256): about 10% of it
    whole = next_plan(1, LAYOUT, 2, b"job", ratio=0.1, block=64, dense_below=2048, mean_log_rms=scores)
    assert whole.support.size == 1507  # every tensor below 2048 values
    with pytest.raises(SecAggError, match="dense_below"):
        next_plan(0, LAYOUT, 2, b"job", dense_below=-1)


def test_an_update_that_does_not_fit_the_plan_is_refused():
    plan = next_plan(0, LAYOUT, 2, b"job", dense_below=0, ratio=0.5)
    ef = SecAggErrorFeedback("site-1")
    with pytest.raises(SecAggError, match="not the plan's layout"):
        ef.encode({"a.weight": np.zeros((40, 30))}, plan, np.random.default_rng(0))
    bad = {name: np.zeros(shape) for name, shape in LAYOUT}
    bad["b.bias"][0] = np.nan
    with pytest.raises(SecAggError, match="NaN"):
        ef.encode(bad, plan, np.random.default_rng(0))
    assert ef.residual is None  # nothing kept from a refused update
    with pytest.raises(SecAggError, match="ring_sum"):
        plan.decode(np.zeros(3, dtype=np.uint32), 1)
    for kwargs, match in [({"ratio": 0}, "ratio"), ({"random_share": 2}, "random_share"), ({"scope": "layer"}, "scope"),
                          ({"mean_log_rms": np.zeros(2)}, "mean_log_rms")]:  # fmt: skip
        with pytest.raises(SecAggError, match=match):
            next_plan(1, LAYOUT, 2, b"job", dense_below=0, **kwargs)
