"""A site of each label kind trains with its own loss: box and tag sites draw pseudo-labels from the
received global model, a partial site uses the marginal + exclusion losses; weak-label cases are
not scored, and the AAM agreement signal says None where it cannot be measured."""

import numpy as np
import pytest
import torch

from fedsegnet.config import build_train_config
from fedsegnet.data.synth import synthesize
from fedsegnet.training.signals import weak_label_agreement
from fedsegnet.training.site import SiteTrainer
from fedsegnet.training.weak_losses import WeakSupervisionLoss


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    synthesize(root, sites=4, cases=3, size=24, seed=2, test_cases=0,
               label_kinds="site-2:box,site-3:tag,site-4:partial:2", orientation={"site-2": "LPS"})  # fmt: skip
    return root


@pytest.mark.parametrize("site, kind", [("site-1", "voxel"), ("site-2", "box"), ("site-3", "tag"), ("site-4", "partial")])
def test_each_kind_trains_a_round(mixed, site, kind):
    config = build_train_config(preset="tiny", local_steps=2, seed=0, amp=False, num_workers=0, patch_size=16)
    trainer = SiteTrainer(mixed / site, config, site=site, device="cpu", weak_loss={"ramp_rounds": 0})
    assert trainer.datalist.label_kind == kind
    assert isinstance(trainer.loss_fn, WeakSupervisionLoss) == (kind != "voxel")
    if kind == "partial":
        assert trainer.loss_fn.annotated == (2,)
    weights = trainer.get_weights()
    update, stats = trainer.train_round(weights, round=3)
    assert stats["steps"] == 2 and np.isfinite(stats["loss_mean"])
    assert any(np.abs(v).sum() > 0 for v in update.values())
    assert stats["agreement"] is None or 0.0 <= stats["agreement"] <= 1.0
    result = trainer.evaluate()
    assert result.n_cases == (0 if kind in ("box", "tag") else 1)


class _AsLogits(torch.nn.Module):
    """Fake model: its input is the logits (feed it a one-hot prediction)."""

    def forward(self, x):
        return x


def _one_hot(pred):
    return torch.nn.functional.one_hot(pred, 3).permute(0, 4, 1, 2, 3).float() * 10


def test_weak_label_agreement_is_1_for_a_perfect_model_and_drops_for_a_wrong_one():
    boxes = torch.zeros(1, 2, 16, 16, 16)
    boxes[:, 0, 2:12, 3:10, 4:14] = 1
    pred = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    ball = torch.zeros(16, 16, 16, dtype=torch.bool)
    x, y, z = torch.meshgrid(*(torch.arange(16.0),) * 3, indexing="ij")
    ball = ((x - 6.5) / 5) ** 2 + ((y - 6) / 3.5) ** 2 + ((z - 8.5) / 5) ** 2 <= 1.0  # touches every box face
    pred[0][ball] = 1
    perfect = [{"image": _one_hot(pred), "label": boxes}]
    assert weak_label_agreement(_AsLogits(), perfect, kind="box", num_classes=3, device="cpu") == pytest.approx(1.0)
    spill = pred.clone()
    spill[0, 13:16] = 1  # foreground outside the box
    half = pred.clone()
    half[0, :, :, :9] = 0  # the object found in half of the box only
    for wrong in (spill, half):
        a = weak_label_agreement(_AsLogits(), [{"image": _one_hot(wrong), "label": boxes}], kind="box", num_classes=3, device="cpu")
        assert a < 0.9
    tags = torch.tensor([[1.0, 0.0]])
    lesion = pred.clone()
    lesion[pred == 1] = 2  # predicts the class the tags say is absent
    assert weak_label_agreement(_AsLogits(), [{"image": _one_hot(pred), "tags": tags}], kind="tag", num_classes=3, device="cpu") == 1.0
    assert weak_label_agreement(_AsLogits(), [{"image": _one_hot(lesion), "tags": tags}], kind="tag", num_classes=3, device="cpu") == 0.0
