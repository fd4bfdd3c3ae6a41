"""Ditto at a FLARE site through FLARE's own helper (``nvflare.app_opt.pt.ditto.PTDittoHelper``).

Li T. et al., "Ditto: Fair and Robust Federated Learning Through Personalization", ICML 2021.
FLARE's helper holds the personal model and its optimiser, loads it from the site's folder (or
from the first global model), adds its proximal term (``PTFedProxLoss(mu=ditto_lambda)``) and saves
the model and the best one by validation Dice (``personalized_model.pt``,
``best_personalized_model.pt``). The part FLARE leaves open, the local training, is the site's
:meth:`~fedsegnet.training.site.SiteTrainer.train_ditto`, which uses the helper's model, optimiser
and proximal term once :class:`SegDittoHelper` has attached itself to the trainer.
"""

from __future__ import annotations

import copy
from pathlib import Path

from monai.losses import DiceCELoss
from nvflare.app_opt.pt.ditto import PTDittoHelper
from torch.nn.modules.loss import _Loss

from fedsegnet.training.loop import make_optimizer


class SegDittoHelper(PTDittoHelper):
    """FLARE's Ditto helper for one site's trainer.

    Args:
        trainer: the site's :class:`~fedsegnet.training.site.SiteTrainer` (method ``ditto``); the
            helper attaches itself to it (``trainer.ditto_helper``).
        app_dir: folder of the personal model files (the site's personal state folder).
        ditto_lambda: proximal weight. Defaults to 0.1.
    """

    def __init__(self, trainer, app_dir: str, ditto_lambda: float = 0.1):
        Path(app_dir).mkdir(parents=True, exist_ok=True)  # FLARE's helper saves there without creating it
        model = copy.deepcopy(trainer.model)
        preset = trainer.config.preset
        # FLARE's helper checks that the criterion is a torch loss; the trainer's own loss (DiceCE, or
        # the weak-label loss of its kind) is the one that trains
        criterion = trainer.loss_fn if isinstance(trainer.loss_fn, _Loss) else DiceCELoss(to_onehot_y=True, softmax=True)
        super().__init__(
            criterion=criterion,
            model=model,
            optimizer=make_optimizer(model, lr=preset.lr, weight_decay=preset.weight_decay),
            device=trainer.device,
            app_dir=str(app_dir),
            ditto_lambda=float(ditto_lambda),
            model_epochs=1,
        )
        self.trainer = trainer
        trainer.ditto_helper = self
