"""MONAI dictionary transforms and data loaders for training and evaluation.

The deterministic part (load, channel first, reorient to RAS, resample to the preset spacing,
normalise intensities) is shared by training and evaluation and is cached by MONAI's
``CacheDataset``; training then draws ``num_samples`` random crops per volume (a ``pos_fraction``
share centred on foreground voxels), flips them on all three axes and jitters intensities a
little. Left/right (and the other) flips assume that mirrored anatomy is an acceptable training
sample, which holds for the synthetic data and for most single-organ tasks; tasks whose labels are
side-specific (left vs. right kidney) should not use them.

Items are dicts ``{"image": (C, X, Y, Z) float32, "label": (1, X, Y, Z) float32 holding class
ids}``. Training batches are plain tensors; evaluation items keep MONAI ``MetaTensor`` metadata
(affine, spacing) so that :func:`case_spacing` and inverse transforms work.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropSamplesd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from fedsegnet.config import INTENSITY_MODES, Preset
from fedsegnet.data.preflight import check_voxel_bound
from fedsegnet.data.weak import box_masks, read_boxes, tag_vector
from fedsegnet.errors import ConfigError
from fedsegnet.notices import quiet_gpu_codec_notice

logger = logging.getLogger(__name__)

KEYS = ("image", "label")
_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel's RAS+ world convention
MAX_CACHE_WORKERS = 2
"""Threads used to fill a cache (the reference CPU machine has 2 cores)."""


def _intensity(preset: Preset):
    mode = preset.intensity
    if mode == "zscore":
        return NormalizeIntensityd(keys="image", nonzero=False, channel_wise=True)
    if mode == "zscore_nonzero":
        return NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)
    if mode == "minmax":
        return ScaleIntensityd(keys="image", minv=0.0, maxv=1.0, channel_wise=True)
    if mode == "ct_window":
        low, high = (float(v) for v in preset.intensity_range)
        if not high > low:
            raise ConfigError("intensity_range", preset.intensity_range, "must be (low, high) HU with high > low")
        return ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    raise ConfigError("intensity", mode, "unknown intensity normalisation", options=INTENSITY_MODES)


class WeakLabeld(MapTransform):
    """Turn a case's weaker label into tensors that the spatial transforms move with the image.

    A case with ``"boxes"`` (a box JSON path) gets ``"label"``: ``(C - 1, X, Y, Z)`` binary box
    channels on the image's stored grid, then ``C - 1`` channels of the boxes' cores
    (:func:`fedsegnet.data.weak.box_masks`); a case with
    ``"tags"`` gets ``"tags"``: a ``(C - 1,)`` float presence vector and an all-zero
    ``(1, X, Y, Z)`` ``"label"`` (nothing is known voxel-wise). Other cases pass unchanged. Apply
    right after loading (before reorientation and resampling), with the image already channel-first.

    Args:
        label_map: the site's :class:`~fedsegnet.data.labels.LabelMap` (label value -> class id,
            and the site's label names that box files and tags use).
        box_core: also render each box's core (see :func:`fedsegnet.data.weak.box_masks`) as
            ``C - 1`` more channels. Defaults to 0.5.
    """

    def __init__(self, label_map, box_core: float = 0.5):
        super().__init__(keys=["label"], allow_missing_keys=True)
        self.label_map = label_map
        self.box_core = float(box_core)
        self.labels = label_map.labels
        self.class_of_value = label_map.class_of

    def __call__(self, data):
        d = dict(data)
        image = d["image"]
        shape = tuple(image.shape[1:])
        if "boxes" in d and "label" not in d:
            coordinates, boxes, problems = read_boxes(d["boxes"], self.labels)
            if problems:
                raise ConfigError("boxes", d["boxes"], "; ".join(problems))
            mask = box_masks(boxes, coordinates, shape, np.asarray(image.affine), self.class_of_value,
                             self.label_map.num_classes, core=self.box_core)  # fmt: skip
            d["label"] = self._like(image, torch.from_numpy(mask.astype(np.float32)))
        elif "tags" in d and "label" not in d:
            d["tags"] = torch.from_numpy(tag_vector(d["tags"], self.labels, self.class_of_value, self.label_map.num_classes))
            d["label"] = self._like(image, torch.zeros((1, *shape)))
        return d

    @staticmethod
    def _like(image, values: torch.Tensor) -> MetaTensor:
        """``values`` as a MetaTensor on the image's grid (same affine and metadata)."""
        meta = {k: v for k, v in image.meta.items() if k != "affine"}
        return MetaTensor(values, affine=image.affine.clone(), meta=meta)


quiet_gpu_codec_notice()  # MONAI's notice that pydicom's optional GPU decoder is missing (fedsegnet.notices)


class ThreadLocalLoadImaged(MapTransform):
    """MONAI's ``LoadImaged`` with one loader per thread.

    MONAI's image readers keep the file names of their last ``read()`` on the reader
    (``NibabelReader.filenames``) and pair them with the images in ``get_data()``. Two threads of a
    ``CacheDataset`` sharing one ``LoadImaged`` can therefore mix two cases: a four-file image
    (one file per MRI sequence) read while another thread reads a one-file label comes back with one
    channel. Each thread here gets its own ``LoadImaged`` (built on first use), so no reader is
    shared between threads.

    Args:
        **kwargs: ``LoadImaged``'s arguments (``keys`` required).
    """

    def __init__(self, **kwargs):
        super().__init__(kwargs["keys"], kwargs.get("allow_missing_keys", False))
        self._kwargs = dict(kwargs)
        self._local = threading.local()

    def __call__(self, data):
        loader = getattr(self._local, "loader", None)
        if loader is None:
            loader = self._local.loader = LoadImaged(**self._kwargs)
        return loader(data)

    def __getstate__(self) -> dict:  # a DataLoader worker process gets a copy without the thread-local loaders
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def _deterministic(preset: Preset, label_map=None) -> list:
    mapping = label_map.transform() if label_map is not None else None
    weak = [WeakLabeld(label_map)] if label_map is not None else []
    return [
        ThreadLocalLoadImaged(keys=list(KEYS), image_only=True, dtype=np.float32, allow_missing_keys=True),
        EnsureChannelFirstd(keys=list(KEYS), allow_missing_keys=True),
        *([mapping] if mapping is not None else []),
        *weak,
        Orientationd(keys=list(KEYS), axcodes="RAS", labels=_AXIS_LABELS, allow_missing_keys=True),
        Spacingd(keys=list(KEYS), pixdim=tuple(preset.spacing), mode=("bilinear", "nearest"), allow_missing_keys=True),
        _intensity(preset),
    ]


def _check_preset(preset: Preset):
    if not isinstance(preset, Preset):
        raise ConfigError("preset", preset, "expected a fedsegnet.config.Preset")
    if len(tuple(preset.patch_size)) != 3 or any(int(p) < 1 for p in preset.patch_size):
        raise ConfigError("patch_size", preset.patch_size, "must be 3 positive ints")
    if not 0.0 <= float(preset.pos_fraction) <= 1.0:
        raise ConfigError("pos_fraction", preset.pos_fraction, "must be in [0, 1]")
    if int(preset.num_samples) < 1:
        raise ConfigError("num_samples", preset.num_samples, "must be >= 1")
    if int(preset.batch_size) < 1:
        raise ConfigError("batch_size", preset.batch_size, "must be >= 1")
    if not 0.0 <= float(preset.cache_rate) <= 1.0:
        raise ConfigError("cache_rate", preset.cache_rate, "must be in [0, 1]")
    if int(preset.num_workers) < 0:
        raise ConfigError("num_workers", preset.num_workers, "must be >= 0")


def crops_per_volume(preset: Preset) -> int:
    """Crops drawn from one loaded volume: ``min(num_samples, batch_size)``.

    Args:
        preset: the run's preset.

    Returns:
        The number of crops per volume; ``batch_size`` is a multiple of it.

    Raises:
        ConfigError: (field ``batch_size``) when ``batch_size`` is not a multiple of it.
    """
    k = min(int(preset.num_samples), int(preset.batch_size))
    if int(preset.batch_size) % k:
        raise ConfigError("batch_size", preset.batch_size, f"must be a multiple of num_samples={preset.num_samples}")
    return k


def train_transforms(preset: Preset, num_classes: int, label_map=None) -> Compose:
    """Training transforms: deterministic preprocessing, then random crops, flips and jitter.

    Load (NIfTI, channels first), reorient to RAS, resample to ``preset.spacing`` (bilinear image,
    nearest label), normalise intensities (``preset.intensity``), pad to at least
    ``preset.patch_size``; then ``RandCropByPosNegLabeld`` (``crops_per_volume(preset)`` crops,
    a ``pos_fraction`` share centred on foreground; uniform ``RandSpatialCropSamplesd`` crops when
    ``pos_fraction`` is 0, e.g. for tag sites that know no foreground voxel), flips on each axis (p=0.5 each), intensity
    scale/shift jitter (+-10 %, p=0.5 each) and conversion to plain float32 tensors.

    Args:
        preset: the run's preset.
        num_classes: classes including background, >= 2 (checked; crops centre on any label > 0).
        label_map: a :class:`~fedsegnet.data.labels.LabelMap` turning the site's label values into
            class ids right after loading; cases carrying ``boxes`` or ``tags`` get their weak
            labels rendered (:class:`WeakLabeld`). Defaults to None (the files hold class ids).

    Returns:
        A MONAI ``Compose``; apply :meth:`set_random_state` for reproducible crops.

    Raises:
        ConfigError: naming the bad preset field or ``num_classes``.
    """
    _check_preset(preset)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ConfigError("num_classes", num_classes, "must be an int >= 2 (background + at least one class)")
    patch = tuple(int(p) for p in preset.patch_size)
    pos = float(preset.pos_fraction)
    return Compose(
        _deterministic(preset, label_map)
        + [
            SpatialPadd(keys=list(KEYS), spatial_size=patch),
            EnsureTyped(keys=list(KEYS), dtype=torch.float32),
            RandCropByPosNegLabeld(
                keys=list(KEYS),
                label_key="label",
                spatial_size=patch,
                pos=pos,
                neg=1.0 - pos,
                num_samples=crops_per_volume(preset),
            )
            if pos > 0
            else RandSpatialCropSamplesd(keys=list(KEYS), roi_size=patch, num_samples=crops_per_volume(preset), random_size=False),
            RandFlipd(keys=list(KEYS), prob=0.5, spatial_axis=0),
            RandFlipd(keys=list(KEYS), prob=0.5, spatial_axis=1),
            RandFlipd(keys=list(KEYS), prob=0.5, spatial_axis=2),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            EnsureTyped(keys=list(KEYS), dtype=torch.float32, track_meta=False),
        ]
    )


def eval_transforms(preset: Preset, label_map=None) -> Compose:
    """Deterministic transforms for evaluation and inference (no crop, no padding).

    Load, channels first, reorient to RAS, resample to ``preset.spacing``, normalise. ``label`` is
    optional (missing keys are allowed, so the same transforms serve inference on unlabelled
    images). Outputs keep MONAI metadata (``MetaTensor``: affine, pixdim) and are invertible.

    Args:
        preset: the run's preset.
        label_map: maps the site's label values to class ids after loading and renders weak
            labels (see :func:`train_transforms`). Defaults to None.

    Returns:
        A MONAI ``Compose``.

    Raises:
        ConfigError: naming the bad preset field.
    """
    _check_preset(preset)
    final = EnsureTyped(keys=list(KEYS), dtype=torch.float32, allow_missing_keys=True)
    return Compose(_deterministic(preset, label_map) + [final])


def estimate_case_bytes(case: dict, preset: Preset) -> int:
    """Estimate the cached size of one case after resampling, from NIfTI headers only.

    Args:
        case: ``{"image": path | list[path], "label": path}``.
        preset: the run's preset (target spacing).

    Returns:
        Bytes of the float32 image plus the float32 label after resampling (0 if unreadable).
    """
    paths = case["image"] if isinstance(case["image"], (list, tuple)) else [case["image"]]
    try:
        channels = 0
        voxels = 0.0
        for p in paths:
            hdr = nib.load(str(p)).header
            shape = hdr.get_data_shape()
            channels += int(np.prod(shape[3:])) if len(shape) > 3 else 1
            if not voxels:  # all channel files share the grid (preflight checks it)
                zooms = hdr.get_zooms()[:3]
                voxels = float(np.prod([s * z / t for s, z, t in zip(shape[:3], zooms, preset.spacing)]))
    except Exception:  # unreadable files are preflight's business
        return 0
    return int(voxels * (channels + 1) * 4)


def _available_bytes() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def safe_cache_rate(cases: Sequence[dict], preset: Preset, max_cache_bytes: int | None = None) -> float:
    """Lower ``preset.cache_rate`` so that the cache fits in memory.

    Args:
        cases: the cases to cache.
        preset: the run's preset.
        max_cache_bytes: cache budget in bytes. Defaults to None (half the available memory).

    Returns:
        ``preset.cache_rate`` or a smaller share (logged at WARNING) that fits the budget.
    """
    rate = float(preset.cache_rate)
    if rate == 0.0 or not cases:
        return rate
    budget = int(max_cache_bytes) if max_cache_bytes is not None else _available_bytes() // 2
    sample = list(cases)[: min(len(cases), 8)]
    per_case = float(np.mean([estimate_case_bytes(c, preset) for c in sample]))
    need = per_case * len(cases) * rate
    if need <= budget or per_case <= 0:
        return rate
    fitted = math.floor(budget / per_case) / len(cases)
    logger.warning(
        "cache of %d cases needs ~%.1f GiB, budget %.1f GiB: cache_rate %.2f -> %.2f",
        len(cases), need / 2**30, budget / 2**30, rate, fitted,
    )
    return max(0.0, min(rate, fitted))


def check_case_headers(cases: Sequence[dict]) -> None:
    """Refuse a case whose image or label header declares more voxels than
    :data:`fedsegnet.data.preflight.MAX_VOXELS`, before MONAI reads any voxel data.

    Files that do not open are left to preflight (and to the loader's own error).

    Raises:
        FedSegNetError: naming the file and the declared shape.
    """
    for case in cases:
        for key in KEYS:
            value = case.get(key)
            for path in value if isinstance(value, (list, tuple)) else [value]:
                if not isinstance(path, (str, os.PathLike)):
                    continue
                try:
                    shape = nib.load(str(path)).shape
                except Exception:  # unreadable: preflight's business
                    continue
                check_voxel_bound(path, shape)


def _dataset(cases: Sequence[dict], transform: Compose, preset: Preset, cache: bool, max_cache_bytes) -> Dataset:
    data = [dict(c) for c in cases]  # never hand the caller's dicts to MONAI
    check_case_headers(data)
    rate = safe_cache_rate(data, preset, max_cache_bytes) if cache else 0.0
    if rate > 0.0:
        return CacheDataset(
            data=data,
            transform=transform,
            cache_rate=rate,
            num_workers=max(1, min(MAX_CACHE_WORKERS, os.cpu_count() or 1)),
            progress=False,
        )
    return Dataset(data=data, transform=transform)


def build_train_loader(
    cases: Sequence[dict],
    preset: Preset,
    num_classes: int,
    *,
    seed: int,
    cache: bool = True,
    max_cache_bytes: int | None = None,
    label_map=None,
) -> DataLoader:
    """Training loader: shuffled volumes, ``crops_per_volume`` random crops each, batched.

    The DataLoader batches ``batch_size // crops_per_volume`` volumes; MONAI's
    ``list_data_collate`` flattens their crops, so each batch holds ``preset.batch_size`` crops
    (the last, smaller batch is dropped when there are enough volumes).

    Args:
        cases: ``{"image", "label"}`` dicts with absolute paths (e.g. ``SiteDatalist.training``;
            not modified).
        preset: the run's preset (patch size, spacing, intensity, batch, crops, cache, workers).
        num_classes: classes including background, >= 2.
        seed: seed of the shuffling and of every random transform.
        cache: cache the deterministic part with ``CacheDataset`` (``preset.cache_rate``, capped
            to fit memory). Defaults to True.
        max_cache_bytes: cache budget. Defaults to None (half the available memory).
        label_map: maps the site's label values to class ids and renders box/tag cases
            (:class:`WeakLabeld`). Defaults to None (identity).

    Returns:
        A MONAI ``DataLoader`` yielding ``{"image": (B, C, *patch) float32, "label": (B, 1, *patch)
        float32}`` with ``B = preset.batch_size``.

    Raises:
        ConfigError: for an empty case list or a bad preset field.
    """
    if not cases:
        raise ConfigError("cases", list(cases), "no training cases")
    transform = train_transforms(preset, num_classes, label_map)
    transform.set_random_state(seed=int(seed) % (2**32))
    ds = _dataset(cases, transform, preset, cache, max_cache_bytes)
    volumes = int(preset.batch_size) // crops_per_volume(preset)
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        ds,
        batch_size=volumes,
        shuffle=True,
        drop_last=len(ds) >= volumes,
        num_workers=int(preset.num_workers),
        generator=generator,
        persistent_workers=int(preset.num_workers) > 0,
    )


def build_eval_dataset(
    cases: Sequence[dict],
    preset: Preset,
    *,
    cache: bool = True,
    max_cache_bytes: int | None = None,
    label_map=None,
) -> Dataset:
    """Evaluation dataset: whole volumes after the deterministic transforms.

    Args:
        cases: ``{"image", "label"}`` dicts (``label`` optional for inference; not modified).
        preset: the run's preset (spacing, intensity, cache_rate).
        cache: cache items with ``CacheDataset`` (``preset.cache_rate``, capped to fit memory).
            Defaults to True.
        max_cache_bytes: cache budget. Defaults to None (half the available memory).
        label_map: maps the site's label values to class ids. Defaults to None (identity).

    Returns:
        A dataset whose items are ``{"image": (C, X, Y, Z) MetaTensor, "label": (1, X, Y, Z)
        MetaTensor, ...}``; see :func:`case_spacing`.

    Raises:
        ConfigError: for a bad preset field.
    """
    return _dataset(cases, eval_transforms(preset, label_map), preset, cache, max_cache_bytes)


def case_spacing(item: dict) -> tuple[float, float, float]:
    """Voxel spacing in mm of an evaluation item (from the image's affine).

    Args:
        item: a dict from :func:`build_eval_dataset` (``item["image"]`` a ``MetaTensor``), or one
            with an ``image_meta_dict`` holding an ``affine``.

    Returns:
        ``(sx, sy, sz)`` in mm.

    Raises:
        ConfigError: when the item carries no affine.
    """
    image = item.get("image") if isinstance(item, dict) else None
    affine = getattr(image, "affine", None)
    if affine is None and isinstance(item, dict):
        affine = (item.get("image_meta_dict") or {}).get("affine")
    if affine is None:
        raise ConfigError(
            "item", type(image).__name__, "no affine: expected a MetaTensor image from build_eval_dataset"
        )
    a = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if a.ndim == 3:  # batched affine (B, 4, 4): take the first
        a = a[0]
    return tuple(float(v) for v in np.sqrt((a[:3, :3] ** 2).sum(axis=0)))


def infinite_batches(loader: Iterable) -> Iterator:
    """Cycle over a loader forever (training asks for N steps, whatever the dataset size).

    Args:
        loader: any re-iterable loader (a new epoch, hence a new shuffle, per pass).

    Yields:
        The loader's batches, epoch after epoch.

    Raises:
        ConfigError: (field ``loader``) when an epoch yields no batch (empty dataset).
    """
    while True:
        count = 0
        for batch in loader:
            count += 1
            yield batch
        if count == 0:
            raise ConfigError("loader", type(loader).__name__, "yields no batches (no cases?)")
