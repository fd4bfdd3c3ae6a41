"""Local training speed: the FLARE Learner's train task against a plain MONAI training loop.

Both run the same network, loss, optimiser, batches (the same cached MONAI loader settings) and
patch size in one process, alternating A/B blocks so machine noise hits both alike. The Learner side
is the real ``SegLearner.train`` task (global weights in a DXO -> local steps -> update DXO), without
its post-training validation, which is evaluation, not training. Reported: voxels per second of
each and their ratio (Learner / plain); the goal is an overhead of at most 5% (ratio >= 0.95).

    python benchmarks/throughput.py                      # CPU, cpu preset, 32^3
    python benchmarks/throughput.py --preset gpu --device cuda --steps 20   # SwinUNETR 96^3, AMP
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def plain_monai_loop(model, batches, steps, optimizer, loss_fn, device, amp):
    """The textbook MONAI training loop (as in MONAI's 3D segmentation tutorials)."""
    model.train()
    scaler = torch.amp.GradScaler("cuda") if (amp and device.type == "cuda") else None
    voxels = 0
    for _ in range(steps):
        batch = next(batches)
        x, y = batch["image"].to(device), batch["label"].to(device)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            with torch.autocast("cuda"):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        voxels += x.shape[0] * x[0, 0].numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return voxels


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--device", default=None)
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per timed block")
    p.add_argument("--blocks", type=int, default=5, help="A/B block pairs")
    p.add_argument("--size", type=int, default=None, help="synthetic volume edge (default: 1.5x patch)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)

    from nvflare.apis.dxo import DXO, DataKind, from_shareable
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.signal import Signal

    from fedsegnet.config import build_train_config
    from fedsegnet.data.synth import synthesize
    from fedsegnet.flare.learner import SegLearner
    from fedsegnet.training.site import SiteTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    config = build_train_config(preset=args.preset, local_steps=args.steps, seed=0)
    patch = max(config.preset.patch_size)
    size = args.size or int(patch * 1.5)
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(tmp, sites=1, cases=8, size=size, seed=0, test_cases=1)
        site = SiteTrainer(Path(tmp) / "site-1", config, site="site-1", device=args.device)
        # Learner side: the real train task around this SiteTrainer.
        learner = SegLearner(analytic_sender_id="")
        learner.trainer, learner.site = site, "site-1"
        learner.trainer.evaluate = lambda *a, **k: _NoEval()  # time training only
        fl_ctx = FLContext()
        global_weights = site.get_weights()

        # Plain side: its own model/optimiser/loss of the same kind, and the same loader settings.
        from fedsegnet.data.transforms import build_train_loader, infinite_batches
        from fedsegnet.training.losses import build_loss
        from fedsegnet.training.loop import make_optimizer
        from fedsegnet.training.site import build_model_for

        torch.manual_seed(0)
        plain_model = build_model_for(config, site.in_channels, site.num_classes).to(site.device)
        plain_opt = make_optimizer(plain_model, lr=config.preset.lr, weight_decay=config.preset.weight_decay)
        plain_loss = build_loss("dice_ce")
        plain_batches = infinite_batches(
            build_train_loader(site.datalist.training, config.preset, site.num_classes, seed=1)
        )
        voxels_per_step = config.preset.batch_size * int(torch.tensor(config.preset.patch_size).prod())

        # warm-up both (caches filled, kernels chosen)
        plain_monai_loop(plain_model, plain_batches, 2, plain_opt, plain_loss, site.device, config.preset.amp)
        data = DXO(DataKind.WEIGHTS, data=global_weights).to_shareable()
        learner.train(data, fl_ctx, Signal())

        plain_rates, learner_rates = [], []
        for _ in range(args.blocks):
            t = time.perf_counter()
            vox = plain_monai_loop(plain_model, plain_batches, args.steps, plain_opt, plain_loss, site.device, config.preset.amp)
            plain_rates.append(vox / (time.perf_counter() - t))

            data = DXO(DataKind.WEIGHTS, data=global_weights).to_shareable()
            t = time.perf_counter()
            result = learner.train(data, fl_ctx, Signal())
            dt = time.perf_counter() - t
            assert from_shareable(result).data_kind == DataKind.WEIGHT_DIFF
            learner_rates.append(args.steps * voxels_per_step / dt)

    plain = statistics.median(plain_rates)
    learner_rate = statistics.median(learner_rates)
    row = {
        "preset": args.preset,
        "network": config.preset.network,
        "patch": list(config.preset.patch_size),
        "batch": config.preset.batch_size,
        "device": str(site.device),
        "threads": torch.get_num_threads(),
        "steps_per_block": args.steps,
        "blocks": args.blocks,
        "plain_voxels_per_s": plain,
        "learner_voxels_per_s": learner_rate,
        "ratio_learner_over_plain": learner_rate / plain,
        "overhead_pct": 100.0 * (1.0 - learner_rate / plain),
        "goal_overhead_pct_max": 5.0,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    print(f"{'loop':<22}{'voxels/s (median)':>20}")
    print(f"{'plain MONAI':<22}{plain:>20,.0f}")
    print(f"{'FedSegNet Learner':<22}{learner_rate:>20,.0f}")
    print(
        f"ratio Learner/plain = {row['ratio_learner_over_plain']:.3f} "
        f"(overhead {row['overhead_pct']:+.1f}%, goal <= 5%) on {row['device']}, {row['threads']} thread(s), "
        f"{row['network']} {row['patch']} batch {row['batch']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))
    return 0


class _NoEval:
    dice_mean = float("nan")


if __name__ == "__main__":
    sys.exit(main())
