"""Typed settings built from job args: defaults and validation in one place.

A *preset* bundles what belongs together for one kind of run (network, patch size, spacing,
intensity normalisation, batch, optimiser, AMP). Job args pick a preset by name and may override a
few fields; :func:`build_train_config` validates the result and names the bad field on error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fedsegnet.errors import ConfigError, check_int, check_number

INTENSITY_MODES = ("zscore", "zscore_nonzero", "minmax", "ct_window")

# Class-name patterns (searched, case-insensitive, in the names a dataset.json gives its labels,
# "-" read as a space; see fedsegnet.data.labels). Each must single out one class.
_WORD = r"(^|[^a-z]){}([^a-z]|$)"
BRATS_CLASSES = (
    ("necrotic_core", r"necro|non ?enhanc|" + _WORD.format("(ncr|net)")),
    ("edema", r"edema|oedema|" + _WORD.format("ed")),
    ("enhancing", r"^(?!.*non ?enhanc).*(enhanc|" + _WORD.format("et") + ")"),
)
BRATS_REGIONS = {
    "whole_tumour": ("necrotic_core", "edema", "enhancing"),
    "tumour_core": ("necrotic_core", "enhancing"),
    "enhancing_tumour": ("enhancing",),
}
LITS_CLASSES = (
    ("liver", r"^(?!.*(tumou?r|cancer|lesion|metasta)).*liver"),
    ("tumour", r"tumou?r|cancer|lesion|metasta"),
)
ACDC_CLASSES = (
    ("right_ventricle", r"right ?.?ventricle|" + _WORD.format("rv")),
    ("myocardium", r"myo"),
    ("left_ventricle", r"left ?.?ventricle|" + _WORD.format("lv")),
)
SYNTHETIC_CLASSES = (("organ", r"organ"), ("lesion", r"lesion"))


@dataclass(frozen=True)
class Preset:
    """Settings that make one kind of run work.

    Args:
        name: preset name.
        network: network registry name (see :mod:`fedsegnet.networks`).
        network_kwargs: extra constructor arguments for the network.
        patch_size: training crop and sliding-window ROI, voxels (x, y, z).
        spacing: target voxel spacing in mm after resampling (x, y, z).
        intensity: normalisation: ``zscore`` (whole volume), ``zscore_nonzero`` (MRI brain-style,
            statistics over non-zero voxels, per channel), ``minmax`` (to [0, 1]) or ``ct_window``
            (CT: clip to ``intensity_range`` in HU, then scale to [0, 1]).
        batch_size: training crops per step.
        num_samples: crops drawn per loaded volume (MONAI ``RandCropByPosNegLabeld``).
        pos_fraction: share of crops centred on foreground.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        amp: mixed precision when CUDA is present (ignored on CPU).
        sw_batch_size: windows per forward pass in sliding-window inference.
        sw_overlap: sliding-window overlap in [0, 1).
        cache_rate: share of the training set cached after deterministic transforms.
        num_workers: DataLoader workers (0 = load in the main process).
        in_channels: image channels the model takes (job arg ``in_channels`` may change it unless
            the preset names its classes, i.e. is a dataset preset).
        num_classes: classes including background (as ``in_channels``; a dataset preset has
            ``len(classes) + 1``).
        classes: a dataset preset's foreground classes in model order, ``(name, pattern)``: each
            site's labels are matched by name (see :mod:`fedsegnet.data.labels`). Empty for a
            generic preset (a site's sorted label values are the class ids).
        regions: region name -> class names it unites, scored like classes (BraTS's whole tumour,
            tumour core, enhancing tumour).
        label_values: the value ``fedsegnet infer`` writes for each class id (BraTS: ``0, 1, 2, 4``).
            Empty = the class ids.
        intensity_range: HU window of ``ct_window``.
    """

    name: str
    network: str
    network_kwargs: dict = field(default_factory=dict)
    patch_size: tuple[int, int, int] = (32, 32, 32)
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    intensity: str = "zscore"
    batch_size: int = 2
    num_samples: int = 2
    pos_fraction: float = 0.67
    lr: float = 3e-3
    weight_decay: float = 1e-5
    amp: bool = True
    sw_batch_size: int = 4
    sw_overlap: float = 0.25
    cache_rate: float = 1.0
    num_workers: int = 0
    in_channels: int = 1
    num_classes: int = 3
    classes: tuple[tuple[str, str], ...] = ()
    regions: dict = field(default_factory=dict)
    label_values: tuple[int, ...] = ()
    intensity_range: tuple[float, float] = (-175.0, 250.0)

    @property
    def is_dataset(self) -> bool:
        """True for a dataset preset (it names its classes and fixes channels and classes)."""
        return bool(self.classes)


PRESETS: dict[str, Preset] = {
    # Unit and integration tests: a few seconds per round on one CPU core.
    "tiny": Preset(
        name="tiny",
        network="hybrid_unetr",
        network_kwargs={"channels": (8, 16, 32), "num_heads": 2, "num_layers": 1},
        patch_size=(32, 32, 32),
        batch_size=2,
        num_samples=2,
    ),
    # The demo and CPU experiments: compact hybrid Transformer U-Net at 32^3 crops.
    "cpu": Preset(
        name="cpu",
        network="hybrid_unetr",
        network_kwargs={"channels": (16, 32, 64), "num_heads": 4, "num_layers": 2},
        patch_size=(32, 32, 32),
        batch_size=4,
        num_samples=4,
    ),
    # GPU runs: MONAI SwinUNETR (the paper's Transformer U-Net) at 96^3 with AMP.
    # 96 is divisible by 32 (5 patch-merging stages) and large enough for instance norm.
    "gpu": Preset(
        name="gpu",
        network="swin_unetr",
        network_kwargs={"feature_size": 48},
        patch_size=(96, 96, 96),
        spacing=(1.0, 1.0, 1.0),
        batch_size=2,
        num_samples=2,
        lr=1e-4,
        sw_batch_size=4,
        sw_overlap=0.5,
        num_workers=4,
    ),
    "gpu_unetr": Preset(
        name="gpu_unetr",
        network="unetr",
        network_kwargs={"feature_size": 16, "hidden_size": 768},
        patch_size=(96, 96, 96),
        spacing=(1.0, 1.0, 1.0),
        batch_size=2,
        num_samples=2,
        lr=1e-4,
        sw_overlap=0.5,
        num_workers=4,
    ),
    # CNN baseline on CPU.
    "cpu_segresnet": Preset(
        name="cpu_segresnet",
        network="segresnet",
        network_kwargs={"init_filters": 8},
        patch_size=(32, 32, 32),
        batch_size=4,
        num_samples=4,
    ),
}


def _dataset_preset(base: str, name: str, classes, in_channels: int = 1, **changes) -> Preset:
    """A dataset preset: ``base``'s network and training settings, plus classes and channels
    (``num_classes`` follows from ``classes``)."""
    return dataclasses.replace(
        PRESETS[base], name=name, classes=classes, num_classes=len(classes) + 1, in_channels=in_channels, **changes
    )


# Dataset presets: they also fix channels, classes (matched by name at every site), regions and
# the intensity normalisation. Network and patch follow the GPU preset (SwinUNETR, 96^3, AMP); on a
# CPU override network/patch_size/spacing in the job args.
PRESETS.update(
    {
        # The synthetic sites (fedsegnet data synth): the CPU preset's settings, organ + lesion;
        # lesions lie inside the organ (as LiTS's tumours in the liver).
        "synthetic": _dataset_preset("cpu", "synthetic", SYNTHETIC_CLASSES, regions={"whole_organ": ("organ", "lesion")}),
        # BraTS / MSD Task01_BrainTumour: 4 MRI sequences (MSD order FLAIR, T1w, T1gd, T2w), 1 mm
        # isotropic, z-score over brain voxels; classes by name (BraTS 1/2/4, MSD 1 edema /
        # 2 non-enhancing / 3 enhancing both map); whole tumour, tumour core and enhancing tumour
        # scored; infer writes BraTS's 0/1/2/4.
        "brats": _dataset_preset("gpu", "brats", BRATS_CLASSES, in_channels=4, intensity="zscore_nonzero",
                                 regions=BRATS_REGIONS, label_values=(0, 1, 2, 4)),  # fmt: skip
        # LiTS / MSD Task03_Liver: CT, abdominal window -175..250 HU scaled to [0, 1], 1 mm
        # isotropic; liver (scored with the tumour inside it, as LiTS does) and tumour.
        "lits": _dataset_preset("gpu", "lits", LITS_CLASSES, intensity="ct_window", intensity_range=(-175.0, 250.0),
                                regions={"liver": ("liver", "tumour"), "tumour": ("tumour",)}),  # fmt: skip
        # ACDC cine MRI (ED/ES frames): thick slices (5-10 mm), so 1.5 x 1.5 x 5 mm and flat
        # patches 128 x 128 x 32 (SwinUNETR needs multiples of 32); RV, myocardium, LV.
        "acdc": _dataset_preset("gpu", "acdc", ACDC_CLASSES, patch_size=(128, 128, 32), spacing=(1.5, 1.5, 5.0)),
    }
)

DATASET_PRESETS = tuple(name for name, p in PRESETS.items() if p.is_dataset)


def model_shape(preset: Preset, num_classes: int | None = None, in_channels: int | None = None) -> tuple[int, int]:
    """The ``(num_classes, in_channels)`` of a run: the job args, else the preset's.

    Args:
        preset: the run's preset.
        num_classes: job arg (classes including background). Defaults to None (the preset's).
        in_channels: job arg. Defaults to None (the preset's).

    Returns:
        ``(num_classes, in_channels)``.

    Raises:
        ConfigError: naming the job arg when it is not a positive int (``num_classes`` >= 2) or
            when it contradicts a dataset preset.
    """
    out = []
    for arg, value, fixed, low in (
        ("num_classes", num_classes, preset.num_classes, 2),
        ("in_channels", in_channels, preset.in_channels, 1),
    ):
        if value is None:
            out.append(int(fixed))
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(arg, value, f"must be an int >= {low}")
        if preset.is_dataset and value != fixed:
            raise ConfigError(
                arg, value, f"preset {preset.name!r} fixes {arg}={fixed}; leave the job arg {arg} out (null)"
            )
        out.append(int(value))
    return out[0], out[1]


def get_preset(name: str) -> Preset:
    """Return the preset called ``name``.

    Raises:
        ConfigError: when no such preset exists.
    """
    if name not in PRESETS:
        raise ConfigError("preset", name, "unknown preset", options=sorted(PRESETS))
    return PRESETS[name]


def _as_triple(name: str, value, kind):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value, value)
    try:
        triple = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(name, value, f"must be a number or 3 numbers") from None
    if len(triple) != 3 or any(v <= 0 for v in triple):
        raise ConfigError(name, value, "must be 3 positive numbers")
    return triple


@dataclass(frozen=True)
class TrainConfig:
    """Everything a site needs to train and evaluate: a preset plus job-level choices.

    Args:
        preset: the resolved preset (after overrides).
        local_steps: optimiser steps per round at the site.
        seed: base seed; the site adds its own offset so sites draw different crops.
        val_max_cases: validate on at most this many validation cases (0 = all).
        torch_threads: ``torch.set_num_threads`` value at the site (0 = leave torch's default).
    """

    preset: Preset
    local_steps: int = 50
    seed: int = 0
    val_max_cases: int = 0
    torch_threads: int = 0


def build_train_config(
    preset: str = "cpu",
    local_steps: int = 50,
    seed: int = 0,
    network: str | None = None,
    patch_size=None,
    spacing=None,
    lr: float | None = None,
    batch_size: int | None = None,
    amp: bool | None = None,
    num_workers: int | None = None,
    cache_rate: float | None = None,
    val_max_cases: int = 0,
    torch_threads: int = 0,
) -> TrainConfig:
    """Resolve a preset plus job-arg overrides into a validated :class:`TrainConfig`.

    Args:
        preset: preset name (see :data:`PRESETS`). Defaults to ``"cpu"``.
        local_steps: optimiser steps per round, > 0. Defaults to 50.
        seed: base random seed. Defaults to 0.
        network: override the preset's network registry name; the preset's ``network_kwargs`` are
            kept when the new network extends the preset's (``dca_unetr`` extends ``hybrid_unetr``).
            Defaults to None (keep).
        patch_size: override the crop size (int or 3 ints). Defaults to None (keep).
        spacing: override the target spacing in mm (number or 3 numbers). Defaults to None (keep).
        lr: override the learning rate, > 0. Defaults to None (keep).
        batch_size: override the batch size, > 0. Defaults to None (keep).
        amp: override mixed precision. Defaults to None (keep).
        num_workers: override DataLoader workers, >= 0. Defaults to None (keep).
        cache_rate: override the cache share in [0, 1]. Defaults to None (keep).
        val_max_cases: validation cases per evaluation, >= 0 (0 = all). Defaults to 0.
        torch_threads: torch CPU threads, >= 0 (0 = torch default). Defaults to 0.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: naming the field, the bad value and the valid options.
    """
    base = get_preset(preset)
    changes = {}
    if network is not None:
        from fedsegnet.networks.registry import EXTENDS, NETWORKS  # local import: networks import torch/monai

        if network not in NETWORKS:
            raise ConfigError("network", network, "unknown network", options=sorted(NETWORKS))
        changes["network"] = network
        if network != base.network and EXTENDS.get(network) != base.network:
            changes["network_kwargs"] = {}  # another family: the preset's arguments do not apply
    if patch_size is not None:
        changes["patch_size"] = _as_triple("patch_size", patch_size, int)
    if spacing is not None:
        changes["spacing"] = _as_triple("spacing", spacing, float)
    if lr is not None:
        if not lr > 0:
            raise ConfigError("lr", lr, "must be > 0")
        changes["lr"] = float(lr)
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ConfigError("batch_size", batch_size, "must be >= 1")
        changes["batch_size"] = int(batch_size)
    if amp is not None:
        changes["amp"] = bool(amp)
    if num_workers is not None:
        if int(num_workers) < 0:
            raise ConfigError("num_workers", num_workers, "must be >= 0")
        changes["num_workers"] = int(num_workers)
    if cache_rate is not None:
        if not 0.0 <= float(cache_rate) <= 1.0:
            raise ConfigError("cache_rate", cache_rate, "must be in [0, 1]")
        changes["cache_rate"] = float(cache_rate)
    resolved = dataclasses.replace(base, **changes) if changes else base
    if resolved.intensity not in INTENSITY_MODES:
        raise ConfigError("intensity", resolved.intensity, "unknown mode", options=INTENSITY_MODES)
    if int(local_steps) < 1:
        raise ConfigError("local_steps", local_steps, "must be >= 1")
    if int(val_max_cases) < 0:
        raise ConfigError("val_max_cases", val_max_cases, "must be >= 0")
    if int(torch_threads) < 0:
        raise ConfigError("torch_threads", torch_threads, "must be >= 0")
    return TrainConfig(
        preset=resolved,
        local_steps=int(local_steps),
        seed=int(seed),
        val_max_cases=int(val_max_cases),
        torch_threads=int(torch_threads),
    )


PERSONALIZATION = ("none", "fedbn", "ditto", "finetune", "dca")
"""Personalisation methods (job arg ``personalization``); see :mod:`fedsegnet.training.personal`."""


@dataclass(frozen=True)
class PersonalConfig:
    """How a site personalises the federation's model (job args of the same names).

    Args:
        method: one of :data:`PERSONALIZATION`: ``none`` (the global model only), ``fedbn``
            (normalisation layers stay at the site), ``ditto`` (a second, personal model trained
            towards the global one), ``finetune`` (the final global model fine-tuned at the site),
            ``dca`` (the DCA network's queries, spatial adapter and normalisation layers stay at the
            site).
        personal_keys: extra parameter-name patterns (``fnmatch``, e.g. ``"head.*"``) kept at
            the site, for any method. Defaults to () (the method's own set).
        ditto_lambda: Ditto's proximal weight: the personal model's loss gets
            ``ditto_lambda / 2 * ||w_personal - w_global||^2`` (FLARE's ``PTFedProxLoss``; Li et al.
            2021 tune lambda in {0.01 .. 2}, FLARE's helper defaults to 0.1). Defaults to 0.1.
        personal_steps: optimiser steps of the personal model per round (``ditto``) or of the
            final fine-tuning (``finetune``); 0 = the job's ``local_steps``. Defaults to 0.
        boundary_weight: weight of the perturbed boundary loss
            (:mod:`fedsegnet.training.boundary_loss`) added to every training step of the model
            the site trains (0 = off). Defaults to 0.0.
        boundary_band: half-width in voxels of the band around label boundaries the boundary loss
            looks at. Defaults to 2.
        boundary_perturbation: input noise of the boundary loss, as a share of the image's
            intensity standard deviation. Defaults to 0.1.
    """

    method: str = "none"
    personal_keys: tuple[str, ...] = ()
    ditto_lambda: float = 0.1
    personal_steps: int = 0
    boundary_weight: float = 0.0
    boundary_band: int = 2
    boundary_perturbation: float = 0.1

    def __post_init__(self):
        if self.method not in PERSONALIZATION:
            raise ConfigError("personalization", self.method, "unknown personalisation method", options=PERSONALIZATION)
        keys = self.personal_keys
        if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError("personal_keys", keys, "must be a list of non-empty name patterns, e.g. ['head.*']")
        object.__setattr__(self, "personal_keys", tuple(keys))
        object.__setattr__(self, "ditto_lambda", check_number("ditto_lambda", self.ditto_lambda, 0.0))
        object.__setattr__(self, "boundary_weight", check_number("boundary_weight", self.boundary_weight, 0.0))
        perturbation = check_number("boundary_perturbation", self.boundary_perturbation, 0.0)
        if perturbation == 0:
            raise ConfigError("boundary_perturbation", self.boundary_perturbation, "must be > 0")
        object.__setattr__(self, "boundary_perturbation", perturbation)
        object.__setattr__(self, "personal_steps", check_int("personal_steps", self.personal_steps, 0))
        object.__setattr__(self, "boundary_band", check_int("boundary_band", self.boundary_band, 1))

    @property
    def enabled(self) -> bool:
        """True when the site personalises at all (a method other than ``none``, or ``personal_keys``)."""
        return self.method != "none" or bool(self.personal_keys)
