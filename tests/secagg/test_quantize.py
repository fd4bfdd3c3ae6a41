"""Quantisation into the ring, the no-wrap rule, the plans' random blocks, flat vectors and the site's error feedback."""

import numpy as np
import pytest
import torch

from fedsegnet.secagg.error_feedback import SecAggErrorFeedback
from fedsegnet.secagg.errors import SecAggError
from fedsegnet.secagg.masking import ring_sum
from fedsegnet.secagg.plan import next_plan
from fedsegnet.secagg.quantize import RingQuantizer, ring_bits_needed
from fedsegnet.secagg.support import flatten, unflatten


@pytest.mark.parametrize("value_bits,n,expected", [(4, 1, 4), (4, 2, 5), (4, 8, 7), (4, 9, 7), (4, 10, 8), (8, 32, 13), (16, 8, 19)])
def test_ring_bits_needed(value_bits, n, expected):
    assert ring_bits_needed(value_bits, n) == expected
    levels = 2 ** (value_bits - 1) - 1
    assert n * levels <= 2 ** (expected - 1) - 1  # fits
    assert n * levels > 2 ** (expected - 2) - 1  # one bit fewer would not


@pytest.mark.parametrize("value_bits,n", [(4, 8), (8, 3), (None, 5)])
def test_worst_case_sum_does_not_wrap_at_the_fewest_bits(value_bits, n):
    bits = ring_bits_needed(value_bits, n) if value_bits else 12
    q = RingQuantizer(clip=1.0, n_sites=n, ring_bits=bits, value_bits=value_bits)
    gen = np.random.default_rng(0)
    for extreme in (1.0, -1.0):
        rings = [q.encode(np.full(50, extreme * 5), gen)[0] for _ in range(n)]  # clipped to +-1 = +-L
        decoded = q.decode_sum(ring_sum(rings, 50, bits), n)
        np.testing.assert_allclose(decoded, extreme * n, rtol=1e-12)


def test_overflow_settings_refused_naming_the_field():
    with pytest.raises(SecAggError, match=r"ring_bits=6: the sum of 8 sites of value_bits=4 could wrap \(needs ring_bits >= 7\)"):
        RingQuantizer(clip=1.0, n_sites=8, ring_bits=6, value_bits=4)
    with pytest.raises(SecAggError, match="ring_bits=4: 20 sites leave no level"):
        RingQuantizer(clip=1.0, n_sites=20, ring_bits=4)
    q = RingQuantizer(clip=1.0, n_sites=4, ring_bits=7, value_bits=4)
    with pytest.raises(SecAggError, match=r"n_summed=5: must be in 1..n_sites=4"):
        q.decode_sum(np.zeros(3, dtype=np.uint32), 5)
    for kwargs, field in (({"clip": 0}, "clip=0"), ({"clip": float("inf")}, "clip=inf"), ({"n_sites": 0}, "n_sites=0"),
                          ({"ring_bits": 40}, "ring_bits=40"), ({"value_bits": 1}, "value_bits=1")):  # fmt: skip
        args = {"clip": 1.0, "n_sites": 4, "ring_bits": 16, **kwargs}
        with pytest.raises(SecAggError, match=field):
            RingQuantizer(**args)
    with pytest.raises(SecAggError, match="NaN or Inf"):
        q.encode(np.array([np.nan]), np.random.default_rng(0))


def test_stochastic_rounding_is_unbiased_and_carried_is_what_the_ring_says():
    q = RingQuantizer(clip=1.0, n_sites=4, ring_bits=7, value_bits=4)  # step 1/7
    v = np.full(20000, 0.05)
    ring, carried = q.encode(v, np.random.default_rng(1))
    assert abs(carried.mean() - 0.05) < 0.005  # sd of the mean ~ 0.07 / sqrt(20000) = 0.0005
    np.testing.assert_allclose(q.decode_sum(ring, 1), carried)
    assert set(np.round(carried * 7).astype(int)) <= {0, 1}


def test_random_blocks_are_uniform_over_rounds():
    layout = (("w", (2000,)),)  # 200 blocks of 10
    counts = np.zeros(200)
    for r in range(400):
        plan = next_plan(r, layout, 4, b"seed", ratio=0.1, block=10, dense_below=0)  # no scores: 20 blocks drawn at random
        assert plan.blocks.size == 20
        counts[plan.blocks] += 1
    # each block is drawn with probability 0.1: 40 of 400 expected, sd ~6; bound 40 +- 36 (6 sd)
    assert counts.min() > 4 and counts.max() < 76


def test_flatten_round_trip_keeps_inputs():
    update = {"b": torch.ones(2, 3), "a": np.arange(4, dtype=np.float32)}
    flat, layout = flatten(update)
    assert layout == (("a", (4,)), ("b", (2, 3))) and flat.shape == (10,)
    back = unflatten(flat, layout)
    np.testing.assert_array_equal(back["a"], np.arange(4))
    with pytest.raises(SecAggError, match="must be a float"):
        flatten({"i": np.arange(3)})


def test_error_feedback_loses_nothing_over_rounds():
    rng = np.random.default_rng(2)
    layout = (("w", (10, 30)),)
    ef = SecAggErrorFeedback("site-1")
    total_u, total_carried = np.zeros(300), np.zeros(300)
    for r in range(5):
        plan = next_plan(r, layout, 4, b"pub", ratio=0.1, value_bits=5, block=10, scope="global", dense_below=0)
        update = {"w": rng.normal(scale=0.2, size=(10, 30)).astype(np.float32)}
        before = update["w"].copy()
        ring = ef.encode(update, plan, rng)
        np.testing.assert_array_equal(update["w"], before)
        assert ring.shape == (plan.length,) and ring.dtype == np.uint32 and plan.support.size == 30
        carried, _ = plan.decode(ring, 1)
        total_u += update["w"].reshape(-1)
        total_carried += carried
    np.testing.assert_allclose(total_carried + ef.residual, total_u, atol=1e-9)
    state = ef.state_dict()
    other = SecAggErrorFeedback("site-1")
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.residual, ef.residual)
    assert other.rounds == 5
    with pytest.raises(SecAggError, match="version 9"):
        other.load_state_dict({"version": 9})
