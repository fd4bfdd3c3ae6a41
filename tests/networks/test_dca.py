"""DCATransformerUNet / DecoupledCrossAttention (FedOAP) and the personal/shared key split."""

import pytest
import torch
import torch.nn as nn

from fedsegnet.errors import ConfigError
from fedsegnet.networks import (
    NORM_PATTERNS,
    DCATransformerUNet,
    DecoupledCrossAttention,
    HybridTransformerUNet,
    build_network,
    norm_keys,
    split_personal,
)
from fedsegnet.networks.personal import match_any

TINY = {"channels": (8, 16, 32), "num_heads": 2, "num_layers": 1}
CPU = {"channels": (16, 32, 64), "num_heads": 4, "num_layers": 2}


def _net(seed=0, **kwargs):
    torch.manual_seed(seed)
    return DCATransformerUNet(1, 3, **{**TINY, **kwargs})


# --- shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "in_ch,out_ch,size,kwargs",
    [
        (1, 3, (16, 16, 16), {}),
        (2, 4, (32, 16, 24), {"dca_layers": 2, "dca_memory": 4}),
        (1, 2, (16, 32, 16), {"norm": "batch", "dca_memory": 0}),
        (3, 2, (16, 16, 32), {"norm": "group", "num_layers": 0}),
    ],
)
def test_output_shape(in_ch, out_ch, size, kwargs):
    torch.manual_seed(0)
    net = DCATransformerUNet(in_ch, out_ch, **{**TINY, **kwargs})
    with torch.no_grad():
        out = net(torch.randn(2, in_ch, *size))
    assert out.shape == (2, out_ch, *size)
    assert out.dtype == torch.float32


def test_cpu_preset_shape():
    torch.manual_seed(0)
    net = DCATransformerUNet(1, 3, **CPU).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


@pytest.mark.parametrize("num_memory", [0, 5])
def test_block_shape_and_residual(num_memory):
    torch.manual_seed(0)
    block = DecoupledCrossAttention(16, num_heads=4, num_memory=num_memory)
    x = torch.randn(2, 7, 16)
    assert block(x).shape == (2, 7, 16)
    nn.init.zeros_(block.out_proj.weight)
    nn.init.zeros_(block.out_proj.bias)
    assert torch.equal(block(x), x)  # the attention branch is added to x


def test_block_bad_input_shape():
    with pytest.raises(ValueError, match="expected tokens"):
        DecoupledCrossAttention(16, num_heads=4)(torch.randn(2, 7, 8))


# --- shared vs personal -------------------------------------------------------------------------


def test_personal_and_shared_parameters():
    net = _net(dca_layers=2)
    shared, personal = split_personal(net.state_dict().keys(), net.personal_patterns())
    for i in range(2):
        assert {f"dca.{i}.q_proj.weight", f"dca.{i}.q_proj.bias"} <= set(personal)
        assert {f"dca.{i}.norm_q.weight", f"dca.{i}.norm_kv.bias"} <= set(personal)
        assert {f"dca.{i}.k_proj.weight", f"dca.{i}.v_proj.weight", f"dca.{i}.out_proj.weight"} <= set(shared)
        assert f"dca.{i}.memory" in shared
    assert all(k.startswith(("dca.", "adapter.")) for k in personal)  # no backbone weight matches a pattern
    assert {"adapter.0.weight", "adapter.2.weight"} <= set(personal)
    assert sorted(shared + personal) == sorted(net.state_dict())


def test_personal_keys_add_every_norm_layer_to_the_patterns():
    net = _net(dca_layers=1)
    keys = net.personal_keys()
    assert set(split_personal(net.state_dict().keys(), net.personal_patterns())[1]) <= set(keys)
    assert set(norm_keys(net)) <= set(keys)
    assert not any(k.endswith(("k_proj.weight", "v_proj.weight", "memory")) or ".conv." in k for k in keys)
    assert _net(dca_layers=0).personal_keys() == []


def test_adapter_starts_as_the_identity_and_can_be_left_out():
    with_adapter, without = _net(dca_layers=1), _net(dca_layers=1, adapter=False)
    without.load_state_dict(with_adapter.state_dict(), strict=False)
    x = torch.randn(1, 1, 16, 16, 16)
    assert torch.allclose(with_adapter(x), without(x))
    assert without.adapter is None and "adapter.*" not in without.personal_patterns()
    with pytest.raises(ConfigError) as info:
        _net(adapter="yes")
    assert info.value.field == "adapter"


def test_every_personal_pattern_matches_a_key():
    net = _net(dca_layers=1)
    keys = list(net.state_dict())
    for pattern in net.personal_patterns():
        assert any(match_any(k, [pattern]) for k in keys), pattern
    assert _net(dca_layers=0).personal_patterns() == ()


@pytest.mark.parametrize("kwargs", [{}, {"dca_memory": 0}, {"num_layers": 0, "dca_layers": 2}, {"dropout": 0.1}])
def test_gradient_reaches_every_parameter(kwargs):
    net = _net(**kwargs)
    net(torch.randn(2, 1, 16, 16, 16)).square().mean().backward()
    # the adapter's first layer gets gradient once its zero-initialised output layer has moved
    no_grad = [n for n, p in net.named_parameters() if (p.grad is None or not p.grad.abs().sum() > 0) and not n.startswith("adapter.0.")]
    assert not no_grad
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    net.zero_grad()
    net(torch.randn(2, 1, 16, 16, 16)).square().mean().backward()
    assert net.adapter[0].weight.grad.abs().sum() > 0
    names = dict(net.named_parameters())
    for name in ("dca.0.q_proj.weight", "dca.0.k_proj.weight", "dca.0.v_proj.weight"):
        assert names[name].grad.abs().sum() > 0


def test_personal_parameters_matter():
    """Swapping only the personal parameters between two models changes the output."""
    a, b = _net(seed=0), _net(seed=1)
    for m in (a, b):
        m.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    _, personal = split_personal(a.state_dict().keys(), a.personal_patterns())
    with torch.no_grad():
        before = a(x)
        a.load_state_dict({**a.state_dict(), **{k: b.state_dict()[k] for k in personal}})
        after = a(x)
    assert not torch.allclose(before, after)


def test_zero_dca_layers_is_hybrid_unetr():
    hybrid = build_network("hybrid_unetr", in_channels=1, out_channels=2, patch_size=16, seed=3, **TINY)
    dca = build_network("dca_unetr", in_channels=1, out_channels=2, patch_size=16, seed=3, dca_layers=0, adapter=False, **TINY)
    assert list(hybrid.state_dict()) == list(dca.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(hybrid.eval()(x), dca.eval()(x))


def test_hybrid_checkpoint_warm_starts_dca():
    hybrid = HybridTransformerUNet(1, 3, **TINY)
    dca = _net(dca_layers=2)
    missing, unexpected = dca.load_state_dict(hybrid.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(k.startswith(("dca.", "adapter.")) for k in missing)


def test_parameter_overhead_vs_hybrid_is_18640_at_channels_16_32_64():
    """hybrid_unetr 415,635 vs dca_unetr 434,275 parameters (in 1, out 3, one DCA block, 16 memory
    tokens, the spatial adapter on 16 channels): +18,640 (+4.5%); the DCA queries and norms and the
    adapter (5,136) are personal, and so are the network's norm layers under ``personal_keys()``."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    hybrid = HybridTransformerUNet(1, 3, **CPU)
    dca = DCATransformerUNet(1, 3, **CPU)
    adapter = 16 * 27 + 16 + 16 * 16 + 16
    assert count(dca) - count(hybrid) == 4 * 64**2 + 8 * 64 + 16 * 64 + adapter == 18_640
    _, personal = split_personal(dca.state_dict().keys(), dca.personal_patterns())
    assert sum(dca.state_dict()[k].numel() for k in personal) == 64 * 64 + 64 + 4 * 64 + adapter == 5_136


def test_eval_is_deterministic_with_dropout():
    net = _net(dropout=0.2).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_keeps_arguments_as_attributes():
    net = _net(dca_layers=2, dca_memory=3)
    assert (net.dca_layers, net.dca_memory, len(net.dca)) == (2, 3, 2)
    block = net.dca[0]
    assert (block.dim, block.num_heads, block.num_memory, block.dropout, block.qkv_bias) == (32, 2, 3, 0.0, True)


# --- registry -----------------------------------------------------------------------------------


def test_registry_builds_dca_unetr():
    net = build_network("dca_unetr", in_channels=2, out_channels=3, patch_size=(16, 32, 16), channels=[8, 16, 32],
                        num_heads=2, num_layers=1, dca_layers=1)
    assert isinstance(net, DCATransformerUNet) and net.channels == (8, 16, 32)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 2, 16, 32, 16)).shape == (1, 3, 16, 32, 16)


@pytest.mark.parametrize(
    "patch,kwargs,field,match",
    [
        ((12, 16, 16), {}, "patch_size", "divisible by 8"),
        ((8, 8, 8), {}, "patch_size", "more than one voxel"),
        (32, {"no_such_arg": 1}, "network_kwargs.no_such_arg", "unknown argument"),
        (32, {"dca_layers": -1}, "dca_layers", "integer >= 0"),
    ],
)
def test_registry_checks(patch, kwargs, field, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_network("dca_unetr", in_channels=1, out_channels=2, patch_size=patch, **kwargs)
    assert info.value.field == field


# --- bad arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"dca_layers": -1}, "dca_layers"),
        ({"dca_layers": 1.5}, "dca_layers"),
        ({"dca_layers": True}, "dca_layers"),
        ({"dca_memory": -1}, "dca_memory"),
        ({"num_heads": 3}, "num_heads"),
        ({"num_heads": 0}, "num_heads"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arguments(kwargs, field):
    with pytest.raises(ConfigError) as info:
        DCATransformerUNet(1, 2, **{**TINY, **kwargs})
    assert info.value.field == field


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"dim": 0}, "dim"),
        ({"num_heads": 3}, "num_heads"),
        ({"num_heads": 0}, "num_heads"),
        ({"num_memory": -2}, "num_memory"),
        ({"dropout": -0.1}, "dropout"),
        ({"qkv_bias": "yes"}, "qkv_bias"),
    ],
)
def test_block_bad_arguments(kwargs, field):
    with pytest.raises(ConfigError) as info:
        DecoupledCrossAttention(**{"dim": 16, "num_heads": 4, **kwargs})
    assert info.value.field == field


# --- split_personal / norm_keys -----------------------------------------------------------------


def test_split_personal_is_pure_and_keeps_order():
    keys = ["a.weight", "dca.0.q_proj.weight", "b.bias", "dca.1.q_proj.bias"]
    patterns = ["dca.*.q_proj.*"]
    keys_before, patterns_before = list(keys), list(patterns)
    shared, personal = split_personal(keys, patterns)
    assert (shared, personal) == (["a.weight", "b.bias"], ["dca.0.q_proj.weight", "dca.1.q_proj.bias"])
    assert (keys, patterns) == (keys_before, patterns_before)
    assert split_personal(iter(keys), ()) == (keys, [])


@pytest.mark.parametrize(
    "patterns,bad",
    [(["dca.*.q_proj.*", "nope.*"], "nope.*"), ("dca.*", "dca.*"), ([""], ""), ([3], 3)],
)
def test_split_personal_bad_patterns(patterns, bad):
    with pytest.raises(ConfigError) as info:
        split_personal(["a.weight", "dca.0.q_proj.weight"], patterns)
    assert info.value.field == "patterns"
    assert info.value.value == bad


@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
@pytest.mark.parametrize("cls", [HybridTransformerUNet, DCATransformerUNet])
def test_norm_keys_by_type_agree_with_norm_patterns(cls, norm):
    net = cls(1, 2, norm=norm, **TINY)
    keys = norm_keys(net)
    assert keys == [k for k in net.state_dict() if match_any(k, NORM_PATTERNS)]
    assert "stem.adn.N.weight" in keys and "transformer_norm.weight" in keys  # conv norm, LayerNorm
    assert "transformer.0.norm1.weight" in keys
    if cls is DCATransformerUNet:
        assert {"dca.0.norm_q.weight", "dca.0.norm_kv.bias"} <= set(keys)
    if norm == "batch":
        assert {"stem.adn.N.running_mean", "stem.adn.N.num_batches_tracked"} <= set(keys)
    assert not any(k.endswith("conv.weight") for k in keys)


def test_norm_keys_any_names():
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3),
        nn.BatchNorm3d(4),
        nn.GroupNorm(2, 4),
        nn.InstanceNorm3d(4, affine=True),
        nn.InstanceNorm3d(4),  # no parameters or buffers
        nn.Flatten(),
        nn.LayerNorm(8),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert norm_keys(model) == [
        "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "2.weight", "2.bias", "3.weight", "3.bias", "6.weight", "6.bias",
    ]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert norm_keys(nn.Linear(2, 2)) == []
