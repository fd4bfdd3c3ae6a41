"""HybridTransformerUNet: shapes for several sizes, gradients, parameter counts, bad arguments."""

import pytest
import torch

from fedsegnet.errors import ConfigError
from fedsegnet.networks import HybridTransformerUNet

TINY = {"channels": (8, 16, 32), "num_heads": 2, "num_layers": 1}
CPU = {"channels": (16, 32, 64), "num_heads": 4, "num_layers": 2}


@pytest.mark.parametrize(
    "size,norm",
    [
        ((32, 32, 32), "instance"),
        ((48, 48, 48), "instance"),
        ((32, 48, 64), "instance"),
        ((16, 8, 24), "batch"),
        ((16, 32, 16), "group"),
    ],
)
def test_output_shape(size, norm):
    torch.manual_seed(0)
    net = HybridTransformerUNet(in_channels=2, out_channels=4, norm=norm, **TINY)
    with torch.no_grad():
        out = net(torch.randn(2, 2, *size))
    assert out.shape == (2, 4, *size)
    assert out.dtype == torch.float32


def test_default_and_cpu_preset_shape():
    torch.manual_seed(0)
    net = HybridTransformerUNet(1, 3, **CPU).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


@pytest.mark.parametrize("kwargs", [TINY, {**TINY, "num_layers": 0}, {**TINY, "dropout": 0.1}])
def test_gradient_reaches_every_parameter(kwargs):
    torch.manual_seed(0)
    net = HybridTransformerUNet(1, 3, **kwargs)
    net(torch.randn(2, 1, 16, 16, 16)).square().mean().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


@pytest.mark.parametrize("kwargs,low,high", [(TINY, 50_000, 200_000), (CPU, 250_000, 800_000)])
def test_parameter_count(kwargs, low, high):
    n = sum(p.numel() for p in HybridTransformerUNet(1, 3, **kwargs).parameters())
    assert low < n < high


def test_size_independent_of_input_any_divisible_size():
    """The depthwise-conv position encoding has no fixed token count: one net, many sizes."""
    net = HybridTransformerUNet(1, 2, **TINY).eval()
    with torch.no_grad():
        for size in [(16, 16, 16), (24, 40, 16), (64, 32, 32)]:
            assert net(torch.randn(1, 1, *size)).shape == (1, 2, *size)


def test_eval_is_deterministic_with_dropout():
    torch.manual_seed(0)
    net = HybridTransformerUNet(1, 2, dropout=0.2, **{k: v for k, v in TINY.items()}).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_keeps_arguments_as_attributes():
    net = HybridTransformerUNet(1, 3, channels=[8, 16, 32], num_heads=2, num_layers=1, mlp_ratio=3.0)
    assert (net.in_channels, net.out_channels, net.channels) == (1, 3, (8, 16, 32))
    assert (net.num_heads, net.num_layers, net.mlp_ratio, net.norm) == (2, 1, 3.0, "instance")
    assert net.size_divisor == 8


@pytest.mark.parametrize("shape,match", [((1, 1, 12, 16, 16), "divisible by 8"), ((1, 2, 16, 16, 16), "expected input"), ((1, 16, 16, 16), "expected input")])
def test_bad_input_shape(shape, match):
    net = HybridTransformerUNet(1, 2, **TINY)
    with pytest.raises(ValueError, match=match):
        net(torch.randn(*shape))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"out_channels": 1.5}, "out_channels"),
        ({"channels": (16,)}, "channels"),
        ({"channels": (16, 0)}, "channels"),
        ({"channels": "16"}, "channels"),
        ({"num_heads": 3}, "num_heads"),
        ({"num_layers": -1}, "num_layers"),
        ({"mlp_ratio": 0}, "mlp_ratio"),
        ({"dropout": 1.0}, "dropout"),
        ({"norm": "layer"}, "norm"),
    ],
)
def test_bad_arguments(kwargs, field):
    args = {"in_channels": 1, "out_channels": 2, **kwargs}
    with pytest.raises(ConfigError) as info:
        HybridTransformerUNet(**args)
    assert info.value.field == field
    if field == "norm":
        assert "instance" in str(info.value)
