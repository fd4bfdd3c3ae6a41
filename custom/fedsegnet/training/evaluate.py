"""Validation: sliding-window inference, then Dice and 95th-percentile Hausdorff distance (mm).

Inference is MONAI ``sliding_window_inference`` over whole volumes; metrics are MONAI
``DiceMetric`` and ``HausdorffDistanceMetric(percentile=95)`` on one-hot argmax predictions, per
foreground class, with the case's voxel spacing passed as ``spacing=`` so that HD95 is in
millimetres (MONAI >= 1.3; MONAI's surface distances need scipy on the CPU).

Policy for absent structures (MONAI itself returns NaN or inf there). For each case and class:

=========================  ==========  ========================================  ===========================
label / prediction          Dice        HD95                                      counted in
=========================  ==========  ========================================  ===========================
present / present           MONAI       MONAI (mm)                                -
absent / absent             1.0         undefined (excluded)                      ``n_both_empty``
absent / present            0.0         undefined (excluded)                      ``n_missing_label``
present / absent            0.0         undefined (excluded)                      ``n_missing_pred``
=========================  ==========  ========================================  ===========================

*Regions* (unions of classes, e.g. BraTS's whole tumour = necrotic core + edema + enhancing) are
scored the same way on the union masks, and reported apart from the classes (``per_region``).

So Dice is defined for every case and class; HD95 is averaged only over cases where both label and
prediction contain the class, and the counts above say how many cases were left out and why (a
model that misses a structure is penalised in Dice and shows up in ``n_missing_pred``, not in the
HD95 mean). A class with no defined HD95 has ``hd95 = None``; means over classes skip such classes
(``hd95_mean`` is None when no class has a defined value). NaN and inf never reach a mean.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot

from fedsegnet.errors import ConfigError
from fedsegnet.training.errors import TrainingError
from fedsegnet.progress import show_progress

logger = logging.getLogger(__name__)

__all__ = ["EvalResult", "evaluate"]


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(sum(kept) / len(kept)) if kept else None


@dataclass
class EvalResult:
    """Validation metrics over a set of cases.

    Args:
        dice: per foreground class id, mean Dice over cases (always defined, see module policy).
        hd95: per foreground class id, mean HD95 in mm over cases where both label and prediction
            contain the class; None when no such case.
        dice_mean: mean of ``dice`` over classes; None when there are no cases.
        hd95_mean: mean of the defined ``hd95`` values over classes; None when none is defined.
        n_cases: cases evaluated.
        missing: per class id, ``{"n_missing_pred", "n_missing_label", "n_both_empty"}`` case
            counts.
        per_case: one dict per case: ``{"name", "dice": {id: float}, "hd95": {id: float | None},
            "spacing": [sx, sy, sz], "shape": [X, Y, Z]}``.
        class_names: display name per class id (used as ``per_class`` keys in :meth:`to_dict`).
        region_dice: per region name, mean Dice over cases of the union mask. Defaults to {}.
        region_hd95: per region name, mean HD95 in mm (None when undefined). Defaults to {}.
    """

    dice: dict[int, float]
    hd95: dict[int, float | None]
    dice_mean: float | None
    hd95_mean: float | None
    n_cases: int
    missing: dict[int, dict[str, int]]
    per_case: list[dict] = field(default_factory=list)
    class_names: dict[int, str] = field(default_factory=dict)
    region_dice: dict[str, float] = field(default_factory=dict)
    region_hd95: dict[str, float | None] = field(default_factory=dict)

    @property
    def region_dice_mean(self) -> float | None:
        """Mean Dice over regions; None without regions or cases."""
        return _mean(self.region_dice.values())

    def to_dict(self, per_case: bool = False) -> dict:
        """JSON-serialisable summary.

        Args:
            per_case: also include ``per_case`` (class ids as string keys). Defaults to False.

        Returns:
            ``{"dice_mean", "hd95_mean", "n_cases", "per_class": {name: {"dice", "hd95",
            "n_missing_pred", "n_missing_label", "n_both_empty"}}}`` where ``name`` is the class
            name when known, else the class id as a string; undefined values are None. With
            regions also ``"per_region"`` (same fields per region) and ``"region_dice_mean"``.
        """
        per_class = {}
        for cls in sorted(self.dice):
            per_class[str(self.class_names.get(cls, cls))] = {
                "dice": self.dice[cls],
                "hd95": self.hd95.get(cls),
                **{k: int(v) for k, v in self.missing.get(cls, {}).items()},
            }
        out = {
            "dice_mean": self.dice_mean,
            "hd95_mean": self.hd95_mean,
            "n_cases": int(self.n_cases),
            "per_class": per_class,
        }
        if self.region_dice:
            out["per_region"] = {
                region: {
                    "dice": self.region_dice[region],
                    "hd95": self.region_hd95.get(region),
                    **{k: int(v) for k, v in self.missing.get(region, {}).items()},
                }
                for region in self.region_dice
            }
            out["region_dice_mean"] = self.region_dice_mean
        if per_case:
            out["per_case"] = [
                {
                    **case,
                    "dice": {str(k): v for k, v in case["dice"].items()},
                    "hd95": {str(k): v for k, v in case["hd95"].items()},
                }
                for case in self.per_case
            ]
        return out


def _class_names(class_names, num_classes: int) -> dict[int, str]:
    if class_names is None:
        return {}
    if isinstance(class_names, Mapping):
        names = {}
        for key, name in class_names.items():
            try:
                names[int(key)] = str(name)
            except (TypeError, ValueError):
                raise ConfigError("class_names", class_names, "keys must be class ids (ints)") from None
        return names
    if isinstance(class_names, Sequence) and not isinstance(class_names, (str, bytes)):
        if len(class_names) != num_classes:
            raise ConfigError(
                "class_names",
                class_names,
                f"a list needs one name per class including background ({num_classes})",
            )
        return {i: str(n) for i, n in enumerate(class_names)}
    raise ConfigError("class_names", class_names, "must be None, a list of names or a {class id: name} dict")


def _roi(roi_size) -> tuple[int, int, int]:
    if isinstance(roi_size, int) and not isinstance(roi_size, bool):
        roi_size = (roi_size,) * 3
    try:
        roi = tuple(roi_size)
    except TypeError:
        roi = ()
    if len(roi) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in roi):
        raise ConfigError("roi_size", roi_size, "must be an int or 3 ints >= 1")
    return roi


def _regions(regions, num_classes: int) -> dict[str, tuple[int, ...]]:
    if not regions:
        return {}
    if not isinstance(regions, Mapping):
        raise ConfigError("regions", regions, "must be a {region name: [class id, ...]} dict")
    out = {}
    for name, ids in regions.items():
        try:
            ids = tuple(int(i) for i in ids)
        except (TypeError, ValueError):
            ids = ()
        if not ids or any(not 1 <= i < num_classes for i in ids):
            raise ConfigError("regions", dict(regions), f"region {name!r} must list foreground class ids 1..{num_classes - 1}")
        out[str(name)] = ids
    return out


def _case_spacing(case: Mapping, image, name: str) -> tuple[float, float, float]:
    spacing = case.get("spacing")
    if spacing is None and hasattr(image, "pixdim"):  # MONAI MetaTensor
        spacing = [float(v) for v in image.pixdim[:3]]
    if spacing is None:
        raise TrainingError(f"case {name!r}: no 'spacing' (mm per voxel) given; needed for HD95 in mm")
    try:
        triple = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3 or any(not (v > 0 and math.isfinite(v)) for v in triple):
        raise TrainingError(f"case {name!r}: spacing {spacing!r} must be 3 positive numbers (mm)")
    return triple


def evaluate(
    model: nn.Module,
    cases: Iterable[Mapping],
    *,
    num_classes: int,
    roi_size,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    device: str | torch.device = "cpu",
    amp: bool = False,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    score_classes: Sequence[int] | None = None,
    progress: bool | str = False,
) -> EvalResult:
    """Segment each case with sliding-window inference and score it against its label.

    The model runs in eval mode under ``torch.no_grad()``; its previous train/eval mode is
    restored afterwards, also on error.

    Args:
        model: network mapping ``(B, C, X, Y, Z)`` to logits ``(B, num_classes, X, Y, Z)``, on
            ``device``.
        cases: dicts ``{"image": (C, X, Y, Z) tensor or array, "label": (1, X, Y, Z) class ids,
            "spacing": (sx, sy, sz) mm, optional "name"}``; without ``"spacing"`` a MONAI
            MetaTensor image's ``pixdim`` is used.
        num_classes: classes including background, >= 2.
        roi_size: sliding-window size, an int or 3 ints (the training patch size).
        sw_batch_size: windows per forward pass, >= 1. Defaults to 4.
        overlap: window overlap in [0, 1). Defaults to 0.25.
        device: where inference runs. Defaults to ``"cpu"``.
        amp: float16 autocast when ``device`` is CUDA; ignored on CPU. Defaults to False.
        class_names: names for the class ids, a list of ``num_classes`` names (index = id, 0 =
            background) or ``{id: name}``. Defaults to None (ids).
        regions: ``{region name: [class id, ...]}``: unions of foreground classes scored like
            classes (``EvalResult.region_dice``/``region_hd95``). Defaults to None (none).
        score_classes: the foreground classes to score, e.g. the classes a partial site annotates
            (its labels say nothing about the others). Defaults to None (all).
        progress: ``True`` shows a tqdm bar over cases only when stderr is a terminal,
            ``"force"`` always. Defaults to False.

    Returns:
        :class:`EvalResult` over foreground classes ``1 .. num_classes - 1``.

    Raises:
        ConfigError: for an invalid argument.
        TrainingError: naming the case, for a malformed case (shapes, spacing, label values out of
            range).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("num_classes", num_classes, "must be an integer >= 2 (background + 1)")
    roi = _roi(roi_size)
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ConfigError("sw_batch_size", sw_batch_size, "must be an integer >= 1")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap < 1.0:
        raise ConfigError("overlap", overlap, "must be a number in [0, 1)")
    names = _class_names(class_names, num_classes)
    region_map = _regions(regions, num_classes)
    show = show_progress(progress)
    device = torch.device(device)
    use_amp = bool(amp) and device.type == "cuda"
    classes = list(range(1, num_classes))
    if score_classes is not None:
        wanted = sorted({int(c) for c in score_classes})
        if not wanted or any(c not in classes for c in wanted):
            raise ConfigError("score_classes", list(score_classes), f"must list foreground class ids 1..{num_classes - 1}")
        classes = wanted
    dice_metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    hd_metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")

    iterator = cases
    bar = None
    if show:
        from tqdm.auto import tqdm

        iterator = bar = tqdm(cases, desc="evaluate", leave=False, dynamic_ncols=True)

    per_case: list[dict] = []
    keys = classes + list(region_map)
    missing = {k: {"n_missing_pred": 0, "n_missing_label": 0, "n_both_empty": 0} for k in keys}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index, case in enumerate(iterator):
                per_case.append(
                    _evaluate_case(
                        model, case, index, classes, region_map, num_classes, roi, sw_batch_size,
                        overlap, device, use_amp, dice_metric, hd_metric, missing,
                    )
                )
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()

    dice = {c: _mean(case["dice"][c] for case in per_case) for c in classes}
    hd95 = {c: _mean(case["hd95"][c] for case in per_case) for c in classes}
    result = EvalResult(
        dice=dice,
        hd95=hd95,
        dice_mean=_mean(dice.values()),
        hd95_mean=_mean(hd95.values()),
        n_cases=len(per_case),
        missing=missing,
        per_case=per_case,
        class_names={c: names[c] for c in classes if c in names},
        region_dice={r: _mean(case["dice"][r] for case in per_case) for r in region_map},
        region_hd95={r: _mean(case["hd95"][r] for case in per_case) for r in region_map},
    )
    undefined = [c for c in classes if hd95[c] is None]
    if per_case and undefined:
        logger.info("HD95 undefined for class(es) %s (no case with the class in label and prediction)", undefined)
    logger.info(
        "evaluated %d case(s): Dice %s, HD95 %s mm",
        result.n_cases,
        "n/a" if result.dice_mean is None else f"{result.dice_mean:.4f}",
        "n/a" if result.hd95_mean is None else f"{result.hd95_mean:.2f}",
    )
    return result


def _evaluate_case(
    model, case, index, classes, region_map, num_classes, roi, sw_batch_size, overlap, device, use_amp,
    dice_metric, hd_metric, missing,
) -> dict:
    if not isinstance(case, Mapping) or "image" not in case or "label" not in case:
        raise TrainingError(f"case #{index}: must be a dict with 'image', 'label' and 'spacing'")
    name = str(case.get("name", f"case_{index}"))
    image, label = case["image"], case["label"]
    spacing = _case_spacing(case, image, name)
    image = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image)  # MetaTensor -> Tensor
    label = torch.as_tensor(label.as_tensor() if hasattr(label, "as_tensor") else label)
    if image.ndim != 4:
        raise TrainingError(f"case {name!r}: image must be (C, X, Y, Z), got shape {tuple(image.shape)}")
    if label.ndim != 4 or label.shape[0] != 1 or label.shape[1:] != image.shape[1:]:
        raise TrainingError(
            f"case {name!r}: label must be (1, X, Y, Z) matching image {tuple(image.shape)}, "
            f"got {tuple(label.shape)}"
        )
    if label.dtype.is_floating_point:
        label = label.round()
    label = label.to(torch.long)
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= num_classes:
        raise TrainingError(f"case {name!r}: label values in [{lo}, {hi}], outside [0, {num_classes - 1}]")

    inputs = image[None].to(device=device, dtype=torch.float32)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
        logits = sliding_window_inference(
            inputs, roi_size=roi, sw_batch_size=sw_batch_size, predictor=model, overlap=overlap
        )
    if logits.shape[1] != num_classes:
        raise TrainingError(
            f"case {name!r}: model gave {logits.shape[1]} output channels, num_classes={num_classes}"
        )
    pred = logits.float().argmax(dim=1, keepdim=True).cpu()
    pred_1h = one_hot(pred, num_classes, dim=1)
    label_1h = one_hot(label[None], num_classes, dim=1)
    # channels: background (skipped by the metrics), the scored classes, then each region's union mask
    pred_1h = torch.cat([pred_1h[:, [0] + classes]] + [pred_1h[:, list(ids)].amax(1, keepdim=True) for ids in region_map.values()], 1)
    label_1h = torch.cat([label_1h[:, [0] + classes]] + [label_1h[:, list(ids)].amax(1, keepdim=True) for ids in region_map.values()], 1)
    keys = classes + list(region_map)

    dice_raw = dice_metric(pred_1h, label_1h)[0]  # (scored classes + regions,)
    with warnings.catch_warnings():
        # empty classes are handled by the policy below; MONAI warns about them and about an
        # internal deprecated argument
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        hd_raw = hd_metric(pred_1h, label_1h, spacing=spacing)[0]
    dice_metric.reset()
    hd_metric.reset()

    in_label = label_1h[0, 1:].flatten(1).any(dim=1)
    in_pred = pred_1h[0, 1:].flatten(1).any(dim=1)
    dice_case: dict[int | str, float] = {}
    hd_case: dict[int | str, float | None] = {}
    for i, cls in enumerate(keys):
        has_label, has_pred = bool(in_label[i]), bool(in_pred[i])
        if has_label and has_pred:
            d, h = float(dice_raw[i]), float(hd_raw[i])
            dice_case[cls] = d if math.isfinite(d) else 0.0
            hd_case[cls] = h if math.isfinite(h) else None
        elif not has_label and not has_pred:
            dice_case[cls], hd_case[cls] = 1.0, None
            missing[cls]["n_both_empty"] += 1
        elif not has_label:
            dice_case[cls], hd_case[cls] = 0.0, None
            missing[cls]["n_missing_label"] += 1
        else:
            dice_case[cls], hd_case[cls] = 0.0, None
            missing[cls]["n_missing_pred"] += 1
    logger.debug("case %s: dice %s hd95 %s", name, dice_case, hd_case)
    return {
        "name": name,
        "dice": dice_case,
        "hd95": hd_case,
        "spacing": list(spacing),
        "shape": [int(s) for s in image.shape[1:]],
    }
