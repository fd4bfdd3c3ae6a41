"""Loss registry."""

import pytest
import torch

from fedsegnet.errors import ConfigError
from fedsegnet.training import LOSSES, build_loss


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("label_dtype", [torch.long, torch.float32])
def test_losses_take_logits_and_class_ids(name, label_dtype):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8, generator=g, requires_grad=True)
    label = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=g).to(label_dtype)
    loss = build_loss(name)(logits, label)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None


def test_perfect_logits_give_lower_loss():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (1, 1, 8, 8, 8), generator=g)
    perfect = torch.nn.functional.one_hot(label[:, 0], 3).permute(0, 4, 1, 2, 3).float() * 20
    loss = build_loss()
    assert loss(perfect, label) < loss(torch.zeros_like(perfect), label)


def test_default_is_dice_ce_with_overrides():
    loss = build_loss(lambda_ce=0.5)
    assert type(loss).__name__ == "DiceCELoss"
    assert loss.lambda_ce == 0.5


def test_unknown_name():
    with pytest.raises(ConfigError, match="unknown loss") as info:
        build_loss("focal_tversky")
    assert info.value.field == "loss"
    assert "dice_ce" in str(info.value)


def test_unknown_kwarg():
    with pytest.raises(ConfigError) as info:
        build_loss("dice", lambda_ce=1.0)
    assert info.value.field == "loss_kwargs.lambda_ce"


def test_bad_kwarg_value():
    with pytest.raises(ConfigError) as info:
        build_loss("dice_ce", lambda_dice=-1.0)
    assert info.value.field == "loss_kwargs"
