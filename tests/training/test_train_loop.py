"""train_steps and make_optimizer."""

import math

import pytest
import torch

from fedsegnet.errors import ConfigError, FedSegNetError
from fedsegnet.training import TrainingError, build_loss, make_optimizer, train_steps

from .helpers import sphere_batch, tiny_net

KEYS = {"steps", "loss_first", "loss_last", "loss_mean", "seconds", "voxels", "aborted"}


def _run(net, batches, steps, **kwargs):
    return train_steps(
        net, batches, steps=steps, optimizer=make_optimizer(net, lr=3e-3, weight_decay=1e-5),
        loss_fn=build_loss(), device="cpu", **kwargs,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_decreases_on_fixed_batch(seed):
    net = tiny_net(seed)
    batch = sphere_batch(seed)
    result = _run(net, [batch], steps=12)
    assert set(result) == KEYS
    assert result["steps"] == 12 and not result["aborted"]
    assert result["loss_last"] < 0.8 * result["loss_first"]
    assert all(math.isfinite(result[k]) for k in ("loss_first", "loss_last", "loss_mean"))
    assert result["voxels"] == 12 * 2 * 16**3
    assert result["seconds"] > 0
    assert net.training


def test_is_reproducible_with_seeds():
    a = _run(tiny_net(0), [sphere_batch(0)], steps=3)
    b = _run(tiny_net(0), [sphere_batch(0)], steps=3)
    assert a["loss_last"] == pytest.approx(b["loss_last"], rel=1e-5)


def test_list_is_cycled_and_iterator_is_not():
    batches = [sphere_batch(0, batch=1), sphere_batch(1, batch=1)]
    assert _run(tiny_net(), batches, steps=5)["steps"] == 5
    with pytest.raises(TrainingError, match="step 3/5: batches ran out after 2") as info:
        _run(tiny_net(), iter(batches), steps=5)
    assert info.value.step == 3


def test_empty_batches():
    with pytest.raises(TrainingError, match="ran out after 0"):
        _run(tiny_net(), [], steps=1)


def test_should_stop_aborts_between_steps():
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2  # allow two steps

    result = _run(tiny_net(), [sphere_batch(0, batch=1)], steps=10, should_stop=should_stop)
    assert result["aborted"] and result["steps"] == 2
    assert result["voxels"] == 2 * 16**3


def test_abort_before_first_step():
    result = _run(tiny_net(), [sphere_batch(0, batch=1)], steps=3, should_stop=lambda: True)
    assert result["aborted"] and result["steps"] == 0
    assert result["loss_first"] is None and result["loss_mean"] is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises_naming_step(bad):
    net = tiny_net()
    calls = []

    def loss_fn(logits, label):
        calls.append(1)
        value = logits.mean() * 0
        return value + (bad if len(calls) == 2 else 1.0)

    with pytest.raises(TrainingError, match="step 2/4.*non-finite") as info:
        train_steps(net, [sphere_batch(0, batch=1)], steps=4, optimizer=make_optimizer(net, 1e-3, 0.0),
                    loss_fn=loss_fn, device="cpu")
    assert isinstance(info.value, FedSegNetError)
    assert info.value.step == 2


def test_amp_is_ignored_on_cpu():
    result = _run(tiny_net(), [sphere_batch(0, batch=1)], steps=2, amp=True)
    assert result["steps"] == 2


@pytest.mark.parametrize(
    "batch,match",
    [
        ({"image": torch.zeros(1, 1, 16, 16, 16)}, "no \\['label'\\]"),
        ({"image": torch.zeros(1, 16, 16, 16), "label": torch.zeros(1, 1, 16, 16, 16)}, "image"),
        ({"image": torch.zeros(1, 1, 16, 16, 16), "label": torch.zeros(1, 2, 16, 16, 16)}, "label"),
        ({"image": torch.zeros(1, 1, 16, 16, 16), "label": torch.zeros(1, 1, 16, 16, 8)}, "does not match"),
        ((torch.zeros(1, 1, 16, 16, 16),), "must be a dict"),
    ],
)
def test_bad_batch(batch, match):
    with pytest.raises(TrainingError, match=match):
        _run(tiny_net(), [batch], steps=1)


def test_batch_not_mutated():
    batch = sphere_batch(0, batch=1)
    image, label = batch["image"].clone(), batch["label"].clone()
    _run(tiny_net(), [batch], steps=1)
    assert set(batch) == {"image", "label"}
    assert torch.equal(batch["image"], image) and torch.equal(batch["label"], label)


def test_progress_force_writes_to_stderr(capsys):
    _run(tiny_net(), [sphere_batch(0, batch=1)], steps=2, progress="force", desc="site-1")
    assert "site-1" in capsys.readouterr().err


def test_progress_true_is_silent_without_tty(capsys):
    _run(tiny_net(), [sphere_batch(0, batch=1)], steps=1, progress=True)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kwargs,field", [({"steps": 0}, "steps"), ({"steps": 1.5}, "steps"), ({"steps": 1, "progress": "yes"}, "progress")])
def test_bad_arguments(kwargs, field):
    net = tiny_net()
    with pytest.raises(ConfigError) as info:
        train_steps(net, [sphere_batch(0)], optimizer=make_optimizer(net, 1e-3, 0.0), loss_fn=build_loss(),
                    device="cpu", **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("lr,wd,field", [(0, 0.0, "lr"), (float("nan"), 0.0, "lr"), (1e-3, -1.0, "weight_decay")])
def test_make_optimizer_bad_arguments(lr, wd, field):
    with pytest.raises(ConfigError) as info:
        make_optimizer(tiny_net(), lr, wd)
    assert info.value.field == field


def test_make_optimizer_is_adamw():
    opt = make_optimizer(tiny_net(), 1e-3, 1e-5)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["weight_decay"] == 1e-5


def test_metatensor_batches_are_accepted():
    from monai.data import MetaTensor

    batch = sphere_batch(0, batch=1)
    batch = {"image": MetaTensor(batch["image"]), "label": MetaTensor(batch["label"])}
    assert _run(tiny_net(), [batch], steps=1)["steps"] == 1
