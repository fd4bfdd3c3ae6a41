"""Patient-level Poisson sampling: each step draws *cases*, each case independently at rate q.

The accountant assumes Poisson subsampling of the privacy units: at every step each of the site's
``n_cases`` training cases is in the batch with probability ``q``, independently of the others and
of earlier steps, so the batch size varies (and may be 0). The rate is

    q = min(1, cases_per_step / n_cases),   cases_per_step = preset.batch_size // crops_per_volume(preset)

i.e. the number of volumes the non-private loader takes per step, now only in expectation. The
draw is Opacus's ``UniformWithReplacementSampler`` (what Opacus's ``DPDataLoader`` uses); a sampled
case gives its ``crops_per_volume(preset)`` random crops, all of which belong to that case's one
clipped gradient (:class:`fedsegnet.privacy.PrivateTraining`).
"""

from __future__ import annotations

import logging
import math
import secrets

import torch
from monai.data import DataLoader, list_data_collate
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from fedsegnet.config import Preset
from fedsegnet.data.transforms import build_train_loader, crops_per_volume
from fedsegnet.errors import ConfigError, check_int
from fedsegnet.privacy.accountant import check_rate

logger = logging.getLogger(__name__)

__all__ = ["sample_rate", "cases_per_step", "secret_generator", "case_sampler", "build_case_loader"]


def cases_per_step(preset: Preset) -> int:
    """Volumes per step of the non-private loader: ``batch_size // crops_per_volume(preset)``."""
    return int(preset.batch_size) // crops_per_volume(preset)


def sample_rate(expected_cases: float, n_cases: int) -> float:
    """The Poisson rate the sampler draws and the accountant composes: ``min(1, expected_cases / n_cases)``.

    Args:
        expected_cases: cases wanted per step on average, > 0 (:func:`cases_per_step`).
        n_cases: the site's training cases, >= 1.

    Returns:
        q in (0, 1].

    Raises:
        ConfigError: naming the bad argument.
    """
    n = check_int("n_cases", n_cases, 1)
    ok = not isinstance(expected_cases, bool) and isinstance(expected_cases, (int, float))
    if not ok or not (expected_cases > 0 and math.isfinite(expected_cases)):
        raise ConfigError("expected_cases", expected_cases, "must be a finite number > 0")
    return min(1.0, float(expected_cases) / n)


def secret_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded from the operating system's entropy (``secrets``), never from the
    job seed: whoever knows the seed could repeat the draws (which cases, what noise).

    Args:
        device: the generator's device. Defaults to ``"cpu"``.

    Returns:
        The generator.
    """
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def case_sampler(n_cases: int, rate: float, *, generator: torch.Generator | None = None, steps: int | None = None) -> UniformWithReplacementSampler:
    """Opacus's Poisson sampler over case indices: each yield is the list of sampled cases.

    Args:
        n_cases: the site's training cases, >= 1.
        rate: q, in (0, 1] (:func:`sample_rate`).
        generator: source of the draws. Defaults to None (:func:`secret_generator`).
        steps: draws per pass. Defaults to None (Opacus's ``int(1 / rate)``: one expected epoch).

    Returns:
        The sampler (a batch sampler for a ``DataLoader``).

    Raises:
        ConfigError: naming the bad argument.
    """
    n = check_int("n_cases", n_cases, 1)
    steps = None if steps is None else check_int("steps", steps, 1)
    return UniformWithReplacementSampler(
        num_samples=n, sample_rate=check_rate(rate), generator=generator or secret_generator(), steps=steps
    )


class _CaseCollate:
    """``list_data_collate`` of the sampled cases' crops (case after case, ``k`` crops each); an
    empty draw gives ``(0, C, *patch)`` image and ``(0, 1, *patch)`` label tensors."""

    def __init__(self, in_channels: int, patch_size):
        self.empty = {
            "image": torch.zeros((0, in_channels, *patch_size)),
            "label": torch.zeros((0, 1, *patch_size)),
        }

    def __call__(self, items: list) -> dict:
        if not items:
            return {k: v.clone() for k, v in self.empty.items()}
        return list_data_collate(items)


def build_case_loader(
    cases: list[dict],
    preset: Preset,
    num_classes: int,
    in_channels: int,
    *,
    seed: int,
    generator: torch.Generator | None = None,
    cache: bool = True,
    max_cache_bytes: int | None = None,
    label_map=None,
) -> DataLoader:
    """The DP training loader: Poisson-sampled cases (:func:`case_sampler` at :func:`sample_rate`),
    each with its ``crops_per_volume(preset)`` random crops.

    The dataset and transforms are those of :func:`fedsegnet.data.transforms.build_train_loader`
    (same preprocessing, crops, flips and jitter); only the choice of cases per step changes.

    Args:
        cases: the site's training cases (``SiteDatalist.training``; not modified).
        preset: the run's preset.
        num_classes: classes including background, >= 2.
        in_channels: image channels (the shape of an empty batch), >= 1.
        seed: seed of the random transforms (crop positions, flips): the job's site seed.
        generator: source of the case draws. Defaults to None (:func:`secret_generator`).
        cache: cache the deterministic transforms. Defaults to True.
        max_cache_bytes: cache budget. Defaults to None (half the available memory).
        label_map: the site's label map. Defaults to None (identity).

    Returns:
        A ``DataLoader`` whose ``batch_sampler`` is the Poisson sampler and whose batches are
        ``{"image": (n * k, C, *patch), "label": (n * k, 1, *patch)}`` for the ``n`` sampled cases
        (``n`` varies, may be 0), case after case, ``k = crops_per_volume(preset)``. One pass is
        ``int(1 / q)`` steps; cycle it (``infinite_batches``) for more.

    Raises:
        ConfigError: for an empty case list, a bad preset field or argument.
    """
    plain = build_train_loader(
        cases, preset, num_classes, seed=seed, cache=cache, max_cache_bytes=max_cache_bytes, label_map=label_map
    )
    rate = sample_rate(cases_per_step(preset), len(cases))
    in_channels = check_int("in_channels", in_channels, 1)
    return DataLoader(
        plain.dataset,
        batch_sampler=case_sampler(len(cases), rate, generator=generator),
        collate_fn=_CaseCollate(in_channels, tuple(int(p) for p in preset.patch_size)),
        num_workers=plain.num_workers,
        persistent_workers=plain.persistent_workers,
    )
