"""Perturbed boundary loss (FedOAP): band geometry, zero/positive cases, locality, gradients, seeds."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fedsegnet.errors import ConfigError
from fedsegnet.training.boundary_loss import PerturbedBoundaryLoss, boundary_band, boundary_consistency

SIZE = 24


def cube_label(batch: int = 1, size: int = SIZE, side: int = 16, inner: int = 0) -> torch.Tensor:
    """Class 1: a ``side``^3 cube centred in the volume; class 2: an ``inner``^3 cube inside it."""
    label = torch.zeros(batch, 1, size, size, size, dtype=torch.long)
    lo = (size - side) // 2
    label[:, :, lo:lo + side, lo:lo + side, lo:lo + side] = 1
    if inner:
        lo = (size - inner) // 2
        label[:, :, lo:lo + inner, lo:lo + inner, lo:lo + inner] = 2
    return label


def perfect_logits(label: torch.Tensor, num_classes: int = 3, scale: float = 50.0) -> torch.Tensor:
    return scale * F.one_hot(label[:, 0], num_classes).permute(0, 4, 1, 2, 3).float()


# --- boundary_band ------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 3])
def test_band_shape_and_width_of_a_cube(width):
    label = cube_label(batch=2)
    band = boundary_band(label, 3, width)
    assert band.shape == (2, 1, SIZE, SIZE, SIZE) and band.dtype == torch.bool
    # Chebyshev band: `width` voxels on each side of the cube's faces.
    assert int(band[0].sum()) == (16 + 2 * width) ** 3 - (16 - 2 * width) ** 3
    lo = (SIZE - 16) // 2
    centre_line = band[0, 0, :, SIZE // 2, SIZE // 2]
    expected = torch.zeros(SIZE, dtype=torch.bool)
    expected[lo - width:lo + width] = True
    expected[lo + 16 - width:lo + 16 + width] = True
    assert torch.equal(centre_line, expected)


@pytest.mark.parametrize("num_classes,width", [(2, 1), (3, 2), (5, 3)])
def test_band_is_union_of_per_class_dilation_minus_erosion(num_classes, width):
    g = torch.Generator().manual_seed(num_classes)
    label = torch.randint(0, num_classes, (2, 1, 12, 14, 16), generator=g)
    label[:, :, :6] = num_classes - 1  # a uniform slab: no boundary inside it
    onehot = F.one_hot(label[:, 0], num_classes).permute(0, 4, 1, 2, 3).float()
    k = 2 * width + 1
    dilation = F.max_pool3d(onehot, k, stride=1, padding=width)
    erosion = -F.max_pool3d(-onehot, k, stride=1, padding=width)
    expected = ((dilation - erosion) > 0).any(dim=1, keepdim=True)
    assert torch.equal(boundary_band(label, num_classes, width), expected)


def test_band_of_nested_classes_and_uniform_label():
    label = cube_label(side=16, inner=6)
    band = boundary_band(label, 3, 1)
    outer = 18**3 - 14**3
    inner = 8**3 - 4**3
    assert int(band.sum()) == outer + inner
    assert not boundary_band(torch.zeros(1, 1, 8, 8, 8), 3, 2).any()  # one class: no boundary
    assert not boundary_band(torch.ones(1, 1, 8, 8, 8), 2, 2).any()  # the volume edge is no boundary


def test_band_accepts_float_labels_and_does_not_modify_them():
    label = cube_label().float()
    before = label.clone()
    assert torch.equal(boundary_band(label, 2, 2), boundary_band(label.long(), 2, 2))
    assert torch.equal(label, before)


@pytest.mark.parametrize(
    "label,match",
    [
        (torch.zeros(1, 8, 8, 8), "expected label"),
        (torch.full((1, 1, 8, 8, 8), 3), r"in \[0, 3\)"),
        (torch.full((1, 1, 8, 8, 8), 0.5), "integer class ids"),
    ],
)
def test_band_bad_label(label, match):
    with pytest.raises(ValueError, match=match):
        boundary_band(label, 3, 1)


# --- boundary_consistency -----------------------------------------------------------------------


def test_zero_for_perfect_stable_prediction():
    label = cube_label(batch=2, inner=6)
    band = boundary_band(label, 3, 2)
    logits = perfect_logits(label, scale=50.0)
    loss = boundary_consistency(logits, logits.clone(), label, band)
    assert loss.ndim == 0 and 0.0 <= float(loss) < 1e-4
    # The documented bound: CE = log(1 + (C - 1) e^-s) < 1e-4 from s = 12 with 3 classes.
    logits12 = perfect_logits(label, scale=12.0)
    assert float(boundary_consistency(logits12, logits12, label, band)) < 1e-4


def test_positive_for_boundary_flip_and_for_stable_error():
    label = cube_label(inner=6)
    band = boundary_band(label, 3, 2)
    clean = perfect_logits(label)
    flipped_label = label.clone()
    flipped_label[band & (label == 1)] = 0  # the perturbed prediction loses the cube's rim
    flipped = perfect_logits(flipped_label)
    loss_flip = boundary_consistency(clean, flipped, label, band)
    assert float(loss_flip) > 1.0
    # Stable but wrong at the boundary: no KL, the CE alone is positive.
    stable_wrong = boundary_consistency(flipped, flipped.clone(), label, band)
    assert float(stable_wrong) > 1.0
    assert float(boundary_consistency(flipped, flipped.clone(), label, band, ce_weight=0.0)) == 0.0
    assert float(boundary_consistency(clean, flipped, label, band, ce_weight=0.0)) > 0.0


def test_logits_outside_the_band_have_no_effect():
    torch.manual_seed(0)
    label = cube_label(batch=2, inner=6)
    band = boundary_band(label, 3, 1)
    a, b = torch.randn(2, 2, 3, SIZE, SIZE, SIZE).unbind(0)
    loss = boundary_consistency(a, b, label, band)
    outside = ~band.expand_as(a)
    a2, b2 = a.clone(), b.clone()
    a2[outside] = 100 * torch.randn(int(outside.sum()))
    b2[outside] = float("nan")  # not even NaNs outside the band leak in
    assert torch.equal(boundary_consistency(a2, b2, label, band), loss)
    a2.requires_grad_(True)
    boundary_consistency(a2, b, label, band).backward()
    assert float(a2.grad[outside].abs().sum()) == 0.0
    assert float(a2.grad[~outside].abs().sum()) > 0.0


def test_empty_band_gives_grad_compatible_zero():
    label = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    logits = torch.randn(1, 3, 8, 8, 8, requires_grad=True)
    band = boundary_band(label, 3, 2)
    loss = boundary_consistency(logits, logits * 2, label, band)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None


def test_consistency_does_not_modify_inputs():
    torch.manual_seed(0)
    label = cube_label()
    band = boundary_band(label, 3, 2)
    a, b = torch.randn(2, 1, 3, SIZE, SIZE, SIZE).unbind(0)
    copies = [t.clone() for t in (a, b, label, band)]
    boundary_consistency(a, b, label, band)
    assert all(torch.equal(t, c) for t, c in zip((a, b, label, band), copies))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"logits_perturbed": torch.zeros(1, 3, 8, 8, 4)}, ValueError, "one shape"),
        ({"band": torch.zeros(1, 1, 8, 8, 8)}, ValueError, "bool"),
        ({"label": torch.zeros(1, 1, 8, 8, 4)}, ValueError, "expected label"),
        ({"kl_weight": -1.0}, ConfigError, "kl_weight"),
        ({"ce_weight": float("nan")}, ConfigError, "ce_weight"),
    ],
)
def test_consistency_bad_inputs(kwargs, error, match):
    args = {
        "logits": torch.zeros(1, 3, 8, 8, 8),
        "logits_perturbed": torch.zeros(1, 3, 8, 8, 8),
        "label": torch.zeros(1, 1, 8, 8, 8),
        "band": torch.ones(1, 1, 8, 8, 8, dtype=torch.bool),
        **kwargs,
    }
    with pytest.raises(error, match=match):
        boundary_consistency(**args)


# --- PerturbedBoundaryLoss ----------------------------------------------------------------------


def tiny_model(seed: int = 0, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, num_classes, 1))


def cube_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    label = cube_label(batch=2, inner=6)
    image = label.float() + 0.1 * torch.randn(label.shape, generator=g)
    return image, label


def test_loss_is_scalar_and_gradient_reaches_the_model():
    model = tiny_model()
    image, label = cube_batch()
    logits = model(image)
    loss = PerturbedBoundaryLoss(num_classes=3)(model, image, label, logits, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and float(loss.detach()) > 0
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


def test_deterministic_with_seeded_generator():
    model = tiny_model()
    image, label = cube_batch()
    pbl = PerturbedBoundaryLoss(num_classes=3, intensity_scale=0.1)
    with torch.no_grad():
        logits = model(image)
        runs = [pbl(model, image, label, logits, generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_perturb_scales_noise_to_each_image_and_keeps_the_input():
    image = torch.cat([torch.randn(1, 1, 8, 8, 8), 100 * torch.randn(1, 1, 8, 8, 8)])
    before = image.clone()
    pbl = PerturbedBoundaryLoss(num_classes=2, perturbation=0.1)
    out = pbl.perturb(image, torch.Generator().manual_seed(0))
    assert out.shape == image.shape and torch.equal(image, before)
    ratio = (out - image).flatten(1).std(dim=1) / image.flatten(1).std(dim=1)
    assert torch.allclose(ratio, torch.full((2,), 0.1), rtol=0.15)
    assert torch.equal(PerturbedBoundaryLoss(num_classes=2, perturbation=0.0).perturb(image), image)


def test_weight_scales_and_stable_model_scores_low():
    """A model whose prediction is the label and ignores the image scores ~0; weight multiplies."""
    image, label = cube_batch()

    def oracle(x):
        return perfect_logits(label)

    logits = oracle(image)
    g = torch.Generator().manual_seed(0)
    assert float(PerturbedBoundaryLoss(num_classes=3)(oracle, image, label, logits, generator=g)) < 1e-4
    model = tiny_model()
    with torch.no_grad():
        logits = model(image)
        one = PerturbedBoundaryLoss(num_classes=3)(model, image, label, logits, torch.Generator().manual_seed(1))
        two = PerturbedBoundaryLoss(num_classes=3, weight=2.0)(model, image, label, logits, torch.Generator().manual_seed(1))
    assert torch.allclose(two, 2 * one)


def test_empty_band_skips_the_model():
    calls = []

    def model(x):
        calls.append(1)
        return torch.zeros(1, 3, 8, 8, 8)

    logits = torch.randn(1, 3, 8, 8, 8, requires_grad=True)
    loss = PerturbedBoundaryLoss(num_classes=3)(model, torch.randn(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8), logits)
    assert float(loss.detach()) == 0.0 and loss.requires_grad and not calls
    loss.backward()


def test_keeps_arguments_as_attributes():
    pbl = PerturbedBoundaryLoss(num_classes=4, band_width=3, perturbation=0.2, intensity_scale=0.05, weight=0.5)
    assert (pbl.num_classes, pbl.band_width, pbl.perturbation, pbl.intensity_scale, pbl.weight) == (4, 3, 0.2, 0.05, 0.5)
    assert (pbl.kl_weight, pbl.ce_weight) == (1.0, 1.0)


def test_call_bad_shapes():
    pbl = PerturbedBoundaryLoss(num_classes=3)
    model = tiny_model()
    image, label = cube_batch()
    with pytest.raises(ValueError, match="expected logits"):
        pbl(model, image, label, torch.zeros(2, 2, SIZE, SIZE, SIZE))
    with pytest.raises(ValueError, match="disagree"):
        pbl(model, image[:1], label, torch.zeros(2, 3, SIZE, SIZE, SIZE))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"band_width": 0}, "band_width"),
        ({"band_width": True}, "band_width"),
        ({"perturbation": -0.1}, "perturbation"),
        ({"perturbation": float("inf")}, "perturbation"),
        ({"intensity_scale": 1.0}, "intensity_scale"),
        ({"weight": -1}, "weight"),
        ({"kl_weight": "1"}, "kl_weight"),
        ({"ce_weight": -0.5}, "ce_weight"),
    ],
)
def test_bad_arguments(kwargs, field):
    with pytest.raises(ConfigError) as info:
        PerturbedBoundaryLoss(**{"num_classes": 3, **kwargs})
    assert info.value.field == field


@pytest.mark.parametrize("kwargs,field", [({"num_classes": 1, "width": 1}, "num_classes"), ({"num_classes": 3, "width": 0}, "width")])
def test_band_bad_arguments(kwargs, field):
    with pytest.raises(ConfigError) as info:
        boundary_band(cube_label(), **kwargs)
    assert info.value.field == field


def test_a_small_lesion_rim_weighs_as_much_as_the_long_organ_boundary():
    """Class-balanced: errors only on the lesion's few band voxels are not diluted by the organ's many."""
    label = cube_label(side=16, inner=2)
    band = boundary_band(label, 3, 1)
    clean = perfect_logits(label)
    wrong_lesion = clean.clone()
    lesion = (label == 2).expand_as(clean)
    wrong_lesion[lesion] = 0.0  # the lesion voxels: uniform, unsure prediction under the perturbation
    loss = boundary_consistency(clean, wrong_lesion, label, band)
    per_voxel = boundary_consistency(clean, wrong_lesion, label, band & (label == 2))
    n_lesion, n_band = int((band & (label == 2)).sum()), int(band.sum())
    assert n_lesion * 20 < n_band  # the lesion is a small part of the band
    classes_in_band = len(torch.unique(label[band]))
    assert float(loss) == pytest.approx(float(per_voxel) / classes_in_band, rel=1e-4)
