"""Local training, losses and evaluation (plain torch/MONAI; no FLARE imports).

- :mod:`~fedsegnet.training.losses`: :data:`LOSSES`, :func:`build_loss`.
- :mod:`~fedsegnet.training.loop`: :func:`make_optimizer`, :func:`train_steps`,
  :func:`state_dict_for_exchange`, :func:`load_exchanged_weights`.
- :mod:`~fedsegnet.training.evaluate`: :func:`evaluate` (sliding window, Dice, HD95 in mm),
  :class:`EvalResult`.
- :mod:`~fedsegnet.training.signals`: :func:`label_agreement`, :func:`weak_label_agreement` (AAM's
  data-quality signal, measured at the site).
- :mod:`~fedsegnet.training.site`: :class:`~fedsegnet.training.site.SiteTrainer`, one site's local
  work; its personalisation in :mod:`~fedsegnet.training.personal_trainer`, the personal keys and
  state in :mod:`~fedsegnet.training.personal`.
- :mod:`~fedsegnet.training.spec`: the model spec and untrusted model files
  (:func:`~fedsegnet.training.spec.load_model_file`); :mod:`~fedsegnet.training.evaluate_file`
  evaluates a model file on a ``dataset.json`` folder.
"""

from fedsegnet.training.errors import TrainingError, WeightsError
from fedsegnet.training.evaluate import EvalResult, evaluate
from fedsegnet.training.losses import LOSSES, build_loss
from fedsegnet.training.loop import (
    WRAPPER_PREFIXES,
    load_exchanged_weights,
    make_optimizer,
    state_dict_for_exchange,
    strip_prefixes,
    train_steps,
)
from fedsegnet.training.signals import label_agreement, weak_label_agreement

__all__ = [
    "LOSSES",
    "WRAPPER_PREFIXES",
    "EvalResult",
    "TrainingError",
    "WeightsError",
    "build_loss",
    "evaluate",
    "label_agreement",
    "load_exchanged_weights",
    "make_optimizer",
    "state_dict_for_exchange",
    "strip_prefixes",
    "train_steps",
    "weak_label_agreement",
]
