"""An in-process federation: the sites' :class:`SiteTrainer` and the server's aggregation in one loop.

Benchmarks compare aggregation methods over many seeds and scenarios; a FLARE simulator run per
cell would spend most of its time starting processes. This loop runs the same code the FLARE job
runs (``SiteTrainer.train_round`` and ``evaluate`` at each site, the uplink codec with error
feedback, the server round of the FLARE aggregator, :class:`~fedsegnet.aggregation.ServerRound`,
``global += update``) without FLARE's messaging; the FLARE wiring itself is exercised by the
simulator tests. Faults (a site sending a scaled or random update) are applied to what the server
receives, as a malicious or broken site would send them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from fedsegnet.aggregation import METHODS, AdaptiveAggregation, CompactUpdate, ServerRound, update_norm
from fedsegnet.config import PersonalConfig, TrainConfig
from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.transforms import build_eval_dataset
from fedsegnet.training.evaluate import evaluate
from fedsegnet.training.loop import state_dict_for_exchange
from fedsegnet.training.personal import personal_key_names
from fedsegnet.training.site import SiteTrainer, build_model_for, eval_cases, pick_device, site_label_map

logger = logging.getLogger(__name__)

FAULTS = ("scale", "random")


def faulty_update(update: Mapping, mode: str, *, factor: float = 10.0, seed: int = 0) -> dict[str, np.ndarray]:
    """What a broken or malicious site sends instead of its update (the input is not modified).

    Args:
        update: the honest update ``{name: array}``.
        mode: ``"scale"`` (every value times ``factor``) or ``"random"`` (Gaussian noise with each
            tensor's own standard deviation, so the norm looks ordinary but the direction is noise).
        factor: the scale of ``"scale"``. Defaults to 10.0.
        seed: seed of ``"random"``. Defaults to 0.

    Returns:
        ``{name: float32 array}``.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in FAULTS:
        raise ValueError(f"mode={mode!r}: unknown (valid: {', '.join(FAULTS)})")
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in update.items():
        arr = np.asarray(value, dtype=np.float32)
        if mode == "scale":
            out[name] = arr * np.float32(factor)
        else:
            out[name] = (rng.standard_normal(arr.shape) * float(arr.std())).astype(np.float32)
    return out


def _test_set(test_dir: Path, config: TrainConfig):
    datalist = load_datalist(test_dir)
    cases = list(datalist.test or datalist.validation)
    label_map = site_label_map(datalist, config.preset)
    return label_map, cases, build_eval_dataset(cases, config.preset, label_map=label_map)


def run_federation(
    site_dirs: Mapping[str, str | Path],
    config: TrainConfig,
    *,
    rounds: int,
    test_dir: str | Path | None = None,
    aggregation: str = "aam",
    aam: AdaptiveAggregation | None = None,
    trimmed_beta: float = 0.25,
    codec=None,
    proximal_loss: Callable | None = None,
    faults: Mapping[str, str] | None = None,
    device: str | None = None,
    on_round: Callable[[dict], None] | None = None,
    weak_loss: dict | None = None,
    personal=None,
    personal_dir: str | Path | None = None,
) -> dict:
    """Train a federation in this process and evaluate the final global model on a test set.

    Args:
        site_dirs: ``{site: folder with dataset.json}``.
        config: the training configuration every site uses (its seed also seeds the initial model).
        rounds: federated rounds, >= 1.
        test_dir: folder whose ``test`` (else ``validation``) cases the final model is evaluated
            on; never used for training. Defaults to None (no test evaluation).
        aggregation: one of :data:`fedsegnet.aggregation.METHODS`: ``"aam"``, ``"mean"`` (FedAvg:
            sample-count weights), ``"median"`` or ``"trimmed_mean"``; every method passes the
            server's gate first, as in the FLARE job. Defaults to ``"aam"``.
        aam: the mechanism (gate settings and norm history for every method, weights for
            ``"aam"``). Defaults to None (``AdaptiveAggregation()``).
        trimmed_beta: share trimmed at each end for ``"trimmed_mean"``, as the FLARE aggregator's
            argument. Defaults to 0.25.
        codec: uplink codec (e.g. ``SparseQuantCodec()``), used with per-site error feedback as
            in the FLARE job. Defaults to None (dense float32 updates).
        proximal_loss: ``proximal_loss(local, global) -> scalar`` for every site (FedProx).
            Defaults to None.
        faults: ``{site: "scale" | "random"}``: what those sites send instead of their update.
            Defaults to None.
        device: torch device. Defaults to None (CUDA when available).
        on_round: called with each round's record. Defaults to None.
        weak_loss: settings of the weak-label sites' loss (``SiteTrainer(weak_loss=...)``).
            Defaults to None.
        personal: every site's :class:`~fedsegnet.config.PersonalConfig` (personal keys are
            left out of the updates and the aggregation, as in the FLARE job). Defaults to None.
        personal_dir: where the sites keep their personal state. Defaults to None (memory only).

    Returns:
        ``{"test": EvalResult.to_dict() or None, "rounds": [per-round records], "seconds": float,
        "final_weights": {name: array}, "sites_test": {site: EvalResult.to_dict()}}``: with
        ``personal``, ``sites_test`` scores each site's personalised model (``finetune``: the final
        global model fine-tuned there) on the site's own ``test`` split (sites without one are
        left out);
        a round record holds per site what the FLARE aggregator records (accepted, gate reason,
        weight, signals for ``aam``), the training loss and the update norm.
    """
    from fedsegnet.compression import ErrorFeedback, decode_payload

    if aggregation not in METHODS:
        raise ValueError(f"aggregation={aggregation!r}: unknown (valid: {', '.join(METHODS)})")
    if int(rounds) < 1:
        raise ValueError(f"rounds={rounds!r}: must be >= 1")
    faults = dict(faults or {})
    unknown = sorted(set(faults) - set(site_dirs))
    if unknown:
        raise ValueError(f"faults: unknown site(s) {unknown} (sites: {sorted(site_dirs)})")
    t0 = time.perf_counter()
    trainers = {
        site: SiteTrainer(Path(d), config, site=site, device=device, proximal_loss=proximal_loss, weak_loss=weak_loss,
                          personal=personal, personal_dir=personal_dir)
        for site, d in site_dirs.items()
    }
    first = next(iter(trainers.values()))
    num_classes, in_channels = first.num_classes, first.in_channels
    torch.manual_seed(config.seed)
    model = build_model_for(config, in_channels, num_classes)
    global_weights = {k: v.numpy().copy() for k, v in state_dict_for_exchange(model).items()}
    # the keys that stay at the sites: the server's own rule (its network and the job's PersonalConfig), as in the FLARE job
    kept = personal_key_names(model, personal or PersonalConfig())
    server = ServerRound(aggregation, aam if aam is not None else AdaptiveAggregation(), trimmed_beta)
    full_shapes = {k: tuple(v.shape) for k, v in global_weights.items()}
    shapes = server.shared_shapes(full_shapes, kept)
    feedback = {site: ErrorFeedback(codec, name=site) for site in trainers} if codec is not None else {}
    records = []
    want_signals = aggregation == "aam"  # the sites' validation Dice feed only AAM
    for rnd in range(int(rounds)):
        received, reports, sites_rec = {}, {}, {}
        for site, trainer in trainers.items():
            val_global = trainer.evaluate(weights=trainer.with_personal_keys(global_weights)).dice_mean if want_signals else None
            update, stats = trainer.train_round(global_weights, round=rnd)
            val_local = trainer.evaluate().dice_mean if want_signals else None
            if site in faults:
                update = faulty_update(update, faults[site], seed=config.seed * 1000 + rnd)
            if codec is not None:
                generator = torch.Generator().manual_seed(config.seed * 7919 + rnd)
                update = decode_payload(feedback[site].compress(update, generator=generator), reference=shapes, sparse="packed")
            received[site] = CompactUpdate(update)
            reports[site] = {
                "n_train": trainer.n_train, "label_kind": trainer.datalist.label_kind,
                "agreement": stats.get("agreement"), "val_dice_global": val_global, "val_dice_local": val_local,
            }  # fmt: skip
            sites_rec[site] = {"loss": stats["loss_mean"], "norm": received[site].norm(), **reports[site]}
        result = server.round(received, reports, full_shapes, round=rnd, expected_personal=kept)
        combined = result.update
        for site, r in result.record["sites"].items():
            sites_rec[site].update(r)
        if combined is not None:
            global_weights = {k: (v + combined[k]).astype(np.float32) if k in combined else v for k, v in global_weights.items()}
        record = {"round": rnd, "method": aggregation, "sites": sites_rec, "update_norm": None if combined is None else update_norm(combined)}
        records.append(record)
        logger.info(
            "round %d: %s", rnd,
            ", ".join(f"{s} w={'n/a' if r.get('weight') is None else format(r['weight'], '.3f')} ({r.get('gate')})"
                      for s, r in sites_rec.items()),
        )  # fmt: skip
        if on_round is not None:
            on_round(record)
    test = None
    if test_dir is not None:
        label_map, cases, dataset = _test_set(Path(test_dir), config)
        dev = pick_device(device)
        first.set_weights(global_weights)
        p = config.preset
        result = evaluate(
            first.model, eval_cases(cases, dataset), num_classes=num_classes, roi_size=p.patch_size,
            sw_batch_size=p.sw_batch_size, overlap=p.sw_overlap, device=dev, amp=p.amp,
            class_names=label_map.class_names, regions=label_map.regions,
        )  # fmt: skip
        test = result.to_dict()
    sites_test = {}
    if personal is not None:
        for site, trainer in trainers.items():
            if not trainer.datalist.evaluable("test"):
                continue
            if trainer.personal.method == "finetune":
                trainer.finetune(global_weights, round=int(rounds))
            mine = trainer.evaluate(weights=trainer.personal_weights(global_weights), split="test", max_cases=0)
            sites_test[site] = mine.to_dict()
    return {"test": test, "rounds": records, "seconds": time.perf_counter() - t0, "final_weights": global_weights,
            "sites_test": sites_test}  # fmt: skip

