"""Typed settings built from job args: defaults and validation in one place.

A *preset* bundles what belongs together for one kind of run (network, patch size, spacing,
intensity normalisation, batch, optimiser, AMP). Job args pick a preset by name and may override a
few fields; :func:`build_train_config` validates the result and names the bad field on error.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from fedsegnet.errors import ConfigError, UsageError, check_int, check_number

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
    checked = check_job_args(
        dict(preset=preset, local_steps=local_steps, seed=seed, network=network, patch_size=patch_size,
             num_workers=num_workers, val_max_cases=val_max_cases, torch_threads=torch_threads)
    )  # fmt: skip
    local_steps, seed, val_max_cases, torch_threads = (checked[k] for k in ("local_steps", "seed", "val_max_cases", "torch_threads"))
    base = get_preset(preset)
    changes = {}
    if network is not None:
        from fedsegnet.networks.registry import EXTENDS  # local import: networks import torch/monai

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
        changes["num_workers"] = num_workers
    if cache_rate is not None:
        if not 0.0 <= float(cache_rate) <= 1.0:
            raise ConfigError("cache_rate", cache_rate, "must be in [0, 1]")
        changes["cache_rate"] = float(cache_rate)
    resolved = dataclasses.replace(base, **changes) if changes else base
    if resolved.intensity not in INTENSITY_MODES:
        raise ConfigError("intensity", resolved.intensity, "unknown mode", options=INTENSITY_MODES)
    return TrainConfig(
        preset=resolved, local_steps=local_steps, seed=seed, val_max_cases=val_max_cases, torch_threads=torch_threads
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


DP_MODES = ("none", "patient")
"""Differential privacy at a site (job arg ``dp``): ``none``, or ``patient``: DP-SGD in which one
training case (a patient) is the unit (see :mod:`fedsegnet.privacy`)."""


# ------------------------------------------------------------------------------------------- job args
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""What a FLARE job id looks like (``resume_from``): letters, digits, ``-``, ``_``, ``.``; no path separators."""
NOT_A_JOB_ID = "not a job id (letters, digits, '-', '_', '.'; e.g. the id `nvflare job list` shows)"

ARG_KINDS = ("int", "float", "bool", "choice", "str", "names", "triple", "job_id")


@dataclass(frozen=True)
class JobArg:
    """One job arg: its type, the values it may take, its default and what it does.

    Job args are the top-level variables of a job's ``config_fed_{server,client}.json``. Every
    component that reads one (the Learner, the filters, the aggregator, the persistor, the Recipes,
    ``fedsegnet job set``) checks it with :meth:`check`, so a bad value gets the same message
    wherever it is found.

    Args:
        name: the job arg's name.
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"choice"`` (one of ``options``), ``"str"``,
            ``"names"`` (a list of non-empty strings), ``"triple"`` (an int or 3 ints, e.g. a patch
            size) or ``"job_id"`` (empty, or a FLARE job id).
        default: the value a job starts with.
        help: one line for ``fedsegnet job args``.
        low: smallest value (``int``, ``float``, ``triple``). Defaults to None (no bound).
        high: largest value (``int``, ``float``). Defaults to None (no bound).
        low_open: ``low`` itself is not allowed. Defaults to False.
        options: the allowed values of a ``choice``: a tuple, or the name of a function in
            :data:`_OPTION_SOURCES` that returns them (registries filled at import). Defaults to ().
        null: what ``null`` (None) means when it is allowed (``"the preset's"``); empty: not
            allowed. Defaults to "".
        off: a number allowed outside ``[low, high]`` that switches the feature off (``0``).
            Defaults to None (none).
    """

    name: str
    kind: str
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    options: tuple | str = ()
    null: str = ""
    off: float | None = None

    def __post_init__(self):
        if self.kind not in ARG_KINDS:
            raise ConfigError("kind", self.kind, f"job arg {self.name!r}: unknown kind", options=ARG_KINDS)

    def allowed(self) -> tuple:
        """The options of a ``choice`` (resolved when they come from a registry)."""
        if isinstance(self.options, str):
            return tuple(_OPTION_SOURCES[self.options]())
        return tuple(self.options)

    def describe(self) -> str:
        """What values are allowed, in words (``int >= 1``, ``one of aam, mean``, ...)."""
        if self.kind in ("int", "float", "triple"):
            what = {"int": "an integer", "float": "a number", "triple": "an integer or 3 integers"}[self.kind]
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
            if self.high is not None:
                bounds.append(f"<= {self.high:g}")
            text = f"{what} {' and '.join(bounds)}".strip() + (f" or {self.off:g} (off)" if self.off is not None else "")
        elif self.kind == "choice":
            text = "one of " + ", ".join(map(str, self.allowed()))
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "names":
            text = "a list of name patterns"
        elif self.kind == "job_id":
            text = "empty or a job id"
        else:
            text = "a text"
        return text + (f" or null ({self.null})" if self.null else "")

    def check(self, value):
        """``value`` if this job arg may take it (ints given as ``2.0`` stay refused), else ConfigError.

        Returns:
            the value in its canonical form (floats for ``float``, a list for ``names``, a list of
            3 ints or one int for ``triple``).

        Raises:
            ConfigError: naming the job arg, the value and what is allowed.
        """
        if value is None:
            if self.null:
                return None
            raise ConfigError(self.name, value, f"must be {self.describe()}")
        bad = ConfigError(self.name, value, f"must be {self.describe()}")
        if self.kind in ("int", "float"):
            integral = isinstance(value, int) and not isinstance(value, bool)
            number = integral or (isinstance(value, float) and math.isfinite(value))
            if not (integral if self.kind == "int" else number):
                raise bad
            if self.off is not None and value == self.off:
                return int(value) if self.kind == "int" else float(value)
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                raise bad
            if self.high is not None and value > self.high:
                raise bad
            return int(value) if self.kind == "int" else float(value)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind == "choice":
            options = self.allowed()
            if isinstance(value, bool) or value not in options:
                raise ConfigError(self.name, value, "unknown value", options=options)
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise bad
            return value
        if self.kind == "names":
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise bad
            if not all(isinstance(v, str) and v for v in value):
                raise bad
            return list(value)
        if self.kind == "triple":
            items = [value] if not isinstance(value, (list, tuple)) else list(value)
            if len(items) not in (1, 3) or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
                raise bad
            if self.low is not None and any(v < self.low for v in items):
                raise bad
            return items[0] if not isinstance(value, (list, tuple)) else items
        # job_id
        if value == "":
            return ""
        if not isinstance(value, str) or not JOB_ID_PATTERN.match(value) or value in (".", ".."):
            raise ConfigError(self.name, value, NOT_A_JOB_ID)
        return value


# The option sources and build_train_config import from the layers below config (networks,
# aggregation, compression) inside the function, when the options are asked for: those layers import
# torch/MONAI, and importing config (the job-arg schema of ``fedsegnet job ...``) does not
# (tests/test_boundaries.py checks that, and that these imports go downwards).


def _network_names() -> tuple:
    from fedsegnet.networks.registry import NETWORKS  # local import: networks import torch/monai

    return tuple(sorted(NETWORKS))


def _aggregation_methods() -> tuple:
    from fedsegnet.aggregation import METHODS  # local import: aggregation imports torch

    return tuple(METHODS)


def _quant_bits() -> tuple:
    from fedsegnet.compression.quantize import QUANT_BITS  # local import: compression imports torch

    return tuple(QUANT_BITS)


_OPTION_SOURCES = {
    "presets": lambda: tuple(sorted(PRESETS)),
    "networks": _network_names,
    "aggregation": _aggregation_methods,
    "bits": _quant_bits,
}


def _args(*args: JobArg) -> dict[str, JobArg]:
    return {a.name: a for a in args}


JOB_ARGS: dict[str, JobArg] = _args(
    # --- the federation (server)
    JobArg("num_rounds", "int", 5, "federated rounds in all (a resumed job counts the rounds already done)", low=1),
    JobArg("min_clients", "int", 2, "sites needed to start the job (and, with drop_stragglers, to close a round)", low=1),
    JobArg("train_timeout", "int", 0, "seconds a round waits for the sites' updates (0 = no limit)", low=0),
    JobArg("drop_stragglers", "bool", False, "false: each round waits for every site of the job; true: it closes wait_after_min_clients s after min_clients updates"),
    JobArg("wait_after_min_clients", "int", 10, "with drop_stragglers: seconds a round waits for more sites once min_clients updates are in", low=0),
    JobArg("ignore_result_error", "bool", True, "a site whose update is refused is skipped; false: the round fails", null="FLARE's rule"),
    JobArg("cse_submit_timeout", "int", 600, "seconds cross-site evaluation waits for a site's model", low=1),
    JobArg("cse_validation_timeout", "int", 6000, "seconds cross-site evaluation waits for a site's scores", low=1),
    JobArg("resume_from", "job_id", "", "id of an interrupted job of this server to continue (empty: fresh start)"),
    # --- the model (server and sites)
    JobArg("preset", "choice", "cpu", "settings bundle: network, patch, spacing, optimiser (fedsegnet.config.PRESETS)", options="presets"),
    JobArg("network", "choice", None, "network registry name instead of the preset's", options="networks", null="the preset's"),
    JobArg("patch_size", "triple", None, "training crop and sliding-window size in voxels", low=4, null="the preset's"),
    JobArg("num_classes", "int", None, "classes including background", low=2, null="the preset's"),
    JobArg("in_channels", "int", None, "image channels", low=1, null="the preset's"),
    JobArg("seed", "int", 0, "job seed: initial weights, crops, sampling (each site derives its own)", low=0),
    # --- local training (sites)
    JobArg("data_root", "str", None, "folder with one sub-folder per site", null="$FEDSEGNET_DATA_ROOT at the site"),
    JobArg("local_steps", "int", 50, "optimiser steps per round at each site", low=1),
    JobArg("val_max_cases", "int", 0, "validation cases per evaluation (0 = all)", low=0),
    JobArg("torch_threads", "int", 0, "torch CPU threads per site (0 = torch's default)", low=0),
    JobArg("num_workers", "int", None, "DataLoader worker processes per site", low=0, null="the preset's"),
    JobArg("fedprox_mu", "float", 0.0, "FedProx proximal weight (FLARE's PTFedProxLoss; 0 = off)", low=0),
    JobArg("pseudo_threshold", "float", 0.8, "box/tag sites keep the global model's pseudo-label where its probability reaches this", low=0, high=1),
    JobArg("pseudo_ramp_rounds", "int", 5, "rounds over which the pseudo-label loss weight grows from 0 to 1", low=0),
    # --- personalisation (sites; see PersonalConfig)
    JobArg("personalization", "choice", "none", "what each site keeps to itself", options=PERSONALIZATION),
    JobArg("personal_keys", "names", [], "extra parameter-name patterns (fnmatch) that stay at the sites"),
    JobArg("ditto_lambda", "float", 0.1, "Ditto's proximal weight of the personal model", low=0),
    JobArg("personal_steps", "int", 0, "steps of the personal model (ditto) or the final fine-tuning (0 = local_steps)", low=0),
    JobArg("boundary_weight", "float", 0.0, "weight of the perturbed boundary loss (0 = off)", low=0),
    JobArg("boundary_band", "int", 2, "half-width in voxels of the boundary loss's band", low=1),
    JobArg("boundary_perturbation", "float", 0.1, "input noise of the boundary loss, share of the image's sd", low=0, low_open=True),
    # --- aggregation (server)
    JobArg("aggregation", "choice", "aam", "how the server combines updates (aam, FedAvg weights, coordinate-wise median or trimmed mean)", options="aggregation"),
    JobArg("aam_temperature", "float", 0.2, "AAM softmax temperature (smaller: sharper)", low=0, low_open=True),
    JobArg("aam_floor", "float", 0.02, "lowest AAM weight of an accepted site", low=0, high=0.99),
    JobArg("aam_cap", "float", 0.6, "highest AAM weight of any site", low=0, high=1, low_open=True),
    JobArg("aam_peer_cases_ratio", "float", 2.0, "a site's case count counts at most this many times the lower median of the others'", low=1, off=0),
    # --- compression (sites: up_*, server: down_*; both: the rest)
    JobArg("up_ratio", "float", 0.1, "share of each tensor's values a site sends", low=0, high=1, low_open=True),
    JobArg("up_bits", "choice", 4, "bits per value a site sends", options="bits"),
    JobArg("down_ratio", "float", 0.1, "share of each tensor's values of the global model difference the server sends", low=0, high=1, low_open=True),
    JobArg("down_bits", "choice", 4, "bits per value the server sends", options="bits"),
    JobArg("down_first_bits", "choice", 8, "bits per value of the first full global model a site receives (32 = exact)", options="bits"),
    JobArg("compression_block", "int", 256, "values per quantization scale (0 = one scale per tensor)", low=0),
    JobArg("compression_scope", "choice", "tensor", "top-k within each tensor, or one threshold over the model", options=("tensor", "global")),
    JobArg("dense_bits", "choice", 8, "bits per value of small tensors sent dense", options="bits"),
    # --- differential privacy (sites; fedsegnet.privacy.DPSettings, docs/privacy.md)
    JobArg("dp", "choice", "none", "differential privacy at each site: none, or DP-SGD with one training case (patient) as the unit", options=DP_MODES),
    JobArg("dp_noise", "float", None, "DP-SGD noise multiplier (noise sd / dp_clip)", low=0, low_open=True, null="chosen from dp_target_epsilon"),
    JobArg("dp_target_epsilon", "float", None, "epsilon that the planned rounds x local_steps spend exactly (chooses the noise)", low=0, low_open=True, null="dp_noise is given"),
    JobArg("dp_delta", "float", None, "delta of the (epsilon, delta) guarantee, < 1", low=0, high=1, low_open=True, null="min(1e-5, 0.1 / the site's training cases)"),
    JobArg("dp_clip", "float", 1.0, "bound on the gradient norm of one training case in one step", low=0, low_open=True),
    JobArg("dp_budget", "float", 0.0, "epsilon a site may spend in all; a round that would pass it is not trained (0 = no budget)", low=0, low_open=True, off=0),
    # --- secure aggregation (server and sites; docs/secure_aggregation.md)
    JobArg("secure_aggregation", "bool", False, "sites send only masked updates and the server learns only the round's sum; sites refuse plain train and submit_model tasks"),
    JobArg("secagg_threshold", "int", 0, "under secure aggregation: the fewest sites a round's sum needs (0 = a majority, at least 2; 1 is refused)", low=0),
)
"""Every job arg of ``jobs/fedsegnet`` and ``jobs/fedavg``, declared once (tests check that every
variable of both jobs' configs is here and that every component's default equals the one here)."""


def job_arg(name: str) -> JobArg:
    """The declaration of job arg ``name``.

    Raises:
        ConfigError: ``name`` is not a job arg.
    """
    if name not in JOB_ARGS:
        raise ConfigError(name, None, "not a FedSegNet job arg", options=sorted(JOB_ARGS))
    return JOB_ARGS[name]


def check_job_args(values: Mapping, names: Mapping[str, str] | None = None) -> dict:
    """Check job-arg values against their declarations.

    Args:
        values: ``{name: value}``; names not declared raise.
        names: ``{name in values: job arg name}`` where a component's argument has another name than
            the job arg it takes (the aggregator's ``temperature`` is ``aam_temperature``). Defaults
            to None (the same names).

    Returns:
        ``{name: canonical value}`` under the names of ``values``.

    Raises:
        ConfigError: the first bad value, naming the job arg, the value and what is allowed.
    """
    names = names or {}
    return {key: job_arg(names.get(key, key)).check(value) for key, value in values.items()}


SUM_FREE_AGGREGATIONS = ("median", "trimmed_mean")
"""Aggregations that cannot be computed from the sum of the updates (refused with ``secure_aggregation``)."""


def check_job(values: Mapping) -> dict:
    """Check a whole job's args: each against its declaration, then the rules that join several.

    Args:
        values: ``{job arg: value}`` of one job (server and site configs merged); undeclared names raise.

    Returns:
        ``{name: canonical value}``.

    Raises:
        ConfigError: naming the job arg, the value and what is allowed.
    """
    out = check_job_args(values)
    if "aam_floor" in out and "aam_cap" in out and out["aam_floor"] > out["aam_cap"]:
        raise ConfigError("aam_floor", out["aam_floor"], f"must be <= aam_cap={out['aam_cap']}")
    if out.get("secagg_threshold") == 1:
        raise ConfigError("secagg_threshold", 1, "must be 0 (a majority) or >= 2: the sum of one site is its update")
    if out.get("secure_aggregation") and out.get("aggregation") in SUM_FREE_AGGREGATIONS:
        raise ConfigError(
            "aggregation", out["aggregation"], "cannot run with secure_aggregation=true: the server sees only the sum of the "
            "updates, and a coordinate-wise median or trimmed mean needs each one (aam or mean: sample-count weights)",
        )  # fmt: skip
    if out.get("secure_aggregation") and (out.get("personalization", "none") != "none" or out.get("personal_keys")):
        name = "personalization" if out.get("personalization", "none") != "none" else "personal_keys"
        raise ConfigError(
            name, out[name], "cannot run with secure_aggregation=true yet: the secure rounds sum every floating-point "
            "parameter, and a site that keeps some to itself sends an update without them (personalization=none)",
        )  # fmt: skip
    if "preset" in out:
        config = build_train_config(
            **{k: out[k] for k in ("preset", "network", "patch_size", "local_steps", "seed", "num_workers", "val_max_cases", "torch_threads") if k in out}
        )
        model_shape(config.preset, out.get("num_classes"), out.get("in_channels"))
    return out


def parse_job_values(words) -> dict:
    """Job args from ``KEY=VALUE`` words (``fedsegnet job set``, ``poc submit``, the Recipe's command
    line); a value is read as JSON when it parses, else kept as text.

    Args:
        words: e.g. ``["num_rounds=3", "preset=tiny"]``.

    Returns:
        The job args by name, e.g. ``{"num_rounds": 3, "preset": "tiny"}``.

    Raises:
        UsageError: a word without ``=`` or with an empty name; names the word.
    """
    import json

    values = {}
    for word in words:
        key, sep, raw = word.partition("=")
        if not sep or not key:
            raise UsageError(f"job arg {word!r}: expected KEY=VALUE")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values
