"""MONAI transforms and loaders: shapes, seeds, orientation invariance, intensity modes, bad args."""

import dataclasses

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from fedsegnet.config import Preset
from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.transforms import (
    build_eval_dataset,
    build_train_loader,
    case_spacing,
    crops_per_volume,
    eval_transforms,
    infinite_batches,
    safe_cache_rate,
    train_transforms,
)
from fedsegnet.errors import ConfigError

PRESET = Preset(name="test", network="unet", patch_size=(16, 16, 16), batch_size=2, num_samples=2)


def _cases(root, site="site-1", split="training"):
    return getattr(load_datalist(root / site), split)


@pytest.mark.parametrize("batch_size, num_samples", [(2, 2), (4, 2), (2, 4)])
def test_train_loader_shapes_and_labels(small_synth, batch_size, num_samples):
    preset = dataclasses.replace(PRESET, batch_size=batch_size, num_samples=num_samples)
    loader = build_train_loader(_cases(small_synth), preset, 3, seed=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (batch_size, 1, 16, 16, 16)
    assert batch["label"].shape == (batch_size, 1, 16, 16, 16)
    assert batch["image"].dtype == torch.float32 and batch["label"].dtype == torch.float32
    assert not isinstance(batch["image"], MetaTensor)  # plain tensors for the training loop
    assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0, 2.0}
    assert torch.isfinite(batch["image"]).all()


def test_train_loader_multichannel(tmp_path):
    from fedsegnet.data.synth import synthesize

    synthesize(tmp_path, sites=1, cases=2, size=24, seed=0, test_cases=0, channels=2, val_fraction=0.0)
    batch = next(iter(build_train_loader(_cases(tmp_path), PRESET, 3, seed=0, cache=False)))
    assert batch["image"].shape == (2, 2, 16, 16, 16) and batch["label"].shape == (2, 1, 16, 16, 16)


def test_train_loader_is_seeded(small_synth):
    def first(seed):
        return next(iter(build_train_loader(_cases(small_synth), PRESET, 3, seed=seed)))

    a, b, c = first(5), first(5), first(6)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])


def test_train_crops_centre_on_foreground(small_synth):
    preset = dataclasses.replace(PRESET, pos_fraction=1.0)
    loader = build_train_loader(_cases(small_synth), preset, 3, seed=0)
    for batch, _ in zip(infinite_batches(loader), range(3)):
        assert all((lab > 0).any() for lab in batch["label"])


def test_train_loader_does_not_mutate_cases(small_synth):
    cases = _cases(small_synth)
    before = [dict(c) for c in cases]
    next(iter(build_train_loader(cases, PRESET, 3, seed=0)))
    assert cases == before


def test_small_volume_is_padded(small_synth):
    preset = dataclasses.replace(PRESET, patch_size=(32, 32, 32))  # volumes are 24^3
    batch = next(iter(build_train_loader(_cases(small_synth), preset, 3, seed=0, cache=False)))
    assert batch["image"].shape == (2, 1, 32, 32, 32)


def test_eval_dataset_items_and_spacing(small_synth):
    ds = build_eval_dataset(_cases(small_synth, "test", "validation"), PRESET)
    assert len(ds) == 2
    item = ds[0]
    assert isinstance(item["image"], MetaTensor)
    assert item["image"].shape == (1, 24, 24, 24) and item["label"].shape == (1, 24, 24, 24)
    assert case_spacing(item) == pytest.approx((1.5, 1.5, 1.5))
    assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0, 2.0}


def test_eval_resamples_to_preset_spacing(small_synth):
    preset = dataclasses.replace(PRESET, spacing=(3.0, 3.0, 3.0))
    item = build_eval_dataset(_cases(small_synth), preset, cache=False)[0]
    assert item["image"].shape == (1, 12, 12, 12) and item["label"].shape == (1, 12, 12, 12)
    assert case_spacing(item) == pytest.approx((3.0, 3.0, 3.0))
    assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0, 2.0}  # nearest for labels


def test_eval_without_label_for_inference(small_synth):
    case = {"image": _cases(small_synth)[0]["image"]}
    item = eval_transforms(PRESET)(case)
    assert item["image"].shape == (1, 24, 24, 24) and "label" not in item


def test_case_spacing_errors():
    with pytest.raises(ConfigError) as err:
        case_spacing({"image": torch.zeros(1, 4, 4, 4)})
    assert err.value.field == "item"
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    assert case_spacing({"image": torch.zeros(1), "image_meta_dict": {"affine": affine}}) == (2.0, 2.0, 3.0)


def test_lps_site_gives_same_arrays_as_ras(small_synth, small_synth_lps):
    ras_cases, lps_cases = _cases(small_synth, "site-2"), _cases(small_synth_lps, "site-2")
    for ras, lps in zip(build_eval_dataset(ras_cases, PRESET), build_eval_dataset(lps_cases, PRESET)):
        np.testing.assert_allclose(ras["image"].numpy(), lps["image"].numpy(), atol=1e-5)
        np.testing.assert_array_equal(ras["label"].numpy(), lps["label"].numpy())
        np.testing.assert_allclose(ras["image"].affine.numpy(), lps["image"].affine.numpy(), atol=1e-5)
    # and the same training crops for the same seed
    a = next(iter(build_train_loader(ras_cases, PRESET, 3, seed=3)))
    b = next(iter(build_train_loader(lps_cases, PRESET, 3, seed=3)))
    np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(a["label"].numpy(), b["label"].numpy())


@pytest.mark.parametrize("mode", ["zscore", "zscore_nonzero", "minmax"])
def test_intensity_modes(small_synth, mode):
    item = eval_transforms(dataclasses.replace(PRESET, intensity=mode))(_cases(small_synth)[0])
    x = item["image"].numpy()
    if mode == "zscore":
        assert abs(x.mean()) < 1e-3 and abs(x.std() - 1) < 1e-3
    elif mode == "minmax":
        assert x.min() == pytest.approx(0.0) and x.max() == pytest.approx(1.0)
    else:
        nz = x[x != 0]
        assert abs(nz.mean()) < 1e-2 and abs(nz.std() - 1) < 1e-2


def test_ct_window_clips_hounsfield_units_to_0_1(tmp_path):
    from .conftest import save_nifti

    hu = np.linspace(-1000, 1000, 16 ** 3, dtype=np.float32).reshape(16, 16, 16)
    path = save_nifti(tmp_path / "ct.nii.gz", hu, np.eye(4))
    preset = dataclasses.replace(PRESET, intensity="ct_window", intensity_range=(-175.0, 250.0), spacing=(1.0, 1.0, 1.0))
    x = eval_transforms(preset)({"image": str(path)})["image"].numpy()[0]
    assert x.min() == 0.0 and x.max() == 1.0
    inside = (hu > -175) & (hu < 250)
    np.testing.assert_allclose(x[inside], (hu[inside] + 175) / 425, atol=1e-5)
    with pytest.raises(ConfigError) as err:
        eval_transforms(dataclasses.replace(preset, intensity_range=(250.0, -175.0)))
    assert err.value.field == "intensity_range"


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"intensity": "histogram"}, "intensity"),
        ({"pos_fraction": 1.5}, "pos_fraction"),
        ({"num_samples": 0}, "num_samples"),
        ({"batch_size": 3, "num_samples": 2}, "batch_size"),
        ({"cache_rate": 2.0}, "cache_rate"),
        ({"patch_size": (16, 16)}, "patch_size"),
    ],
)
def test_bad_preset_fields(changes, field):
    with pytest.raises(ConfigError) as err:
        train_transforms(dataclasses.replace(PRESET, **changes), 3)
    assert err.value.field == field


def test_bad_num_classes_and_empty_cases(small_synth):
    for bad in (1, 2.5, True):
        with pytest.raises(ConfigError) as err:
            train_transforms(PRESET, bad)
        assert err.value.field == "num_classes"
    with pytest.raises(ConfigError) as err:
        build_train_loader([], PRESET, 3, seed=0)
    assert err.value.field == "cases"


def test_crops_per_volume():
    assert crops_per_volume(dataclasses.replace(PRESET, batch_size=4, num_samples=4)) == 4
    assert crops_per_volume(dataclasses.replace(PRESET, batch_size=2, num_samples=4)) == 2


def test_infinite_batches_cycles(small_synth):
    loader = build_train_loader(_cases(small_synth), PRESET, 3, seed=0)  # 2 volumes -> 2 batches/epoch
    assert len(loader) == 2
    batches = [b for b, _ in zip(infinite_batches(loader), range(5))]
    assert len(batches) == 5
    with pytest.raises(ConfigError) as err:
        next(infinite_batches([]))
    assert err.value.field == "loader"


def test_safe_cache_rate(small_synth, caplog):
    cases = _cases(small_synth)
    assert safe_cache_rate(cases, PRESET) == 1.0
    per_case = 24**3 * 2 * 4
    assert safe_cache_rate(cases, PRESET, max_cache_bytes=per_case) == pytest.approx(0.5)
    assert safe_cache_rate(cases, PRESET, max_cache_bytes=0) == 0.0
    assert "cache_rate" in caplog.text


def _race_loads(tmp_path, loader, monkeypatch):
    """Load a four-file image and a one-file image in two threads that share ``loader``, with both
    reads done before either ``get_data`` (the interleaving a CacheDataset's threads can hit)."""
    import threading

    import nibabel as nib
    from monai.data.image_reader import NibabelReader

    files = []
    for k in range(5):
        path = tmp_path / f"seq{k}.nii.gz"
        nib.save(nib.Nifti1Image(np.full((6, 6, 6), float(k), np.float32), np.eye(4)), str(path))
        files.append(str(path))
    barrier = threading.Barrier(2, timeout=20)
    original = NibabelReader.get_data

    def get_data(self, img):
        barrier.wait()  # both threads have called read() on their reader
        return original(self, img)

    monkeypatch.setattr(NibabelReader, "get_data", get_data)
    out = {}

    def run(name, image):
        out[name] = loader({"image": image})["image"]

    threads = [threading.Thread(target=run, args=("four", files[:4])), threading.Thread(target=run, args=("one", files[4]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_a_shared_loadimaged_mixes_cases_across_threads_and_the_thread_local_one_does_not(tmp_path, monkeypatch):
    from monai.transforms import LoadImaged

    from fedsegnet.data.transforms import ThreadLocalLoadImaged

    (tmp_path / "shared").mkdir()
    shared = _race_loads(tmp_path / "shared", LoadImaged(keys=["image"], image_only=True), monkeypatch)
    # the race this guards against: MONAI's shared reader pairs the four images with the other thread's one file name
    assert tuple(shared["four"].shape) != (4, 6, 6, 6)
    (tmp_path / "local").mkdir()
    local = _race_loads(tmp_path / "local", ThreadLocalLoadImaged(keys=["image"], image_only=True), monkeypatch)
    assert tuple(local["four"].shape) == (4, 6, 6, 6)
    assert [float(local["four"][k].mean()) for k in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert tuple(local["one"].shape) == (6, 6, 6) and float(local["one"].mean()) == 4.0


def test_thread_local_loadimaged_pickles_without_its_loaders():
    import pickle

    from fedsegnet.data.transforms import ThreadLocalLoadImaged

    t = ThreadLocalLoadImaged(keys=["image"], image_only=True)
    t._local.loader = object()  # a loader built in this thread is not carried to a worker process
    copy = pickle.loads(pickle.dumps(t))
    assert getattr(copy._local, "loader", None) is None and copy.keys == ("image",)
