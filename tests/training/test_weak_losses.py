"""Losses of weaker labels on toy volumes: the marginal loss is DiceCE when every class is annotated;
a box loss never rewards foreground outside the box; a tag loss suppresses an absent class."""

import pytest
import torch
from monai.losses import DiceCELoss

from fedsegnet.errors import ConfigError
from fedsegnet.training.weak_losses import (
    WeakSupervisionLoss,
    box_loss,
    exclusion_loss,
    marginal_dice_ce,
    pseudo_labels,
    tag_loss,
)

C = 3
SHAPE = (2, C, 12, 12, 12)


def _logits(seed=0, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _label(seed=1):
    return torch.randint(0, C, (SHAPE[0], 1, *SHAPE[2:]), generator=torch.Generator().manual_seed(seed))


def _box(lo=3, hi=9, cls=1):
    boxes = torch.zeros(SHAPE[0], C - 1, *SHAPE[2:])
    boxes[:, cls - 1, lo:hi, lo:hi, lo:hi] = 1
    return boxes


def test_marginal_loss_equals_dice_ce_when_every_class_is_annotated():
    logits, label = _logits(), _label()
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, label)
    assert torch.allclose(marginal_dice_ce(logits, label, [1, 2]), expected, atol=1e-6)
    assert float(exclusion_loss(logits, label, [1, 2])) == 0.0


def test_marginal_loss_does_not_care_how_label_0_splits_between_background_and_unannotated():
    logits, label = _logits(), _label().clamp(max=1)  # site annotates class 1 only
    swapped = logits.clone()
    swapped[:, [0, 2]] = logits[:, [2, 0]]  # background <-> unannotated class 2
    assert torch.allclose(marginal_dice_ce(logits, label, [1]), marginal_dice_ce(swapped, label, [1]), atol=1e-5)
    assert not torch.allclose(DiceCELoss(to_onehot_y=True, softmax=True)(logits, label),
                              DiceCELoss(to_onehot_y=True, softmax=True)(swapped, label))  # fmt: skip


def test_exclusion_loss_penalises_unannotated_classes_on_annotated_voxels():
    label = torch.zeros(SHAPE[0], 1, *SHAPE[2:], dtype=torch.long)
    label[:, :, 2:6, 2:6, 2:6] = 1
    calm, bad = torch.zeros(SHAPE), torch.zeros(SHAPE)
    bad[:, 2] = 5.0  # class 2 (unannotated) predicted where the site says class 1
    assert exclusion_loss(bad, label, [1]) > exclusion_loss(calm, label, [1]) > 0
    with pytest.raises(ConfigError):
        marginal_dice_ce(calm, label, [3])


def test_box_loss_never_rewards_foreground_outside_its_box():
    boxes = _box(cls=2)
    logits = _logits().requires_grad_(True)
    teacher = _logits(seed=7) * 4
    box_loss(logits, boxes, teacher).backward()
    outside = boxes[:, 1] == 0
    assert (logits.grad[:, 2][outside] >= 0).all()  # raising class 2 outside its box never lowers the loss
    assert (logits.grad[:, 1] >= 0).all()  # no class-1 box anywhere: class 1 is never rewarded
    base = box_loss(logits.detach(), boxes, teacher)
    more = logits.detach().clone()
    more[:, 2][outside] += 2.0
    assert box_loss(more, boxes, teacher) > base


def test_box_loss_follows_confident_pseudo_labels_inside_and_the_tightness_prior():
    boxes = _box(cls=1)
    teacher = torch.zeros(SHAPE)
    teacher[:, 1, 4:8, 4:8, 4:8] = 10.0  # the teacher sees the object in the box centre
    teacher[:, 2] = 10.0  # ... and class 2 everywhere, which the box does not allow
    labels, confident = pseudo_labels(teacher, torch.cat([torch.ones_like(boxes[:, :1]), boxes], 1), 0.8)
    assert (labels[:, 4:8, 4:8, 4:8] == 1).all() and not (labels == 2).any()
    good, empty = torch.zeros(SHAPE), torch.zeros(SHAPE)
    good[:, 1, 4:8, 4:8, 4:8] = 6.0
    good[:, 0] = 3.0
    empty[:, 0] = 6.0
    assert box_loss(good, boxes, teacher) < box_loss(empty, boxes, teacher)
    assert box_loss(good, boxes, None, tightness_weight=1.0) < box_loss(empty, boxes, None, tightness_weight=1.0)
    with pytest.raises(ConfigError, match="boxes"):
        box_loss(good, boxes[:, :1], teacher)


def test_tag_loss_suppresses_an_absent_class():
    tags = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # class 1 present, class 2 absent
    logits = _logits().requires_grad_(True)
    tag_loss(logits, tags, _logits(seed=3)).backward()
    assert (logits.grad[:, 2] > 0).all()  # every voxel: lower class 2
    high = _logits().detach().clone()
    high[:, 2] += 3.0
    assert tag_loss(high, tags) > tag_loss(_logits(), tags)


def test_tag_presence_term_only_where_the_teacher_sees_the_class():
    tags = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    logits = torch.zeros(SHAPE)
    unsure = torch.zeros(SHAPE)  # teacher probabilities 1/3: below the presence gate
    sure = torch.zeros(SHAPE)
    sure[:, 2, 5, 5, 5] = 8.0
    base = tag_loss(logits, tags, unsure, pseudo_weight=0.0, presence_weight=1.0)
    assert float(base) == 0.0
    assert float(tag_loss(logits, tags, sure, pseudo_weight=0.0, presence_weight=1.0)) > 0.0


def test_weak_supervision_loss_dispatch_ramp_and_arguments():
    logits, label = _logits(), _label()
    voxel = WeakSupervisionLoss("voxel", C)
    assert torch.allclose(voxel(logits, label), DiceCELoss(to_onehot_y=True, softmax=True)(logits, label))
    box = WeakSupervisionLoss("box", C, ramp_rounds=4)
    assert box.needs_teacher and [box.ramp(r) for r in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert torch.isfinite(box(logits, _box(), teacher=_logits(seed=2), round=3))
    with pytest.raises(ConfigError, match="tags"):
        WeakSupervisionLoss("tag", C)(logits, label)
    partial = WeakSupervisionLoss("partial", C, annotated=[1])
    assert torch.isfinite(partial(logits, label.clamp(max=1)))
    for kwargs, field in (({"kind": "scribble"}, "label_kind"), ({"threshold": 0.0}, "pseudo_threshold"),
                          ({"ramp_rounds": -1}, "pseudo_ramp_rounds"), ({"tightness_weight": -1}, "tightness_weight")):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            WeakSupervisionLoss(**{"kind": "box", "num_classes": C, **kwargs})
        assert err.value.field == field


def test_box_core_teaches_the_class_without_a_teacher_except_under_another_class_box():
    boxes = _box(lo=2, hi=10, cls=1)  # organ box
    boxes[:, 1, 5:7, 5:7, 5:7] = 1  # a lesion box inside it
    cores = torch.zeros_like(boxes)
    cores[:, 0, 4:8, 4:8, 4:8] = 1
    cores[:, 1, 5:7, 5:7, 5:7] = 1
    with_core = torch.cat([boxes, cores], dim=1)
    organ, empty = torch.zeros(SHAPE), torch.zeros(SHAPE)
    organ[:, 1, 4:8, 4:8, 4:8] = 6.0
    organ[:, 2, 5:7, 5:7, 5:7] = 12.0  # the lesion inside the organ core
    empty[:, 0] = 6.0
    args = dict(teacher=None, tightness_weight=0.0)
    assert box_loss(organ, with_core, **args) < box_loss(empty, with_core, **args)
    as_organ = organ.clone()
    as_organ[:, 2] = 0.0  # the lesion voxels predicted as organ instead
    assert box_loss(organ, with_core, **args) < box_loss(as_organ, with_core, **args)  # the lesion core wins there
    assert torch.isclose(box_loss(organ, boxes, **args), box_loss(organ, with_core, **args, core_weight=0.0))


def test_partial_site_learns_an_unannotated_structure_the_global_model_sees():
    """A liver-only site's tumour voxels are 0; where the global model is sure they are tumour, the
    site learns tumour there instead of letting background absorb them."""
    label = torch.zeros(SHAPE[0], 1, *SHAPE[2:], dtype=torch.long)
    label[:, :, 2:10, 2:10, 2:10] = 1
    label[:, :, 5:7, 5:7, 5:7] = 0  # a hole in the organ: the unannotated lesion
    teacher = torch.zeros(SHAPE)
    teacher[:, 1] = 5.0 * (label[:, 0] == 1)
    teacher[:, 2, 5:7, 5:7, 5:7] = 9.0
    loss = WeakSupervisionLoss("partial", C, annotated=[1], ramp_rounds=0)
    lesion, background = torch.zeros(SHAPE), torch.zeros(SHAPE)
    for x in (lesion, background):
        x[:, 1] = 6.0 * (label[:, 0] == 1)
        x[:, 0] = 6.0 * (label[:, 0] == 0)
    lesion[:, 2, 5:7, 5:7, 5:7] = 12.0  # predicts the lesion in the hole
    assert loss(lesion, label, teacher=teacher) < loss(background, label, teacher=teacher)
    # without a teacher, the marginal loss cannot tell them apart
    assert torch.isclose(loss(lesion, label), loss(background, label), atol=0.05)
