"""Fixtures of the privacy tests: a small synthetic site and the tiny preset at 16^3 crops."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedsegnet.config import get_preset

TINY16 = dataclasses.replace(get_preset("tiny"), patch_size=(16, 16, 16), batch_size=4, num_samples=2, cache_rate=1.0)
"""The tiny preset (hybrid_unetr 8/16/32) at 16^3: 2 crops per case, 2 cases per step on average."""


@pytest.fixture(scope="session")
def dp_site(tmp_path_factory) -> Path:
    """One synthetic site of 6 training cases at 24^3 (read-only)."""
    from fedsegnet.data.synth import synthesize

    root = tmp_path_factory.mktemp("dp_site")
    synthesize(root, sites=1, cases=6, size=24, seed=0, test_cases=0, val_fraction=0.0)
    return root / "site-1"
