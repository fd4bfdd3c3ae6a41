"""Network registry: every entry builds and has the right output shape; bad settings name the field."""

import pytest
import torch
from monai.networks.nets import SwinUNETR

from fedsegnet.config import PRESETS
from fedsegnet.errors import ConfigError
from fedsegnet.networks import NETWORKS, HybridTransformerUNet, build_network, register_network

# (name, patch_size, kwargs): small but valid settings for a CPU shape test.
SMALL = [
    ("hybrid_unetr", (32, 32, 32), {"channels": (8, 16, 32), "num_heads": 2, "num_layers": 1}),
    ("hybrid_unetr", (16, 32, 48), {"channels": [8, 16, 32], "num_heads": 2, "num_layers": 1}),
    ("swin_unetr", (32, 32, 64), {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}),
    ("swin_unetr", (32, 32, 32), {"feature_size": 12, "depths": (1, 1, 1, 1), "norm_name": ["group", {"num_groups": 4}]}),
    ("unetr", (32, 32, 32), {"feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4}),
    ("unetr", (16, 16, 32), {"feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4}),
    ("segresnet", (32, 32, 32), {"init_filters": 8}),
]


def test_registry_names():
    assert sorted(NETWORKS) == ["dca_unetr", "hybrid_unetr", "segresnet", "swin_unetr", "unetr"]


@pytest.mark.parametrize("name,patch,kwargs", SMALL, ids=lambda v: str(v))
def test_builds_and_output_shape(name, patch, kwargs):
    torch.manual_seed(0)
    net = build_network(name, in_channels=2, out_channels=3, patch_size=patch, **kwargs)
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, *patch))
    assert out.shape == (1, 3, *patch)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_swin_unetr_group_norm_trains_at_32():
    """The fix suggested by the 32^3 error message works in training mode."""
    torch.manual_seed(0)
    net = build_network(
        "swin_unetr", in_channels=1, out_channels=2, patch_size=32,
        feature_size=12, depths=(1, 1, 1, 1), norm_name=("group", {"num_groups": 4}),
    )
    net.train()
    net(torch.randn(1, 1, 32, 32, 32)).sum().backward()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_monai_swin_unetr_instance_norm_fails_at_32(mode):
    """Why build_network rejects swin_unetr at 32^3 with instance norm (MONAI 1.6 behaviour):
    the deepest feature map is 1x1x1, and instance norm fails even in eval mode."""
    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1))
    getattr(net, mode)()
    with pytest.raises(ValueError, match="more than 1 spatial element"), torch.no_grad():
        net(torch.randn(1, 1, 32, 32, 32))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build(preset):
    """Every preset's network and network_kwargs are accepted (construction only)."""
    p = PRESETS[preset]
    net = build_network(p.network, in_channels=1, out_channels=3, patch_size=p.patch_size, **p.network_kwargs)
    assert sum(t.numel() for t in net.parameters()) > 0


def test_unknown_name_lists_options():
    with pytest.raises(ConfigError, match="unknown network") as info:
        build_network("vnet", in_channels=1, out_channels=2, patch_size=32)
    assert info.value.field == "network"
    for name in NETWORKS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "name,patch,match",
    [
        ("swin_unetr", (48, 48, 48), "divisible by 32"),
        ("swin_unetr", (64, 64, 40), "divisible by 32"),
        ("swin_unetr", (32, 32, 32), "1x1x1"),
        ("unetr", (24, 32, 32), "divisible by 16"),
        ("segresnet", (36, 32, 32), "divisible by 8"),
        ("hybrid_unetr", (12, 16, 16), "divisible by 8"),
        ("hybrid_unetr", (8, 8, 8), "more than one voxel"),
        ("hybrid_unetr", (0, 8, 8), "3 ints >= 1"),
        ("hybrid_unetr", (32, 32), "3 ints >= 1"),
        ("hybrid_unetr", "32", "3 ints >= 1"),
    ],
)
def test_bad_patch_size_names_field(name, patch, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_network(name, in_channels=1, out_channels=2, patch_size=patch)
    assert info.value.field == "patch_size"


@pytest.mark.parametrize("name", sorted(["hybrid_unetr", "swin_unetr", "unetr", "segresnet"]))
def test_unknown_kwarg_names_it(name):
    patch = 64 if name == "swin_unetr" else 32
    with pytest.raises(ConfigError, match="unknown argument") as info:
        build_network(name, in_channels=1, out_channels=2, patch_size=patch, no_such_arg=1)
    assert info.value.field == "network_kwargs.no_such_arg"


@pytest.mark.parametrize("name,key", [("unetr", "img_size"), ("swin_unetr", "spatial_dims"), ("segresnet", "spatial_dims")])
def test_reserved_kwarg_rejected(name, key):
    with pytest.raises(ConfigError, match="set by build_network") as info:
        build_network(name, in_channels=1, out_channels=2, patch_size=64, **{key: 3})
    assert info.value.field == f"network_kwargs.{key}"


@pytest.mark.parametrize(
    "name,kwargs,field",
    [
        ("swin_unetr", {"feature_size": 10}, "network_kwargs"),
        ("unetr", {"hidden_size": 96, "num_heads": 5}, "network_kwargs"),
        ("hybrid_unetr", {"num_heads": 5}, "num_heads"),
        ("hybrid_unetr", {"norm": "layer"}, "norm"),
    ],
)
def test_invalid_kwarg_value(name, kwargs, field):
    with pytest.raises(ConfigError) as info:
        build_network(name, in_channels=1, out_channels=2, patch_size=64, **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("field,value", [("in_channels", 0), ("out_channels", True), ("seed", "1")])
def test_bad_channels_or_seed(field, value):
    args = {"in_channels": 1, "out_channels": 2, "patch_size": 32, field: value}
    with pytest.raises(ConfigError) as info:
        build_network("hybrid_unetr", **args)
    assert info.value.field == field


def test_seed_gives_same_weights_and_keeps_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_network("hybrid_unetr", in_channels=1, out_channels=2, patch_size=32, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_network("hybrid_unetr", in_channels=1, out_channels=2, patch_size=32, seed=7)
    c = build_network("hybrid_unetr", in_channels=1, out_channels=2, patch_size=32, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_register_network_rejects_duplicates():
    with pytest.raises(ConfigError, match="already registered"):
        register_network("hybrid_unetr")(HybridTransformerUNet)
