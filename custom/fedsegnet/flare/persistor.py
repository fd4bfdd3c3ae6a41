"""Server-side persistor: FLARE's ``PTFileModelPersistor`` with the network built from job args.

The saved ``FL_global_model.pt`` / ``best_FL_global_model.pt`` carry, next to FLARE's ``model``
state dict, a ``train_conf`` entry ``{"fedsegnet": MODEL_SPEC}`` that names the network, its
arguments, channels, classes, patch size, spacing and intensity mode, so ``fedsegnet eval`` and
``fedsegnet infer`` rebuild the model from the file alone.
"""

from __future__ import annotations

import torch
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from fedsegnet.config import build_train_config
from fedsegnet.flare.aggregator import aggregation_for
from fedsegnet.flare.constants import AAM_STATE_KEY
from fedsegnet.networks.spec import model_spec


class SegModelPersistor(PTFileModelPersistor):
    """Persist the global segmentation model; the initial model is built (seeded) from job args.

    Args:
        num_classes: classes the model predicts, including background.
        in_channels: image channels. Defaults to 1.
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
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        preset: str = "cpu",
        network: str | None = None,
        patch_size=None,
        seed: int = 0,
        source_ckpt_file_full_name: str | None = None,
        global_model_file_name: str = "FL_global_model.pt",
        best_global_model_file_name: str = "best_FL_global_model.pt",
        aggregator_id: str = "aggregator",
    ):
        from fedsegnet.training.site import build_model_for

        self.num_classes = num_classes
        self.in_channels = in_channels
        self.preset = preset
        self.network = network
        self.patch_size = patch_size
        self.seed = seed
        self.aggregator_id = aggregator_id
        config = build_train_config(preset=preset, network=network, patch_size=patch_size, seed=seed)
        torch.manual_seed(int(seed))
        net = build_model_for(config, in_channels=int(in_channels), num_classes=int(num_classes))
        self.spec = model_spec(config.preset, in_channels=int(in_channels), num_classes=int(num_classes))
        super().__init__(
            model=net,
            source_ckpt_file_full_name=source_ckpt_file_full_name,
            global_model_file_name=global_model_file_name,
            best_global_model_file_name=best_global_model_file_name,
        )

    def load_model(self, fl_ctx: FLContext):
        learnable = super().load_model(fl_ctx)
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

    def save_model(self, ml, fl_ctx: FLContext):
        aggregator = aggregation_for(fl_ctx, self.aggregator_id)
        manager = self._get_persistence_manager(fl_ctx)
        conf = {"fedsegnet": self.spec}
        if aggregator is not None:
            conf[AAM_STATE_KEY] = aggregator.state_dict()
        manager.train_conf = conf
        super().save_model(ml, fl_ctx)
