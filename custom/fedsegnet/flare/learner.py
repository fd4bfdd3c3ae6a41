"""FLARE Learner: translates FLARE tasks to :class:`fedsegnet.training.site.SiteTrainer` calls.

Run by FLARE's ``LearnerExecutor`` (tasks ``train``, ``validate``, ``submit_model``). The train task
returns the site's update (local minus received global weights) as a ``WEIGHT_DIFF`` DXO whose meta
carries the number of training cases (also as ``NUM_STEPS_CURRENT_ROUND``, the weight FLARE's
weighted aggregator uses), local steps, label kind, mean training loss, and the validation Dice of the
received global model and of the local model on the site's validation split.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReturnCode, Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.learner_spec import Learner
from nvflare.app_common.app_constant import AppConstants, ValidateType
from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

from fedsegnet.config import PersonalConfig, build_train_config, check_job_args, model_shape
from fedsegnet.errors import ConfigError, FedSegNetError, PrivacyBudgetSpent
from fedsegnet.flare.constants import (
    DATA_ROOT_ENV,
    DP_REFUSED_HEADER,
    ERROR_HEADER,
    CHOICE_DIR,
    PERSONAL_DIR,
    PRIVACY_DIR,
    UpdateMeta,
)

from fedsegnet.flare.ledger import witness_task
from fedsegnet.flare.privacy import SITE_DP_BUDGET_PROP
from fedsegnet.ledger import LedgerError
from fedsegnet.memory import job_and_parent_rss_mb

LABEL_KINDS = ("voxel", "box", "tag", "partial")


def _fmt(value) -> str:
    """``0.123`` or ``n/a`` (no voxel-labelled case to score, no signal)."""
    return "n/a" if value is None else f"{value:.3f}"


def _finite_or_none(x):
    return None if x is None or not math.isfinite(x) else float(x)


def _metrics(result) -> dict:
    summary = result.to_dict()
    return {
        "val_dice": _finite_or_none(summary["dice_mean"]),
        "val_hd95": _finite_or_none(summary["hd95_mean"]),
        "n_cases": summary["n_cases"],
        "per_class": summary["per_class"],
        **({"per_region": summary["per_region"]} if "per_region" in summary else {}),
    }


# the constructor arguments that are job args (same names; checked against fedsegnet.config.JOB_ARGS)
_JOB_ARG_PARAMS = (
    "data_root", "num_classes", "in_channels", "preset", "local_steps", "seed", "network", "patch_size",
    "val_max_cases", "torch_threads", "num_workers", "fedprox_mu", "pseudo_threshold", "pseudo_ramp_rounds",
    "personalization", "personal_keys", "ditto_lambda", "personal_steps", "boundary_weight", "boundary_band",
    "boundary_perturbation", "resume_from", "num_rounds", "dp", "dp_noise", "dp_target_epsilon", "dp_delta", "dp_clip",
    "dp_budget",
)  # fmt: skip


class SegLearner(Learner):
    """Segmentation Learner for one site.

    Args:
        data_root: folder holding one sub-folder per site (named as the FLARE site). Defaults to
            None (read the ``FEDSEGNET_DATA_ROOT`` environment variable at the site).
        num_classes: classes the model predicts, including background. Defaults to None (the
            preset's, as the server persistor does: 3 for the generic presets, fixed by a dataset
            preset); the site's ``dataset.json`` must agree.
        in_channels: image channels. Defaults to None (the preset's: 1 for the generic presets).
        preset: preset name (see ``fedsegnet.config.PRESETS``). Defaults to ``"cpu"``.
        local_steps: optimiser steps per round. Defaults to 50.
        seed: job seed; each site derives its own. Defaults to 0.
        network: override the preset's network. Defaults to None.
        patch_size: override the preset's crop size. Defaults to None.
        lr: override the preset's learning rate. Defaults to None.
        batch_size: override the preset's batch size. Defaults to None.
        amp: override the preset's mixed precision (CUDA only). Defaults to None.
        val_max_cases: validate on at most this many cases (0 = all). Defaults to 0.
        torch_threads: ``torch.set_num_threads`` at the site (0 = torch default). Defaults to 0.
        num_workers: DataLoader worker processes at the site. Defaults to None (the preset's: 0
            for the CPU presets, 4 for the GPU and dataset presets).
        label_kind: the site's label kind reported to the server; ``dataset.json`` may override.
            Defaults to ``"voxel"``.
        analytic_sender_id: id of a FLARE ``TBWriter`` component streaming metrics to the server;
            empty to disable. Defaults to ``"analytic_sender"``.
        device: torch device. Defaults to None (CUDA when available, else CPU).
        fedprox_mu: FedProx proximal weight (FLARE's ``PTFedProxLoss``: ``mu / 2 * ||w - w_global||^2``
            added to every step's loss; 0 = off). Defaults to 0.0.
        agreement_batches: training batches on which the received global model's predictions are
            compared with the site's labels each round (AAM's data-quality signal, sent as
            ``fedsegnet.label_agreement``; 0 = off). Defaults to 2.
        pseudo_threshold: a box or tag site keeps the received global model's pseudo-label at a
            voxel when its probability (among the classes the weak label allows) is at least this.
            Defaults to 0.8.
        pseudo_ramp_rounds: the pseudo-label loss weight grows linearly from 0 in round 0 to 1 in
            this round (the first global models are untrained). Defaults to 5.
        personalization, personal_keys, ditto_lambda, personal_steps, boundary_weight,
            boundary_band, boundary_perturbation: the site's personalisation, see
            :class:`fedsegnet.config.PersonalConfig` (same defaults: ``"none"``, ``()``, 0.1, 0, 0.0,
            2, 0.1). The personal state lives in ``<site job workspace>/fedsegnet_personal/<site>.pt``.
        resume_from: id of an earlier job this one continues (``fedsegnet job resume``): its
            personal state and its privacy state are taken over when this job has none yet.
            Defaults to "".
        num_rounds: the rounds the job plans (the server's ``num_rounds``; with ``local_steps``
            the steps a ``dp_target_epsilon`` is spread over). Defaults to 5.
        dp, dp_noise, dp_target_epsilon, dp_delta, dp_clip, dp_budget: the site's differential
            privacy, see :class:`fedsegnet.privacy.DPSettings` (same defaults: ``"none"``, None,
            None, None, 1.0, 0.0). With ``dp='patient'`` the site trains with patient-level
            DP-SGD; its accountant state lives in ``<site job workspace>/fedsegnet_privacy/<site>.json``;
            the update meta carries the epsilon spent (``fedsegnet.dp``) and leaves out what is
            computed from the training cases outside the accountant (training loss, label
            agreement); a round that would pass ``dp_budget`` is answered with an error reply
            whose header ``fedsegnet.dp_refused`` says so, and nothing is trained.

    Personalisation in the tasks: ``train`` sends only the shared keys (the personal ones are named
    in the meta, never sent); ``validate`` scores the received model with the site's personal keys
    laid over it; for the server's models (cross-site evaluation) it adds ``personal`` metrics: the
    site's personalised model (``ditto``: its personal model; ``finetune``: the received global
    model fine-tuned here) on the site's ``test`` split (its validation split when it has none).
    """

    def __init__(
        self,
        data_root: str | None = None,
        num_classes: int | None = None,
        in_channels: int | None = None,
        preset: str = "cpu",
        local_steps: int = 50,
        seed: int = 0,
        network: str | None = None,
        patch_size=None,
        lr: float | None = None,
        batch_size: int | None = None,
        amp: bool | None = None,
        val_max_cases: int = 0,
        torch_threads: int = 0,
        num_workers: int | None = None,
        label_kind: str = "voxel",
        analytic_sender_id: str = "analytic_sender",
        device: str | None = None,
        fedprox_mu: float = 0.0,
        agreement_batches: int = 2,
        pseudo_threshold: float = 0.8,
        pseudo_ramp_rounds: int = 5,
        personalization: str = "none",
        personal_keys=(),
        ditto_lambda: float = 0.1,
        personal_steps: int = 0,
        boundary_weight: float = 0.0,
        boundary_band: int = 2,
        boundary_perturbation: float = 0.1,
        resume_from: str = "",
        num_rounds: int = 5,
        dp: str = "none",
        dp_noise: float | None = None,
        dp_target_epsilon: float | None = None,
        dp_delta: float | None = None,
        dp_clip: float = 1.0,
        dp_budget: float = 0.0,
    ):
        super().__init__()
        given = dict(locals())
        self.arg_error = None  # a bad job arg (hand-edited config): reported with every task, see initialize
        try:
            checked = check_job_args({k: given[k] for k in _JOB_ARG_PARAMS})
            from fedsegnet.privacy.settings import DPSettings  # Opacus and MONAI load only at a site

            self.dp_settings = DPSettings.from_job_args(checked)
        except ConfigError as e:
            self.arg_error, checked, self.dp_settings = e, {}, None
        fedprox_mu = checked.get("fedprox_mu", 0.0)
        self.num_rounds = num_rounds
        self.dp, self.dp_noise, self.dp_target_epsilon, self.dp_delta = dp, dp_noise, dp_target_epsilon, dp_delta
        self.dp_clip, self.dp_budget = dp_clip, dp_budget
        if label_kind not in LABEL_KINDS:
            raise ValueError(f"label_kind={label_kind!r}: unknown label kind (valid: {', '.join(LABEL_KINDS)})")
        self.data_root = data_root
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.preset = preset
        self.local_steps = local_steps
        self.seed = seed
        self.network = network
        self.patch_size = patch_size
        self.lr = lr
        self.batch_size = batch_size
        self.amp = amp
        self.val_max_cases = val_max_cases
        self.torch_threads = torch_threads
        self.num_workers = num_workers
        self.label_kind = label_kind
        self.analytic_sender_id = analytic_sender_id
        self.device = device
        self.fedprox_mu = fedprox_mu
        self.agreement_batches = int(agreement_batches)
        self.pseudo_threshold = pseudo_threshold
        self.pseudo_ramp_rounds = pseudo_ramp_rounds
        self.personalization = personalization
        self.personal_keys = personal_keys
        self.ditto_lambda = ditto_lambda
        self.personal_steps = personal_steps
        self.boundary_weight = boundary_weight
        self.boundary_band = boundary_band
        self.boundary_perturbation = boundary_perturbation
        self.resume_from = resume_from or ""
        self.trainer = None
        self.site = None
        self.init_error = None
        self.writer = None
        self._global_val = {}  # round -> val Dice of the received global model

    # ------------------------------------------------------------------ setup
    def initialize(self, parts: dict, fl_ctx: FLContext):
        self.site = fl_ctx.get_identity_name()
        if self.analytic_sender_id:
            self.writer = parts.get(self.analytic_sender_id)
            if self.writer is None:
                self.log_warning(fl_ctx, f"no component {self.analytic_sender_id!r}: metrics are not streamed")
        try:
            if self.arg_error is not None:
                raise self.arg_error
            from fedsegnet.training.site import SiteTrainer  # heavy imports (MONAI) only at the site

            data_root = self.data_root or os.environ.get(DATA_ROOT_ENV)
            if not data_root:
                raise FedSegNetError(
                    f"site {self.site!r}: no data root: set the learner arg 'data_root' in the job or the "
                    f"environment variable {DATA_ROOT_ENV} at the site"
                )
            site_dir = Path(data_root) / self.site
            if not site_dir.is_dir():
                raise FedSegNetError(
                    f"site {self.site!r}: data folder {site_dir} does not exist (data_root={data_root!r}, "
                    f"site folder = site name)"
                )
            config = build_train_config(
                preset=self.preset,
                local_steps=self.local_steps,
                seed=self.seed,
                network=self.network,
                patch_size=self.patch_size,
                lr=self.lr,
                batch_size=self.batch_size,
                amp=self.amp,
                val_max_cases=self.val_max_cases,
                torch_threads=self.torch_threads,
                num_workers=self.num_workers,
            )
            num_classes, in_channels = model_shape(config.preset, self.num_classes, self.in_channels)
            personal = PersonalConfig(
                method=self.personalization, personal_keys=tuple(self.personal_keys or ()),
                ditto_lambda=self.ditto_lambda, personal_steps=self.personal_steps,
                boundary_weight=self.boundary_weight, boundary_band=self.boundary_band,
                boundary_perturbation=self.boundary_perturbation,
            )  # fmt: skip
            personal_dir = self._personal_dir(fl_ctx) if personal.enabled else None
            privacy_file = self._taken_over(fl_ctx, PRIVACY_DIR, f"{self.site}.json", "privacy") if self.dp_settings.enabled else None
            t0 = time.perf_counter()
            self.trainer = SiteTrainer(
                site_dir,
                config,
                site=self.site,
                num_classes=num_classes,
                in_channels=in_channels,
                device=self.device,
                agreement_batches=self.agreement_batches,
                proximal_loss=PTFedProxLoss(mu=self.fedprox_mu) if self.fedprox_mu > 0 else None,
                weak_loss={"threshold": self.pseudo_threshold, "ramp_rounds": self.pseudo_ramp_rounds},
                personal=personal,
                personal_dir=personal_dir,
                dp=self.dp_settings,
                planned_rounds=self.num_rounds,
                privacy_file=privacy_file,
            )
            if personal.method == "ditto":
                from fedsegnet.flare.ditto import SegDittoHelper

                SegDittoHelper(self.trainer, app_dir=str(personal_dir), ditto_lambda=personal.ditto_lambda)
            if self.trainer.datalist.label_kind != "voxel":
                self.label_kind = self.trainer.datalist.label_kind
            self.log_info(
                fl_ctx,
                f"site {self.site}: {self.trainer.n_train} training / {self.trainer.n_val} validation cases, "
                f"preset {config.preset.name}, network {config.preset.network}, patch {config.preset.patch_size}, "
                f"device {self.trainer.device}, preflight passed in {time.perf_counter() - t0:.1f} s"
                + (f", personalisation {personal.method} ({len(self.trainer.personal_keys)} personal key(s) stay "
                   f"here, state in {personal_dir})" if personal.enabled else "")
                + (self._privacy_line(privacy_file) if self.dp_settings.enabled else ""),
            )  # fmt: skip
        except FedSegNetError as e:
            # Keep the site alive and answer every task with the error, so the server hears it and
            # decides (go on with the other sites, or end the job) instead of waiting for this one.
            self.init_error = str(e)
            self.log_error(fl_ctx, f"site {self.site} cannot train: {self.init_error}")

    def _personal_dir(self, fl_ctx: FLContext) -> Path:
        """``<site job workspace>/fedsegnet_personal``; a resumed job takes over the earlier job's state."""
        return self._taken_over(fl_ctx, PERSONAL_DIR, f"{self.site}.pt", "personal").parent

    def _taken_over(self, fl_ctx: FLContext, folder_name: str, file_name: str, what: str) -> Path:
        """``<site job workspace>/<folder_name>/<file_name>``; when it does not exist and the job
        resumes another, the other job's file is copied there first (the earlier job's is kept)."""
        workspace = fl_ctx.get_engine().get_workspace()
        mine = Path(workspace.get_run_dir(fl_ctx.get_job_id())) / folder_name / file_name
        if self.resume_from and not mine.exists():
            old = Path(workspace.get_run_dir(self.resume_from)) / folder_name / file_name
            if old.is_file():
                mine.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(old, mine)
                self.log_info(fl_ctx, f"site {self.site}: {what} state taken over from job {self.resume_from} ({old})")
        return mine

    def _privacy_line(self, privacy_file: Path) -> str:
        report = self.trainer.privacy.report()
        return (
            f", DP-SGD per training case: noise multiplier {report['noise_multiplier']:.3g}, clip {report['clip']:g}, "
            f"sampling rate {report['sample_rate']:.3g}, delta {report['delta']:.2g}, epsilon spent {report['epsilon']:.3f} "
            f"over {report['steps']} step(s)" + (f" of budget {report['budget']:g}" if report["budget"] else "")
            + f", state in {privacy_file}"
        )  # fmt: skip

    def _error_reply(self, message: str | None = None, **headers) -> Shareable:
        """An error reply carrying ``message`` (default: the site's start-up error) and ``headers``."""
        reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_header(ERROR_HEADER, self.init_error if message is None else message)
        for key, value in headers.items():
            reply.set_header(key, value)
        return reply

    def _stream(self, tag: str, value, step: int):
        if self.writer is not None and value is not None and math.isfinite(value):
            self.writer.add_scalar(tag, float(value), global_step=int(step))

    def _weights_from(self, data: Shareable, fl_ctx: FLContext):
        try:
            dxo = from_shareable(data)
        except ValueError as e:
            self.log_error(fl_ctx, f"task data is not a DXO: {e}")
            return None
        if dxo.data_kind != DataKind.WEIGHTS or not dxo.data:
            self.log_error(fl_ctx, f"expected a DXO of kind WEIGHTS with data, got {dxo.data_kind}")
            return None
        return dxo.data

    # ------------------------------------------------------------------ tasks
    def train(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if self.init_error:
            return self._error_reply()
        weights = self._weights_from(data, fl_ctx)
        if weights is None:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        current_round = int(data.get_header(AppConstants.CURRENT_ROUND, 0) or 0)
        policy = fl_ctx.get_prop(SITE_DP_BUDGET_PROP)  # the site privacy policy's budget (fedsegnet.flare.privacy)
        if policy is not None and self.trainer.privacy is None:
            message = (f"site {self.site}: the site privacy policy allows updates only under DP with epsilon <= {policy:g}, "
                       "but the job trains without it (job arg dp='none'); set dp='patient'")  # fmt: skip
            self.log_error(fl_ctx, message)
            return self._error_reply(message)
        try:  # the ledger's head first: a site that refuses it does not train (nor spend privacy budget)
            ledger_meta = witness_task(data, fl_ctx)
        except LedgerError as e:
            self.log_error(fl_ctx, f"round {current_round}: {e}")
            return self._error_reply(str(e))
        if self.trainer.privacy is not None:
            self.trainer.privacy.policy_budget = policy
        try:
            update, stats = self.trainer.train_round(weights, should_stop=lambda: abort_signal.triggered, round=current_round)
        except PrivacyBudgetSpent as e:
            self.log_warning(fl_ctx, f"round {current_round}: {e}")
            return self._error_reply(str(e), **{DP_REFUSED_HEADER: True})
        except FedSegNetError as e:
            self.log_error(fl_ctx, f"site {self.site} round {current_round}: {e}")
            return self._error_reply(str(e))
        if stats.get("aborted") or abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        local = self.trainer.evaluate()
        val_global = self._global_val.pop(current_round, None)
        agreement = _finite_or_none(stats.get("agreement"))
        private = "dp" in stats  # what is computed from the training cases outside the accountant stays here
        meta = {
            MetaKey.NUM_STEPS_CURRENT_ROUND: self.trainer.n_train,
            UpdateMeta.N_TRAIN: self.trainer.n_train,
            UpdateMeta.LOCAL_STEPS: int(stats["steps"]),
            UpdateMeta.LABEL_KIND: self.label_kind,
            UpdateMeta.TRAIN_LOSS: None if private else _finite_or_none(stats["loss_mean"]),
            UpdateMeta.VAL_DICE_GLOBAL: _finite_or_none(val_global),
            UpdateMeta.VAL_DICE_LOCAL: _finite_or_none(local.dice_mean),
            UpdateMeta.LABEL_AGREEMENT: agreement,
            # under DP the time follows the number of cases the sampler drew: kept here
            UpdateMeta.TRAIN_SECONDS: None if private else float(stats["seconds"]),
            # FLARE gives a site's result filters no round (LearnerExecutor drops the headers)
            UpdateMeta.ROUND: current_round,
        }
        if self.trainer.personal_keys:
            meta[UpdateMeta.PERSONAL_KEYS] = list(self.trainer.personal_keys)
        meta.update(ledger_meta)
        if private:
            meta[UpdateMeta.DP] = dict(stats["dp"])
        memory = job_and_parent_rss_mb()
        meta[UpdateMeta.RSS_MB] = memory["rss_mb"]
        meta[UpdateMeta.PARENT_RSS_MB] = memory["parent_rss_mb"]
        if private:
            self._stream("dp_epsilon", stats["dp"]["epsilon"], current_round)
        else:
            self._stream("train_loss", stats["loss_mean"], current_round)
        self._stream("val_dice_local", local.dice_mean, current_round)
        self.log_info(
            fl_ctx,
            f"site {self.site} round {current_round}: {stats['steps']} steps in {stats['seconds']:.1f} s, "
            f"loss {_fmt(stats['loss_first'])} -> {_fmt(stats['loss_last'])}, val Dice global {_fmt(val_global)} -> "
            f"local {_fmt(local.dice_mean)} ({local.n_cases} voxel-labelled case(s)), label kind {self.label_kind}, "
            f"label agreement {_fmt(agreement)}"
            + (f", epsilon spent {stats['dp']['epsilon']:.3f} (delta {stats['dp']['delta']:.2g})" if private else ""),
        )
        return DXO(DataKind.WEIGHT_DIFF, data=update, meta=meta).to_shareable()

    def validate(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if self.init_error:
            return self._error_reply()
        weights = self._weights_from(data, fl_ctx)
        if weights is None:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        validate_type = data.get_header(AppConstants.VALIDATE_TYPE)
        model_owner = data.get_header(AppConstants.MODEL_OWNER, "global model")
        personal = self.trainer.personal
        try:
            # the global model's personal keys were never trained: score it with this site's own
            result = self.trainer.evaluate(weights=self.trainer.with_personal_keys(weights))
        except FedSegNetError as e:
            self.log_error(fl_ctx, f"site {self.site}: validation of the model of {model_owner} failed: {e}")
            return self._error_reply(str(e))
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        if validate_type == ValidateType.BEFORE_TRAIN_VALIDATE:
            current_round = int(data.get_header(AppConstants.CURRENT_ROUND, 0) or 0)
            self._global_val[current_round] = result.dice_mean
            self._stream("val_dice_global", result.dice_mean, current_round)
            return DXO(DataKind.METRICS, data={MetaKey.INITIAL_METRICS: result.dice_mean}).to_shareable()
        self.log_info(fl_ctx, f"site {self.site}: model of {model_owner}: val Dice {_fmt(result.dice_mean)} ({result.n_cases} case(s))")
        metrics = _metrics(result)
        if personal.enabled and str(model_owner).startswith("SRV_"):
            # the site's personalised model made from the server's (final or best) global model
            try:
                if personal.method == "finetune":
                    self.trainer.finetune(weights, should_stop=lambda: abort_signal.triggered)
                split = "test" if self.trainer.datalist.evaluable("test") else "validation"
                mine = self.trainer.evaluate(weights=self.trainer.personal_weights(weights), split=split)
            except FedSegNetError as e:
                self.log_error(fl_ctx, f"site {self.site}: personal model evaluation failed: {e}")
            else:
                metrics["personal"] = {"split": split, **_metrics(mine)}
                self.log_info(
                    fl_ctx, f"site {self.site}: personalised model ({personal.method}) on its {split} split: "
                    f"Dice {_fmt(mine.dice_mean)} ({mine.n_cases} case(s))",
                )  # fmt: skip
        if str(model_owner).startswith("SRV_"):
            metrics["site_choice"] = self._choose(weights, result, str(model_owner), fl_ctx)
        return DXO(DataKind.METRICS, data=metrics).to_shareable()

    def _choose(self, weights: dict, global_result, owner: str, fl_ctx: FLContext) -> dict | None:
        """No harm at this site: keep whichever of the server's model, the personalised one and the
        site's last local model scores best on its validation split (``fedsegnet.training.choice``);
        the chosen model is written to ``<site job workspace>/fedsegnet_choice/``."""
        from fedsegnet.training.choice import choose, save_choice
        from fedsegnet.training.spec import model_spec

        trainer = self.trainer
        candidates = {"global": trainer.with_personal_keys(weights)}
        if trainer.personal.method in ("ditto", "finetune"):  # otherwise the personalised model is the "global" one
            candidates["personal"] = trainer.personal_weights(weights)
        if trainer.rounds_done:
            candidates["local"] = trainer.get_weights()
        try:
            scores = {"global": global_result.dice_mean}
            scores.update({name: trainer.evaluate(weights=w).dice_mean for name, w in candidates.items() if name != "global"})
            chosen = choose(scores)
            spec = model_spec(trainer.config.preset, in_channels=trainer.in_channels, num_classes=trainer.num_classes)
            workspace = fl_ctx.get_engine().get_workspace()
            folder = Path(workspace.get_run_dir(fl_ctx.get_job_id())) / CHOICE_DIR
            path = save_choice(folder, self.site, owner, scores, chosen, candidates[chosen], spec)
        except (FedSegNetError, OSError) as e:
            self.log_error(fl_ctx, f"site {self.site}: choosing the model to keep failed: {e}")
            return None
        self.log_info(
            fl_ctx, f"site {self.site}: keeps the {chosen} model made from {owner} (validation Dice "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in scores.items()) + f"), written to {path}",
        )  # fmt: skip
        return {"chosen": chosen, "val_dice": {k: _finite_or_none(v) for k, v in scores.items()}, "file": path.name}

    def get_model_for_validation(self, model_name: str, fl_ctx: FLContext) -> Shareable:
        """The site's latest local model (after its last training round), for cross-site evaluation."""
        if self.init_error:
            return self._error_reply()
        if self.trainer.rounds_done == 0:
            self.log_warning(fl_ctx, f"site {self.site}: no local model trained yet; nothing to submit")
            return make_reply(ReturnCode.EMPTY_RESULT)
        weights = self.trainer.get_weights()
        for key in self.trainer.personal_keys:  # personal parameters never leave the site
            weights.pop(key, None)
        meta = {UpdateMeta.DP: self.trainer.privacy.report()} if self.trainer.privacy is not None else {}
        return DXO(DataKind.WEIGHTS, data=weights, meta=meta).to_shareable()

    def finalize(self, fl_ctx: FLContext):
        self.trainer = None
