"""Server-side persistor: FLARE's ``PTFileModelPersistor`` with the network built from job args.

The saved ``FL_global_model.pt`` / ``best_FL_global_model.pt`` carry, next to FLARE's ``model``
state dict, a ``train_conf`` entry ``{"fedsegnet": MODEL_SPEC}`` that names the network, its
arguments, channels, classes, patch size, spacing and intensity mode, so ``fedsegnet eval`` and
``fedsegnet infer`` rebuild the model from the file alone. It also records the number of completed
rounds (``fedsegnet_round``) and the AAM state, so a new job can continue an interrupted one
(``resume_from``, see :mod:`fedsegnet.flare.resume`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from fedsegnet.config import build_train_config, check_job_args, model_shape
from fedsegnet.errors import FedSegNetError
from fedsegnet.flare.aggregator import aggregation_for
from fedsegnet.flare.constants import AAM_STATE_KEY, ROUND_RECORDS_FILE
from fedsegnet.flare.resume import ROUND_KEY, copy_records, find_resume_point
from fedsegnet.training.spec import model_spec


def _same(value) -> str:
    """A comparable form of a model-spec value (tuples and lists alike)."""
    return json.dumps(value, sort_keys=True, default=str)


class SegModelPersistor(PTFileModelPersistor):
    """Persist the global segmentation model; the initial model is built (seeded) from job args.

    Args:
        num_classes: classes the model predicts, including background. Defaults to None (the
            preset's: 3 for the generic presets, fixed by a dataset preset).
        in_channels: image channels. Defaults to None (the preset's: 1 for the generic presets).
        preset: preset name. Defaults to ``"cpu"``.
        network: override the preset's network. Defaults to None.
        patch_size: override the preset's crop size. Defaults to None.
        seed: seed of the initial weights (every run with the same seed starts equal). Defaults to 0.
        source_ckpt_file_full_name: start from this checkpoint instead. Defaults to None.
        global_model_file_name: file name of the last global model. Defaults to FLARE's.
        best_global_model_file_name: file name of the best global model. Defaults to FLARE's.
        aggregator_id: component whose ``state_dict()`` (the AAM signal history) is saved with the
            global model (``train_conf["fedsegnet_aam"]``) and restored from a checkpoint that has
            it; ignored when that component keeps no state. Defaults to ``"aggregator"``.
        resume_from: id of an interrupted job of this server to continue: its last global model, AAM
            state, completed rounds and records are taken over (the workflow then runs the remaining
            rounds). Empty for a fresh start. Defaults to ``""``.

    Attributes:
        rounds_completed: rounds already done when this job started (0, or those of ``resume_from``);
            read by :class:`~fedsegnet.flare.workflow.ResumableScatterAndGather`.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        in_channels: int | None = None,
        preset: str = "cpu",
        network: str | None = None,
        patch_size=None,
        seed: int = 0,
        source_ckpt_file_full_name: str | None = None,
        global_model_file_name: str = "FL_global_model.pt",
        best_global_model_file_name: str = "best_FL_global_model.pt",
        aggregator_id: str = "aggregator",
        resume_from: str = "",
    ):
        from fedsegnet.training.site import build_model_for

        check_job_args(
            dict(num_classes=num_classes, in_channels=in_channels, preset=preset, network=network,
                 patch_size=patch_size, seed=seed, resume_from=resume_from or "")
        )  # fmt: skip
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.preset = preset
        self.network = network
        self.patch_size = patch_size
        self.seed = seed
        self.aggregator_id = aggregator_id
        self.resume_from = resume_from or ""
        self.rounds_completed = 0
        self.resume_point = None  # the interrupted job's ResumePoint once resumed (the ledger continues its ledger)
        config = build_train_config(preset=preset, network=network, patch_size=patch_size, seed=seed)
        classes, channels = model_shape(config.preset, num_classes, in_channels)
        torch.manual_seed(int(seed))
        net = build_model_for(config, in_channels=channels, num_classes=classes)
        self.spec = model_spec(config.preset, in_channels=channels, num_classes=classes)
        super().__init__(
            model=net,
            source_ckpt_file_full_name=source_ckpt_file_full_name,
            global_model_file_name=global_model_file_name,
            best_global_model_file_name=best_global_model_file_name,
        )

    def load_model(self, fl_ctx: FLContext):
        point = None
        if self.resume_from:
            try:
                workspace = fl_ctx.get_engine().get_workspace()
                point = find_resume_point(
                    workspace.get_root_dir(), self.resume_from,
                    extract_to=Path(workspace.get_run_dir(fl_ctx.get_job_id())) / f"resumed_from_{self.resume_from}",
                )  # fmt: skip
            except FedSegNetError as e:
                self.system_panic(str(e), fl_ctx)
                return None
            self.source_ckpt_file_full_name = str(point.model)
        learnable = super().load_model(fl_ctx)
        if learnable is None:
            return None
        if point is not None and not self._take_over(point, fl_ctx):
            return None
        if self.persistence_manager is not None:
            loaded = self.persistence_manager.train_conf or {}
            state = loaded.get(AAM_STATE_KEY) if isinstance(loaded, dict) else None
            aggregator = aggregation_for(fl_ctx, self.aggregator_id)
            if state is not None and aggregator is not None:
                try:
                    aggregator.load_state_dict(state)
                    self.log_info(fl_ctx, f"AAM state restored from the checkpoint ({state.get('rounds')} rounds of signals)")
                except ValueError as e:
                    self.log_warning(fl_ctx, f"AAM state in the checkpoint not used: {e}; starting afresh")
            self.persistence_manager.train_conf = {"fedsegnet": self.spec}
        return learnable

    def _take_over(self, point, fl_ctx: FLContext) -> bool:
        """Check the resumed checkpoint fits this job, then take over its round count and records."""
        loaded = self.persistence_manager.train_conf if self.persistence_manager is not None else None
        loaded = loaded if isinstance(loaded, dict) else {}
        spec = loaded.get("fedsegnet")
        if isinstance(spec, dict):
            differ = sorted(k for k in set(spec) & set(self.spec) if _same(spec.get(k)) != _same(self.spec.get(k)))
            if differ:
                self.system_panic(
                    f"resume_from={self.resume_from!r}: the model in {point.model} does not fit this job: "
                    + "; ".join(f"{k}: checkpoint {spec.get(k)!r}, job {self.spec.get(k)!r}" for k in differ),
                    fl_ctx,
                )
                return False
        done = loaded.get(ROUND_KEY) or {}
        self.resume_point = point
        self.rounds_completed = int(done.get("completed", 0)) if isinstance(done, dict) else 0
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        copied = copy_records(point.records, Path(run_dir) / ROUND_RECORDS_FILE, self.rounds_completed)
        self.log_info(
            fl_ctx,
            f"resuming job {self.resume_from}: global model after {self.rounds_completed} completed round(s) from "
            f"{point.model}; {copied} per-round record(s) carried over",
        )
        return True

    def save_model(self, ml, fl_ctx: FLContext):
        aggregator = aggregation_for(fl_ctx, self.aggregator_id)
        manager = self._get_persistence_manager(fl_ctx)
        conf = {"fedsegnet": self.spec}
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if current is not None:
            conf[ROUND_KEY] = {"completed": int(current) + 1, "job_id": fl_ctx.get_job_id()}
        if aggregator is not None:
            conf[AAM_STATE_KEY] = aggregator.state_dict()
        manager.train_conf = conf
        super().save_model(ml, fl_ctx)
