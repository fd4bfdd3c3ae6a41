"""evaluate(): Dice/HD95 in mm, the absent-structure policy, no NaN/inf in means, mode restore."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.data import MetaTensor

from fedsegnet.errors import ConfigError
from fedsegnet.training import EvalResult, TrainingError, evaluate

from .helpers import tiny_net

NUM_CLASSES = 3


class PredictionAsInput(nn.Module):
    """Fake model whose logits are its input: feed it a one-hot prediction to control argmax."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.scale


def cube(size=24, lo=8, hi=16, cls=1, base=None):
    vol = torch.zeros(size, size, size, dtype=torch.long) if base is None else base.clone()
    vol[lo:hi, lo:hi, lo:hi] = cls
    return vol


def make_case(pred, label, spacing=(1.0, 1.0, 1.0), name=None):
    image = nn.functional.one_hot(pred, NUM_CLASSES).permute(3, 0, 1, 2).float()
    case = {"image": image, "label": label[None], "spacing": spacing}
    if name:
        case["name"] = name
    return case


def run(cases, **kwargs):
    args = {"num_classes": NUM_CLASSES, "roi_size": 16, "sw_batch_size": 2}
    return evaluate(PredictionAsInput(), cases, **{**args, **kwargs})


def finite_or_none(x):
    return x is None or math.isfinite(x)


def test_perfect_prediction():
    label = cube(lo=4, hi=12, cls=2, base=cube())
    result = run([make_case(label, label, spacing=(2.0, 1.0, 0.5))])
    assert isinstance(result, EvalResult)
    assert result.dice == {1: 1.0, 2: 1.0} and result.dice_mean == 1.0
    assert result.hd95 == {1: 0.0, 2: 0.0} and result.hd95_mean == 0.0
    assert result.n_cases == 1


@pytest.mark.parametrize(
    "axis,shift,spacing,expected_mm",
    [
        (0, 2, (2.0, 1.0, 1.0), 4.0),  # 2 voxels along x at 2 mm
        (1, 2, (2.0, 1.0, 1.0), 2.0),  # same shift along y at 1 mm
        (2, 1, (1.0, 1.0, 3.0), 3.0),
        (0, 2, (1.0, 1.0, 1.0), 2.0),
    ],
)
def test_shifted_prediction_hd95_in_mm(axis, shift, spacing, expected_mm):
    label = cube()
    pred = torch.roll(label, shift, dims=axis)
    result = run([make_case(pred, label, spacing=spacing)])
    assert result.hd95[1] == pytest.approx(expected_mm)
    overlap = (8 - shift) / 8
    assert result.dice[1] == pytest.approx(overlap)


def test_spacing_from_metatensor_pixdim():
    label = cube()
    case = make_case(torch.roll(label, 2, dims=0), label)
    del case["spacing"]
    case["image"] = MetaTensor(case["image"], affine=torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0])))
    assert run([case]).hd95[1] == pytest.approx(4.0)


def test_missing_structures_policy_and_counts():
    two_classes = cube(lo=4, hi=10, cls=2, base=cube(lo=12, hi=20))
    only_1 = cube(lo=12, hi=20)
    empty = torch.zeros_like(only_1)
    cases = [
        make_case(two_classes, two_classes, name="perfect"),  # both classes present and right
        make_case(only_1, two_classes, name="missed_2"),  # class 2 in label, not predicted
        make_case(two_classes, only_1, name="false_2"),  # class 2 predicted, not in label
        make_case(empty, empty, name="empty"),  # nothing anywhere
    ]
    result = run(cases)
    assert result.n_cases == 4
    assert result.missing[2] == {"n_missing_pred": 1, "n_missing_label": 1, "n_both_empty": 1}
    assert result.missing[1] == {"n_missing_pred": 0, "n_missing_label": 0, "n_both_empty": 1}
    per_case = {c["name"]: c for c in result.per_case}
    assert per_case["missed_2"]["dice"][2] == 0.0 and per_case["missed_2"]["hd95"][2] is None
    assert per_case["false_2"]["dice"][2] == 0.0 and per_case["false_2"]["hd95"][2] is None
    assert per_case["empty"]["dice"] == {1: 1.0, 2: 1.0} and per_case["empty"]["hd95"] == {1: None, 2: None}
    # class 2: Dice (1 + 0 + 0 + 1) / 4; HD95 only from the "perfect" case
    assert result.dice[2] == pytest.approx(0.5)
    assert result.hd95[2] == 0.0
    values = [result.dice_mean, result.hd95_mean, *result.dice.values(), *result.hd95.values()]
    assert all(finite_or_none(v) for v in values)


def test_class_never_measurable_is_skipped_in_hd95_mean():
    label = cube()  # class 2 never present in label or prediction
    result = run([make_case(torch.roll(label, 2, dims=0), label)])
    assert result.hd95[2] is None
    assert result.hd95_mean == pytest.approx(result.hd95[1])
    assert result.dice[2] == 1.0


def test_to_dict_is_strict_json_with_class_names():
    label = cube()
    result = run([make_case(label, label)], class_names=["background", "liver", "tumour"])
    data = result.to_dict(per_case=True)
    text = json.dumps(data, allow_nan=False)
    assert set(json.loads(text)) == {"dice_mean", "hd95_mean", "n_cases", "per_class", "per_case"}
    assert set(data["per_class"]) == {"liver", "tumour"}
    assert data["per_class"]["tumour"] == {"dice": 1.0, "hd95": None, "n_missing_pred": 0, "n_missing_label": 0, "n_both_empty": 1}
    assert "per_case" not in result.to_dict()


def test_class_names_mapping_and_default_ids():
    label = cube()
    assert set(run([make_case(label, label)], class_names={1: "kidney"}).to_dict()["per_class"]) == {"kidney", "2"}
    assert set(run([make_case(label, label)]).to_dict()["per_class"]) == {"1", "2"}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_mode_restored(mode):
    model = PredictionAsInput()
    getattr(model, mode)()
    label = cube()
    evaluate(model, [make_case(label, label)], num_classes=NUM_CLASSES, roi_size=16)
    assert model.training == (mode == "train")


def test_mode_restored_on_error():
    model = PredictionAsInput().train()
    with pytest.raises(TrainingError):
        evaluate(model, [{"image": torch.zeros(3, 8, 8, 8), "label": torch.zeros(1, 8, 8, 8)}], num_classes=3, roi_size=8)
    assert model.training


def test_inputs_not_mutated_and_numpy_accepted():
    label = cube()
    case = make_case(torch.roll(label, 1, dims=1), label, name="np")
    case = {**case, "image": case["image"].numpy(), "label": case["label"].numpy().astype(np.float32)}
    snapshot = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in case.items()}
    result = run([case])
    assert result.per_case[0]["name"] == "np"
    for key, value in snapshot.items():
        assert np.array_equal(case[key], value) if isinstance(value, np.ndarray) else case[key] == value


def test_real_network_sliding_window_on_odd_size_volume():
    """A tiny hybrid net, a 40x36x24 volume and a 16^3 ROI: windows overlap and pad."""
    net = tiny_net(0, out_channels=2)
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(1, 40, 36, 24, dtype=torch.long)
    label[0, 10:20, 10:20, 5:15] = 1
    case = {"image": torch.randn(1, 40, 36, 24, generator=g), "label": label, "spacing": (1.5, 1.5, 2.0)}
    result = evaluate(net, [case], num_classes=2, roi_size=16, overlap=0.5)
    assert result.n_cases == 1 and 0.0 <= result.dice[1] <= 1.0
    assert finite_or_none(result.hd95_mean)
    assert net.training


def test_no_cases():
    result = run([])
    assert result.n_cases == 0 and result.dice_mean is None and result.hd95_mean is None
    json.dumps(result.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"roi_size": (16, 16)}, "roi_size"),
        ({"roi_size": 0}, "roi_size"),
        ({"sw_batch_size": 0}, "sw_batch_size"),
        ({"overlap": 1.0}, "overlap"),
        ({"class_names": ["a", "b"]}, "class_names"),
        ({"class_names": "abc"}, "class_names"),
        ({"progress": "loud"}, "progress"),
    ],
)
def test_bad_arguments(kwargs, field):
    with pytest.raises(ConfigError) as info:
        run([], **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    "case,match",
    [
        ({"image": torch.zeros(3, 8, 8, 8), "label": torch.zeros(1, 8, 8, 8)}, "no 'spacing'"),
        ({"image": torch.zeros(3, 8, 8, 8), "label": torch.zeros(1, 8, 8, 8), "spacing": (1, 0, 1)}, "3 positive"),
        ({"image": torch.zeros(8, 8, 8), "label": torch.zeros(1, 8, 8, 8), "spacing": (1, 1, 1)}, "image must be"),
        ({"image": torch.zeros(3, 8, 8, 8), "label": torch.zeros(1, 8, 8, 4), "spacing": (1, 1, 1)}, "label must be"),
        ({"image": torch.zeros(3, 8, 8, 8), "label": torch.full((1, 8, 8, 8), 3), "spacing": (1, 1, 1), "name": "x"}, "'x'.*outside"),
        ({"image": torch.zeros(2, 8, 8, 8), "label": torch.zeros(1, 8, 8, 8), "spacing": (1, 1, 1)}, "2 output channels"),
        ({"label": torch.zeros(1, 8, 8, 8)}, "must be a dict"),
    ],
)
def test_bad_case_names_it(case, match):
    with pytest.raises(TrainingError, match=match):
        run([case], roi_size=8)


def _dice(a, b):
    a, b = a.bool(), b.bool()
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_regions_are_scored_on_union_masks():
    """A region (union of classes) gets its own Dice/HD95; a class swap inside it costs nothing there."""
    label = cube(lo=4, hi=12, cls=2, base=cube())  # class 1 shell around a class 2 core
    pred = cube(lo=4, hi=13, cls=1, base=cube(lo=8, hi=17))  # shifted; class 2 predicted as 1
    result = run([make_case(pred, label)], regions={"tumour": [1, 2], "core": [2]})
    assert result.region_dice["tumour"] == pytest.approx(_dice(pred > 0, label > 0))
    assert result.region_dice["core"] == 0.0  # core never predicted
    assert result.missing["core"]["n_missing_pred"] == 1
    assert result.region_hd95["tumour"] > 0 and result.region_hd95["core"] is None
    same = run([make_case(label.clamp(max=1), label)], regions={"tumour": [1, 2]})
    assert same.region_dice["tumour"] == 1.0 and same.dice[2] == 0.0
    summary = json.loads(json.dumps(result.to_dict()))
    assert set(summary["per_region"]) == {"tumour", "core"}
    assert summary["region_dice_mean"] == pytest.approx((result.region_dice["tumour"] + 0.0) / 2)
    assert "per_region" not in run([make_case(label, label)]).to_dict()


@pytest.mark.parametrize("regions", [{"r": [0]}, {"r": [3]}, {"r": []}, ["a"]])
def test_bad_regions_are_refused(regions):
    label = cube()
    with pytest.raises(ConfigError, match="regions"):
        run([make_case(label, label)], regions=regions)


def test_score_classes_reports_only_the_classes_a_partial_site_annotates():
    label = cube()  # class 1 only: the site does not draw class 2
    pred = cube(lo=4, hi=12, cls=2, base=cube())  # a class-2 region inside the class-1 cube
    result = run([make_case(pred, label)], score_classes=[1])
    assert list(result.dice) == [1] and result.dice[1] == pytest.approx(_dice(pred == 1, label == 1))
    assert result.dice_mean == result.dice[1]
    with pytest.raises(ConfigError, match="score_classes"):
        run([make_case(pred, label)], score_classes=[3])
