"""AAM's data-quality signal at the site (label agreement) and the FedProx proximal term in the loop."""

import copy

import pytest
import torch
import torch.nn as nn
from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

from fedsegnet.errors import ConfigError
from fedsegnet.training import build_loss, label_agreement, make_optimizer, train_steps

from .helpers import sphere_batch, tiny_net


class _Oracle(nn.Module):
    """Predicts the class ids found in channel 0 of its input (a model that agrees with some labels)."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        ids = x[:, 0].round().long().clamp(0, self.num_classes - 1)
        return torch.nn.functional.one_hot(ids, self.num_classes).permute(0, 4, 1, 2, 3).float()


def _batches(label_fn, n=2):
    out = []
    for seed in range(n):
        y = sphere_batch(seed)["label"]  # a ball of class 1
        y[..., 6:10, 6:10, :][y[..., 6:10, 6:10, :] > 0] = 2  # a class-2 core where it overlaps the ball
        out.append({"image": y.clone(), "label": label_fn(y.clone())})
    return out


def test_agreement_is_one_for_labels_the_model_reproduces():
    assert label_agreement(_Oracle(), _batches(lambda y: y), num_classes=3, device="cpu") == pytest.approx(1.0)


def test_agreement_drops_with_corrupted_labels():
    clean = label_agreement(_Oracle(), _batches(lambda y: y), num_classes=3, device="cpu")
    missed = label_agreement(_Oracle(), _batches(lambda y: torch.where(y == 2, torch.ones_like(y), y)), num_classes=3, device="cpu")
    shifted = label_agreement(_Oracle(), _batches(lambda y: torch.roll(y, 4, dims=2)), num_classes=3, device="cpu")
    assert missed < clean - 0.3 and shifted < clean - 0.3


def test_agreement_without_foreground_is_none_and_bad_count_is_named():
    empty = [{"image": torch.zeros(1, 1, 8, 8, 8), "label": torch.zeros(1, 1, 8, 8, 8)}]
    assert label_agreement(_Oracle(), empty, num_classes=3, device="cpu") is None
    with pytest.raises(ConfigError, match="n_batches"):
        label_agreement(_Oracle(), empty, num_classes=3, device="cpu", n_batches=0)


def test_agreement_draws_only_n_batches_from_an_iterator():
    it = iter(_batches(lambda y: y, n=5))
    label_agreement(_Oracle(), it, num_classes=3, device="cpu", n_batches=2)
    assert len(list(it)) == 3


def test_proximal_term_keeps_the_model_closer_to_the_global_one():
    batch = sphere_batch(0)
    moved = {}
    for mu in (0.0, 10.0):
        model = tiny_net(0)
        reference = copy.deepcopy(model).requires_grad_(False)
        prox = PTFedProxLoss(mu=mu)
        calls = []

        def reg(m, prox=prox, reference=reference, calls=calls):
            calls.append(1)
            return prox(m, reference)

        train_steps(model, [batch], steps=15, optimizer=make_optimizer(model, lr=1e-2, weight_decay=0.0), loss_fn=build_loss("dice_ce"),
                    device="cpu", regularizer=reg)  # fmt: skip
        assert len(calls) == 15
        moved[mu] = sum(float((p - r).square().sum()) for p, r in zip(model.parameters(), reference.parameters()))
    assert moved[10.0] < 0.5 * moved[0.0]
