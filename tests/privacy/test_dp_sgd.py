"""PrivateTraining: per-case gradients, clipping bounds one case's contribution, refused layers,
a few DP steps of the tiny preset's network, and which of the project's networks it trains."""

import copy
import math

import pytest
import torch

from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.transforms import crops_per_volume
from fedsegnet.errors import ConfigError
from fedsegnet.networks import build_network
from fedsegnet.privacy import (
    DPSettings,
    PrivateTraining,
    build_case_loader,
    cases_per_step,
    check_private_model,
    per_sample_gradients,
    replace_batchnorm,
)
from fedsegnet.training.loop import make_optimizer
from fedsegnet.training.losses import build_loss

from .conftest import TINY16

K = 2  # crops per case


def _net(**kwargs):
    return build_network("hybrid_unetr", in_channels=1, out_channels=3, patch_size=16, seed=0, **{**TINY16.network_kwargs, **kwargs})


def _batch(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n * K, 1, 16, 16, 16, generator=g),
        "label": torch.randint(0, 3, (n * K, 1, 16, 16, 16), generator=g).float(),
    }


def _cat(*batches) -> dict:
    return {key: torch.cat([b[key] for b in batches]) for key in ("image", "label")}


def _linear_loss(logits, label):
    """A loss whose gradient grows with the label's scale (DiceCE's is bounded)."""
    return (logits * label).mean()


def _private(model, optimizer, *, clip=1.0, seed=0, loss_fn=_linear_loss) -> PrivateTraining:
    return PrivateTraining(
        model, optimizer, DPSettings(mode="patient", noise=1.0, clip=clip), n_cases=8, cases_per_step=2,
        crops_per_case=K, planned_steps=10, loss_fn=loss_fn, noise_generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _case_gradient(model, batch, loss_fn=build_loss("dice_ce")) -> torch.Tensor:
    model.zero_grad()
    loss_fn(model(batch["image"]), batch["label"]).backward()
    return _flat(p.grad for p in model.parameters())


def test_per_sample_gradients_add_up_to_the_batch_gradient_and_match_each_sample():
    model = _net()
    batch = _batch(2)
    with torch.no_grad():
        logits = model(batch["image"])
    logits.requires_grad_(True)
    loss = build_loss("dice_ce")
    sum(loss(logits[c * K : (c + 1) * K], batch["label"][c * K : (c + 1) * K]) for c in range(2)).backward()
    grads = per_sample_gradients(model, batch["image"], logits.grad)
    names = [n for n, _ in model.named_parameters()]
    assert set(grads) == set(names) and all(grads[n].shape[0] == 2 * K for n in names)
    for c in range(2):  # the k crops of case c add up to grad loss(case c)
        case = {key: v[c * K : (c + 1) * K] for key, v in batch.items()}
        expected = _case_gradient(model, case)
        got = _flat(grads[n][c * K : (c + 1) * K].sum(0) for n in names)
        assert float((got - expected).norm() / expected.norm()) < 1e-4


def test_clipping_bounds_one_cases_contribution_to_the_update():
    """Neighbouring batches: the same three cases with and without a case whose gradient is
    huge. With the same noise draw, the updates differ by at most lr * clip / (q * n_cases)."""
    lr, clip = 0.5, 1.0
    others, huge = _batch(3, seed=1), _batch(1, seed=2)
    huge["label"] = huge["label"] * 1e6
    model = _net()
    assert _case_gradient(copy.deepcopy(model), huge, _linear_loss).norm() > 1e4 * clip
    updates = []
    for batch in (others, _cat(others, huge)):
        m = copy.deepcopy(model)
        private = _private(m, torch.optim.SGD(m.parameters(), lr=lr), clip=clip, seed=7)
        before = _flat(p.detach().clone() for p in m.parameters())
        private.step(batch)
        updates.append(_flat(p.detach() for p in m.parameters()) - before)
    bound = lr * clip / (private.sample_rate * private.n_cases)
    assert float((updates[1] - updates[0]).norm()) <= bound * (1 + 1e-4)
    plain = copy.deepcopy(model)  # without DP the huge case moves the model far more
    unclipped = lr * _case_gradient(plain, huge, _linear_loss).norm() / (private.sample_rate * private.n_cases)
    assert unclipped > 1e4 * bound


@pytest.mark.parametrize("build,layer", [(lambda: _net(norm="batch"), "'stem.adn.N' (BatchNorm3d)"), (lambda: torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2, affine=False)), "'1' (BatchNorm3d)")])
def test_batchnorm_is_refused_naming_the_layer_and_the_alternative(build, layer):
    model = build()
    with pytest.raises(ConfigError) as e:
        _private(model, make_optimizer(model, 1e-3, 0.0))
    assert e.value.field == "network"
    assert f"layer {layer}: BatchNorm mixes the cases of a batch" in str(e.value)
    assert "use GroupNorm or InstanceNorm (e.g. network_kwargs norm='group' or 'instance')" in str(e.value)


def test_batchnorm_is_replaced_when_asked():
    model = _net(norm="batch")
    fixed = replace_batchnorm(model)
    check_private_model(fixed)
    assert not any("running_mean" in k for k in fixed.state_dict())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())  # the original is kept
    with pytest.raises(ConfigError, match="norm='layer': unknown replacement"):
        replace_batchnorm(model, norm="layer")


def test_dropout_and_running_statistics_are_refused():
    with pytest.raises(ConfigError, match=r"\(Dropout\): dropout p=0.1 is not supported under DP"):
        check_private_model(_net(dropout=0.1))
    with pytest.raises(ConfigError, match=r"layer '0' \(InstanceNorm3d\): We do not support tracking running stats"):
        check_private_model(torch.nn.Sequential(torch.nn.InstanceNorm3d(2, affine=True, track_running_stats=True)))


def test_bad_arguments_are_refused():
    model = _net()
    with pytest.raises(ConfigError, match="dp='none': PrivateTraining needs dp='patient'"):
        PrivateTraining(model, make_optimizer(model, 1e-3, 0.0), DPSettings(), n_cases=4, cases_per_step=2, crops_per_case=K, planned_steps=1, loss_fn=build_loss())
    partial = torch.optim.SGD(list(model.parameters())[:3], lr=0.1)
    with pytest.raises(ConfigError, match="optimizer='SGD': must hold exactly the model's trainable parameters"):
        _private(model, partial)
    private = _private(model, make_optimizer(model, 1e-3, 0.0))
    with pytest.raises(ConfigError, match=r"batch=\(3, 1, 16, 16, 16\): image and label must hold the same n \* 2 crops"):
        private.step({"image": torch.zeros(3, 1, 16, 16, 16), "label": torch.zeros(3, 1, 16, 16, 16)})


def test_the_tiny_preset_network_trains_dp_steps_from_the_case_loader(dp_site):
    cases = load_datalist(dp_site).training
    loader = build_case_loader(cases, TINY16, 3, 1, seed=0, generator=torch.Generator().manual_seed(3))
    model = _net()
    settings = DPSettings(mode="patient", noise=1.5, clip=1.0, budget=6.0)
    private = PrivateTraining(
        model, make_optimizer(model, 3e-3, 1e-5), settings, n_cases=len(cases), cases_per_step=cases_per_step(TINY16),
        crops_per_case=crops_per_volume(TINY16), planned_steps=30, loss_fn=build_loss("dice_ce"),
    )  # fmt: skip
    before = [p.detach().clone() for p in model.parameters()]
    spent = []
    for batch in loader:  # one pass: int(1 / q) = 3 steps
        loss = private.step(batch)
        assert loss is None or math.isfinite(loss)
        spent.append(private.spent())
    assert private.accountant.steps == len(spent) == 3
    assert 0 < spent[0] < spent[1] < spent[2]
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    empty = private.step(loader.collate_fn([]))  # no case drawn: noise only, still composed
    assert empty is None and private.accountant.steps == 4
    assert private.budget_refusal(1) is None  # sigma 1.5 at q = 1/3: epsilon 3.4 after 5 steps, 7.6 after 30
    assert private.budget_refusal(26).startswith("privacy budget: 26 more steps would spend epsilon 7.6")
    restarted = PrivateTraining(
        model, make_optimizer(model, 3e-3, 1e-5), settings, n_cases=len(cases), cases_per_step=cases_per_step(TINY16),
        crops_per_case=crops_per_volume(TINY16), planned_steps=30, loss_fn=build_loss("dice_ce"),
    )  # fmt: skip
    restarted.load_state_dict(private.state_dict())
    assert restarted.spent() == pytest.approx(private.spent())


NETWORKS = [
    ("dca_unetr", 16, {"channels": (8, 16, 32), "num_heads": 2, "num_layers": 1}),
    ("segresnet", 16, {"init_filters": 8}),
    ("swin_unetr", 32, {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "norm_name": ["group", {"num_groups": 4}]}),
    ("unetr", 16, {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 2}),
]


@pytest.mark.parametrize("name,patch,kwargs", NETWORKS, ids=[n for n, _, _ in NETWORKS])
def test_the_projects_other_networks_get_exact_per_sample_gradients(name, patch, kwargs):
    """Opacus's hooks fail on MONAI's in-place residual additions and its functorch mode refuses
    SwinUNETR's buffers; the whole-network torch.func gradients work for every registered network."""
    model = build_network(name, in_channels=1, out_channels=2, patch_size=patch, seed=0, **kwargs)
    check_private_model(model)
    x = torch.randn(2, 1, patch, patch, patch, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    backprops = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    grads = per_sample_gradients(model, x, backprops)
    model.zero_grad()
    (model(x) * backprops).sum().backward()
    used = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    expected = _flat(p.grad for _, p in used)
    got = _flat(grads[n].sum(0) for n, _ in used)
    assert float((got - expected).norm() / expected.norm()) < 1e-4
