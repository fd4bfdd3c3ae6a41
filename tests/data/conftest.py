"""Fixtures of the data tests: small synthetic datasets and a hand-made site for preflight."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedsegnet.data.datalist import write_datalist
from fedsegnet.data.synth import synthesize

# One small configuration shared by the synth and transform tests (fast: 24^3, a few cases).
SMALL = dict(sites=2, cases=3, size=24, seed=0, test_cases=2)


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> Path:
    """``synthesize(**SMALL)`` output folder (read-only: do not modify in tests)."""
    root = tmp_path_factory.mktemp("small_synth")
    synthesize(root, **SMALL)
    return root


@pytest.fixture(scope="session")
def small_synth_lps(tmp_path_factory) -> Path:
    """Same as ``small_synth`` but site-2 stored in LPS orientation."""
    root = tmp_path_factory.mktemp("small_synth_lps")
    synthesize(root, orientation={"site-2": "LPS"}, **SMALL)
    return root


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` as NIfTI (default affine: 1.5 mm voxels, non-zero origin)."""
    if affine is None:
        affine = np.diag([1.5, 1.5, 1.5, 1.0])
        affine[:3, 3] = [-10.0, 5.0, 20.0]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def make_site(tmp_path):
    """Factory: a valid hand-made site with ``n`` cases of 12^3 voxels; returns its folder.

    ``make_site(n=2, channels=1, n_val=0)``; case ``i`` is ``imagesTr/case_{i:03d}.nii.gz`` and
    ``labelsTr/case_{i:03d}.nii.gz``; labels {0, 1, 2}.
    """

    def make(n: int = 2, channels: int = 1, n_val: int = 0, name: str = "site-x") -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(0)
        cases = []
        for i in range(n):
            shape = (12, 12, 12) if channels == 1 else (12, 12, 12, channels)
            image = rng.normal(size=shape).astype(np.float32)
            label = np.zeros((12, 12, 12), dtype=np.uint8)
            label[3:8, 3:8, 3:8] = 1
            label[4:6, 4:6, 4:6] = 2
            img = save_nifti(root / "imagesTr" / f"case_{i:03d}.nii.gz", image)
            lab = save_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", label)
            cases.append({"image": str(img), "label": str(lab)})
        write_datalist(
            root,
            labels={0: "background", 1: "organ", 2: "lesion"},
            modality={str(c): f"MR{c}" for c in range(channels)},
            training=cases[: n - n_val],
            validation=cases[n - n_val :],
        )
        return root

    return make
