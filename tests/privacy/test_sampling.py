"""Poisson sampling of cases: the rate the sampler and the DP loader draw is the rate the accountant composes."""

import math

import pytest
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.transforms import crops_per_volume
from fedsegnet.errors import ConfigError
from fedsegnet.privacy import build_case_loader, case_sampler, cases_per_step, sample_rate

from .conftest import TINY16

FAIL = 1e-6
"""Each bound below fails by chance with probability at most this (Hoeffding, union bound)."""


def _hoeffding(draws: int, fail: float = FAIL) -> float:
    """Half-width t with P(|mean of `draws` Bernoulli - p| >= t) <= fail."""
    return math.sqrt(math.log(2 / fail) / (2 * draws))


def _draws(sampler, passes: int) -> torch.Tensor:
    """(steps, n_cases) 0/1: which case each step drew."""
    rows = []
    for _ in range(passes):
        for indices in sampler:
            row = torch.zeros(sampler.num_samples)
            row[indices] = 1
            rows.append(row)
    return torch.stack(rows)


def test_the_rate_is_the_expected_cases_over_the_cases():
    assert sample_rate(2, 40) == 0.05
    assert sample_rate(8, 4) == 1.0  # fewer cases than a step takes: every case, every step
    assert cases_per_step(TINY16) == TINY16.batch_size // crops_per_volume(TINY16) == 2
    for args, field in (((0, 40), "expected_cases"), ((2, 0), "n_cases"), ((float("nan"), 4), "expected_cases")):
        with pytest.raises(ConfigError) as e:
            sample_rate(*args)
        assert e.value.field == field


def test_the_sampler_draws_each_case_independently_at_the_rate():
    n, q = 20, 0.1
    sampler = case_sampler(n, q, generator=torch.Generator().manual_seed(0), steps=1000)
    drawn = _draws(sampler, passes=20)  # 20,000 steps
    steps = drawn.shape[0]
    assert abs(float(drawn.mean()) - q) < _hoeffding(drawn.numel())
    per_case = drawn.mean(dim=0)
    assert float((per_case - q).abs().max()) < _hoeffding(steps, FAIL / n)
    empty = float((drawn.sum(dim=1) == 0).float().mean())  # Poisson: a step may draw no case
    assert abs(empty - (1 - q) ** n) < _hoeffding(steps)
    pairs = float((drawn[:, 0] * drawn[:, 1]).mean())  # independent cases: P(both) = q^2
    assert abs(pairs - q * q) < _hoeffding(steps)


def test_the_loader_draws_cases_with_the_sampler_at_the_rate(dp_site):
    cases = load_datalist(dp_site).training
    loader = build_case_loader(cases, TINY16, 3, 1, seed=0, generator=torch.Generator().manual_seed(1))
    q = sample_rate(cases_per_step(TINY16), len(cases))
    assert isinstance(loader.batch_sampler, UniformWithReplacementSampler)
    assert loader.batch_sampler.sample_rate == q == 2 / 6
    drawn = _draws(loader.batch_sampler, passes=4000)  # the loader's own sampler, indices only
    assert abs(float(drawn.mean()) - q) < _hoeffding(drawn.numel())
    k = crops_per_volume(TINY16)
    for batch in loader:  # one pass, with transforms: k crops per drawn case
        assert batch["image"].shape[0] % k == 0 and batch["image"].shape[1:] == (1, 16, 16, 16)
        assert batch["label"].shape == (batch["image"].shape[0], 1, 16, 16, 16)
    empty = loader.collate_fn([])
    assert empty["image"].shape == (0, 1, 16, 16, 16) and empty["label"].shape == (0, 1, 16, 16, 16)
