"""An in-process federation: the sites' :class:`SiteTrainer` and the server's aggregation in one loop.

Benchmarks compare aggregation methods over many seeds and scenarios; a FLARE simulator run per
cell would spend most of its time starting processes. This loop runs the same code the FLARE job
runs (``SiteTrainer.train_round`` and ``evaluate`` at each site, the uplink codec with error
feedback, the server round of the FLARE aggregator, :class:`~fedsegnet.aggregation.ServerRound`,
``global += update``) without FLARE's messaging; the FLARE wiring itself is exercised by the
simulator tests. Faults (a site sending a scaled or random update) are applied to what the server
receives, as a malicious or broken site would send them.

The two baselines a federation is measured against run the same site code without a server:
:func:`run_local` (one site trains alone, as many rounds and steps as in the federation) and
:func:`run_centralized` (every site's training cases pooled into one site that trains for the
federation's total number of steps).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from fedsegnet.aggregation import METHODS, AdaptiveAggregation, CompactUpdate, ServerRound, update_norm
from fedsegnet.config import PersonalConfig, TrainConfig
from fedsegnet.data.datalist import load_datalist, write_datalist
from fedsegnet.errors import ConfigError, PrivacyBudgetSpent
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


def _initial_model(config: TrainConfig, in_channels: int, num_classes: int) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """The model every run starts from (the network of ``config`` built under ``torch.manual_seed(config.seed)``)
    and its weights ``{name: float32 array}`` (exchange keys)."""
    torch.manual_seed(config.seed)
    model = build_model_for(config, in_channels, num_classes)
    return model, {k: v.numpy().copy() for k, v in state_dict_for_exchange(model).items()}


def _own_test(trainer: SiteTrainer, weights: dict) -> dict | None:
    """``weights`` scored on every case of the site's own ``test`` split (None: the site has none)."""
    if not trainer.datalist.evaluable("test"):
        return None
    return trainer.evaluate(weights=weights, split="test", max_cases=0).to_dict()


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
    dp=None,
    secure_aggregation: Mapping | None = None,
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
        dp: every site's :class:`~fedsegnet.privacy.DPSettings` (patient-level DP-SGD, the noise
            for a target epsilon spread over ``rounds`` x ``local_steps``, as in the FLARE job). A
            site whose next round would pass ``dp_budget`` sits it out (its record says
            ``"missing": "budget"``); when every site does, the federation ends there. Defaults to
            None (no DP).
        secure_aggregation: run the secure rounds' arithmetic of the FLARE job
            (:class:`~fedsegnet.flare.secagg_workflow.SecureScatterAndGather`): weights from the sites'
            reports (:func:`~fedsegnet.aggregation.reported_weights`: AAM without divergence for
            ``"aam"``, counts for ``"mean"``), each round's plan (:func:`~fedsegnet.secagg.next_plan`),
            each site's weighted update through its :class:`~fedsegnet.secagg.SecAggErrorFeedback`,
            the ring sum decoded by the plan. The pairwise masks cancel in the sum (the protocol's
            tests prove it), so they are left out here. A mapping of the plan's settings: ``ratio``
            (``up_ratio``, 0.1), ``value_bits`` (``up_bits``, 4), ``block`` (256), ``scope``
            (``"tensor"``); ``{}`` takes these defaults. Not with ``codec``, ``personal`` or
            ``faults``. Defaults to None (plain rounds).

    Returns:
        ``{"test": EvalResult.to_dict() or None, "rounds": [per-round records], "seconds": float,
        "final_weights": {name: array}, "sites_test": {site: EvalResult.to_dict()}}``:
        ``sites_test`` scores the model each site ends with (the final global model; with
        ``personal`` the site's personalised one, ``finetune``: the final global model fine-tuned
        there) on the site's own ``test`` split (sites without one are left out);
        a round record holds per site what the FLARE aggregator records (accepted, gate reason,
        weight, signals for ``aam``), the training loss, the update norm and ``bytes_up`` (the
        encoded payload's array bytes, ``payload_nbytes``; float32 bytes without a codec); with
        ``dp``, ``dp``: the site's privacy report after the round.
    """

    from fedsegnet.compression import ErrorFeedback, decode_payload, payload_nbytes

    if aggregation not in METHODS:
        raise ValueError(f"aggregation={aggregation!r}: unknown (valid: {', '.join(METHODS)})")
    if int(rounds) < 1:
        raise ValueError(f"rounds={rounds!r}: must be >= 1")
    faults = dict(faults or {})
    if secure_aggregation is not None:
        unknown_keys = sorted(set(secure_aggregation) - {"ratio", "value_bits", "block", "scope"})
        if unknown_keys or codec is not None or personal is not None or faults or aggregation not in ("aam", "mean"):
            raise ValueError(
                f"secure_aggregation: plan settings ratio, value_bits, block, scope only (got {unknown_keys or 'ok'}); "
                "not with a codec, personalisation or faults, and with aggregation aam or mean"
            )
        return _run_secure(site_dirs, config, rounds=int(rounds), test_dir=test_dir, aggregation=aggregation, aam=aam,
                           proximal_loss=proximal_loss, device=device, on_round=on_round, weak_loss=weak_loss, dp=dp,
                           plan_args=dict(secure_aggregation))  # fmt: skip
    unknown = sorted(set(faults) - set(site_dirs))
    if unknown:
        raise ValueError(f"faults: unknown site(s) {unknown} (sites: {sorted(site_dirs)})")
    t0 = time.perf_counter()
    trainers = {
        site: SiteTrainer(Path(d), config, site=site, device=device, proximal_loss=proximal_loss, weak_loss=weak_loss,
                          personal=personal, personal_dir=personal_dir, dp=dp, planned_rounds=int(rounds))
        for site, d in site_dirs.items()
    }
    first = next(iter(trainers.values()))
    num_classes, in_channels = first.num_classes, first.in_channels
    model, global_weights = _initial_model(config, in_channels, num_classes)
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
            try:
                update, stats = trainer.train_round(global_weights, round=rnd)
            except PrivacyBudgetSpent as e:  # raised before anything is trained
                sites_rec[site] = {"missing": "budget", "detail": str(e)}
                continue
            # the received global model's score (evaluate leaves the site's trained model as it is)
            val_global = trainer.evaluate(weights=trainer.with_personal_keys(global_weights)).dice_mean if want_signals else None
            val_local = trainer.evaluate().dice_mean if want_signals else None
            if site in faults:
                update = faulty_update(update, faults[site], seed=config.seed * 1000 + rnd)
            if codec is not None:
                generator = torch.Generator().manual_seed(config.seed * 7919 + rnd)
                payload = feedback[site].compress(update, generator=generator)
                bytes_up = payload_nbytes(payload)
                update = decode_payload(payload, reference=shapes, sparse="packed")
            else:
                bytes_up = int(sum(np.asarray(v, dtype=np.float32).nbytes for v in update.values()))
            received[site] = CompactUpdate(update)
            reports[site] = {
                "n_train": trainer.n_train, "label_kind": trainer.datalist.label_kind,
                "agreement": stats.get("agreement"), "val_dice_global": val_global, "val_dice_local": val_local,
            }  # fmt: skip
            sites_rec[site] = {"loss": stats["loss_mean"], "norm": received[site].norm(), "bytes_up": bytes_up, **reports[site]}
            if "dp" in stats:
                sites_rec[site]["dp"] = stats["dp"]
        if not received:  # every site would pass its privacy budget: the federation ends with the model as it is
            records.append({"round": rnd, "method": aggregation, "sites": sites_rec, "update_norm": None})
            logger.info("round %d: no site can train within its privacy budget; stopping", rnd)
            break
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
    test, sites_test = _evaluate_final(trainers, global_weights, config, test_dir, device, int(rounds))
    return {"test": test, "rounds": records, "seconds": time.perf_counter() - t0, "final_weights": global_weights,
            "sites_test": sites_test}  # fmt: skip



def _evaluate_final(trainers: Mapping[str, SiteTrainer], global_weights: dict, config: TrainConfig, test_dir, device, rounds: int):
    """``(test result dict or None, {site: own test result})`` of the final global model."""
    first = next(iter(trainers.values()))
    test = None
    if test_dir is not None:
        label_map, cases, dataset = _test_set(Path(test_dir), config)
        first.set_weights(global_weights)
        p = config.preset
        test = evaluate(
            first.model, eval_cases(cases, dataset), num_classes=first.num_classes, roi_size=p.patch_size,
            sw_batch_size=p.sw_batch_size, overlap=p.sw_overlap, device=pick_device(device), amp=p.amp,
            class_names=label_map.class_names, regions=label_map.regions,
        ).to_dict()  # fmt: skip
    sites_test = {}
    for site, trainer in trainers.items():
        if not trainer.datalist.evaluable("test"):
            continue
        if trainer.personal.method == "finetune":
            trainer.finetune(global_weights, round=rounds)
        sites_test[site] = _own_test(trainer, trainer.personal_weights(global_weights))
    return test, sites_test


def _run_secure(site_dirs, config, *, rounds, test_dir, aggregation, aam, proximal_loss, device, on_round, weak_loss, dp, plan_args) -> dict:
    """:func:`run_federation` under secure aggregation (the arithmetic of the FLARE job's secure rounds)."""
    from fedsegnet.aggregation import reported_weights
    from fedsegnet.secagg import SecAggErrorFeedback, next_plan, unflatten
    from fedsegnet.secagg.masking import ring_sum

    t0 = time.perf_counter()
    trainers = {
        site: SiteTrainer(Path(d), config, site=site, device=device, proximal_loss=proximal_loss, weak_loss=weak_loss,
                          dp=dp, planned_rounds=rounds)
        for site, d in site_dirs.items()
    }  # fmt: skip
    first = next(iter(trainers.values()))
    _, global_weights = _initial_model(config, first.in_channels, first.num_classes)
    layout = tuple((k, tuple(v.shape)) for k, v in sorted(global_weights.items()) if np.issubdtype(v.dtype, np.floating))
    mechanism = (aam if aam is not None else AdaptiveAggregation()) if aggregation == "aam" else None
    peer_ratio = getattr(aam, "peer_cases_ratio", 2.0) if aam is not None else 2.0
    feedback = {site: SecAggErrorFeedback(site) for site in trainers}
    rng = np.random.default_rng(config.seed * 7919)  # the sites' stochastic rounding
    n = len(trainers)
    value_bits = int(plan_args.get("value_bits", 4))
    reports, scores, records = {}, None, []
    for rnd in range(rounds):
        plan = next_plan(
            rnd, layout, n, b"in-process", ratio=plan_args.get("ratio", 0.1), value_bits=value_bits,
            block=plan_args.get("block", 256), scope=plan_args.get("scope", "tensor"), mean_log_rms=scores,
        )  # fmt: skip
        counts = {s: int(t.n_train) for s, t in trainers.items()}
        kinds = {s: t.datalist.label_kind for s, t in trainers.items()}
        weights, signals = reported_weights(mechanism, counts, kinds, reports, peer_ratio)
        rings, sites_rec = [], {}
        for site, trainer in trainers.items():
            update, stats = trainer.train_round(global_weights, round=rnd)
            val_global = trainer.evaluate(weights=global_weights).dice_mean if mechanism is not None else None
            val_local = trainer.evaluate().dice_mean if mechanism is not None else None
            weighted = {k: weights[site] * np.asarray(update[k], dtype=np.float64) for k, _ in layout}
            rings.append(feedback[site].encode(weighted, plan, rng))
            reports[site] = {"agreement": stats.get("agreement"), "val_dice_global": val_global, "val_dice_local": val_local}
            sites_rec[site] = {"loss": stats["loss_mean"], "weight": weights[site], "n_train": counts[site],
                               "bytes_up": -(-plan.length * plan.ring_bits // 8), **reports[site],
                               **{k: v for k, v in signals.get(site, {}).items() if k in ("quality", "performance", "score")}}  # fmt: skip
        values, scores = plan.decode(ring_sum(rings, plan.length, plan.ring_bits), n)
        combined = unflatten(values, layout)  # the weights sum to 1: the weighted sum is the update
        global_weights = {k: (v + combined[k]).astype(np.float32) if k in combined else v for k, v in global_weights.items()}
        record = {"round": rnd, "method": f"secure_aggregation ({aggregation})", "sites": sites_rec,
                  "plan": plan.summary(), "update_norm": float(np.linalg.norm(values))}  # fmt: skip
        records.append(record)
        if on_round is not None:
            on_round(record)
    test, sites_test = _evaluate_final(trainers, global_weights, config, test_dir, device, rounds)
    return {"test": test, "rounds": records, "seconds": time.perf_counter() - t0, "final_weights": global_weights,
            "sites_test": sites_test}  # fmt: skip


def _train_alone(trainer: SiteTrainer, config: TrainConfig, rounds: int) -> tuple[dict, list[dict]]:
    """``rounds`` rounds of ``trainer.train_round`` from the federation's initial model, each from the last one's weights."""
    if int(rounds) < 1:
        raise ValueError(f"rounds={rounds!r}: must be >= 1")
    _, weights = _initial_model(config, trainer.in_channels, trainer.num_classes)
    records = []
    for rnd in range(int(rounds)):
        _, stats = trainer.train_round(weights, round=rnd)
        weights = {k: v.copy() for k, v in trainer.get_weights().items()}
        records.append({"round": rnd, "loss": stats["loss_mean"], "steps": stats["steps"]})
    return weights, records


def run_local(
    site: str, site_dir: str | Path, config: TrainConfig, *, rounds: int, device: str | None = None,
    weak_loss: dict | None = None,
) -> dict:  # fmt: skip
    """Local-only training: one site alone, ``rounds`` x ``config.local_steps`` steps, no server.

    The site's :class:`SiteTrainer` runs the rounds it would run in :func:`run_federation`, from the
    same initial model, each round starting from its own weights (no aggregation, no codec).

    Args:
        site: the site's name (its per-site seed, as in the federation).
        site_dir: folder with the site's ``dataset.json``.
        config: the training configuration.
        rounds: rounds, >= 1.
        device: torch device. Defaults to None (CUDA when available).
        weak_loss: settings of a weak-label site's loss (``SiteTrainer(weak_loss=...)``). Defaults to None.

    Returns:
        ``{"sites_test": {site: EvalResult.to_dict()} ({} without a test split), "rounds": [{"round",
        "loss", "steps"}], "seconds": float, "final_weights": {name: array}}``.

    Raises:
        ValueError: ``rounds`` < 1.
        DataError: the site's data fails its checks.
    """
    t0 = time.perf_counter()
    trainer = SiteTrainer(Path(site_dir), config, site=site, device=device, weak_loss=weak_loss, agreement_batches=0)
    weights, records = _train_alone(trainer, config, rounds)
    mine = _own_test(trainer, weights)
    return {"sites_test": {} if mine is None else {site: mine}, "rounds": records, "seconds": time.perf_counter() - t0,
            "final_weights": weights}  # fmt: skip


def score_on_sites(
    weights: Mapping, site_dirs: Mapping[str, str | Path], config: TrainConfig, *, device: str | None = None
) -> dict[str, dict]:
    """One model scored on each site's own ``test`` split, as :func:`run_federation` scores its sites.

    Args:
        weights: the model's weights ``{name: array}``.
        site_dirs: ``{site: folder with dataset.json}``.
        config: the training configuration (network, preset).
        device: torch device. Defaults to None (CUDA when available).

    Returns:
        ``{site: EvalResult.to_dict()}`` for the sites with a test split.

    Raises:
        DataError: a site's data fails its checks.
    """
    out = {}
    for site, folder in site_dirs.items():
        mine = _own_test(SiteTrainer(Path(folder), config, site=site, device=device, agreement_batches=0), dict(weights))
        if mine is not None:
            out[site] = mine
    return out


POOLED_SITE = "pooled"
"""Site name of :func:`run_centralized`'s pooled training (its per-site seed)."""


def pool_sites(site_dirs: Mapping[str, str | Path], pool_dir: str | Path) -> Path:
    """Write ``pool_dir/dataset.json`` listing every site's training and validation cases (no test case).

    Args:
        site_dirs: ``{site: folder with dataset.json}``; every site must have voxel labels and the
            first site's labels and modality.
        pool_dir: the pooled site's folder (created); must not hold a ``dataset.json`` yet.

    Returns:
        The pooled folder.

    Raises:
        ConfigError: no site, a site with another label kind than ``voxel`` or other labels or
            modality than the first (naming the site), or ``pool_dir`` already holds a ``dataset.json``.
    """
    if not site_dirs:
        raise ConfigError("site_dirs", site_dirs, "no site to pool")
    pool = Path(pool_dir)
    if (pool / "dataset.json").exists():
        raise ConfigError("pool_dir", str(pool), "already holds a dataset.json (choose an empty folder)")
    datalists = {site: load_datalist(Path(d), site=site) for site, d in site_dirs.items()}
    first = next(iter(datalists.values()))
    for site, dl in datalists.items():
        if dl.label_kind != "voxel":
            raise ConfigError("site_dirs", site, f"label kind {dl.label_kind!r}: only voxel-labelled sites can be pooled "
                              "into one training", options=("voxel",))  # fmt: skip
        if dl.labels != first.labels or dl.modality != first.modality:
            raise ConfigError("site_dirs", site, "labels or modality differ from the first site's: cannot be pooled")
    write_datalist(
        pool, labels=first.labels, modality=first.modality, name="pooled: " + ", ".join(datalists),
        training=[c for dl in datalists.values() for c in dl.cases("training")],
        validation=[c for dl in datalists.values() for c in dl.cases("validation")],
    )  # fmt: skip
    return pool


def run_centralized(
    site_dirs: Mapping[str, str | Path], config: TrainConfig, *, rounds: int, pool_dir: str | Path,
    device: str | None = None,
) -> dict:  # fmt: skip
    """Centralized training: every site's training cases pooled, the federation's total steps, no server.

    The pooled site (:func:`pool_sites`) trains with :class:`SiteTrainer` for ``rounds`` rounds of
    ``config.local_steps * len(site_dirs)`` steps (as many as all sites together in
    :func:`run_federation`), from the same initial model; the final model is scored on each site's
    own ``test`` split (never pooled, never trained on).

    Args:
        site_dirs: ``{site: folder with dataset.json}`` (voxel labels).
        config: the training configuration of one site in the federation.
        rounds: rounds, >= 1.
        pool_dir: folder for the pooled ``dataset.json`` (see :func:`pool_sites`).
        device: torch device. Defaults to None (CUDA when available).

    Returns:
        ``{"sites_test": {site: EvalResult.to_dict()} (sites with a test split), "rounds": [{"round",
        "loss", "steps"}], "seconds": float, "final_weights": {name: array}, "n_train": int}``.

    Raises:
        ValueError: ``rounds`` < 1.
        ConfigError: the sites cannot be pooled (see :func:`pool_sites`).
        DataError: a site's data fails its checks.
    """
    t0 = time.perf_counter()
    pooled_config = dataclasses.replace(config, local_steps=config.local_steps * len(site_dirs))
    trainer = SiteTrainer(pool_sites(site_dirs, pool_dir), pooled_config, site=POOLED_SITE, device=device,
                          agreement_batches=0)  # fmt: skip
    weights, records = _train_alone(trainer, config, rounds)
    sites_test = score_on_sites(weights, site_dirs, config, device=device)
    return {"sites_test": sites_test, "rounds": records, "seconds": time.perf_counter() - t0, "final_weights": weights,
            "n_train": trainer.n_train}  # fmt: skip
