"""CUDA-only paths: AMP training (autocast + GradScaler) and AMP evaluation. Skipped without a GPU."""

import math

import pytest
import torch

from fedsegnet.networks import build_network
from fedsegnet.training import build_loss, evaluate, make_optimizer, train_steps

from .helpers import sphere_batch, tiny_net

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_amp_training_and_evaluation_on_cuda():
    net = tiny_net(0).cuda()
    scaler = torch.amp.GradScaler("cuda")
    result = train_steps(
        net, [sphere_batch(0)], steps=10, optimizer=make_optimizer(net, 3e-3, 1e-5), loss_fn=build_loss(),
        device="cuda", amp=True, scaler=scaler,
    )
    assert result["steps"] == 10 and result["loss_last"] < result["loss_first"]
    assert scaler.get_scale() > 0
    batch = sphere_batch(1, batch=1)
    case = {"image": batch["image"][0], "label": batch["label"][0].long(), "spacing": (1.0, 1.0, 1.0)}
    metrics = evaluate(net, [case], num_classes=3, roi_size=16, device="cuda", amp=True)
    assert all(math.isfinite(v) for v in metrics.dice.values())


def test_gpu_preset_swin_unetr_trains_one_step():
    net = build_network("swin_unetr", in_channels=1, out_channels=3, patch_size=96, feature_size=48).cuda()
    result = train_steps(
        net, [{"image": torch.randn(2, 1, 96, 96, 96), "label": torch.randint(0, 3, (2, 1, 96, 96, 96))}],
        steps=1, optimizer=make_optimizer(net, 1e-4, 1e-5), loss_fn=build_loss(), device="cuda", amp=True,
    )
    assert math.isfinite(result["loss_last"])
