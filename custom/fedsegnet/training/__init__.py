"""Local training, losses and evaluation (plain torch/MONAI; no FLARE imports).

- :mod:`~fedsegnet.training.losses`: :data:`LOSSES`, :func:`build_loss`.
- :mod:`~fedsegnet.training.loop`: :func:`make_optimizer`, :func:`train_steps`,
  :func:`state_dict_for_exchange`, :func:`load_exchanged_weights`.
- :mod:`~fedsegnet.training.evaluate`: :func:`evaluate` (sliding window, Dice, HD95 in mm),
  :class:`EvalResult`.
"""

from fedsegnet.training.errors import TrainingError, WeightsError
from fedsegnet.training.evaluate import EvalResult, evaluate, label_agreement
from fedsegnet.training.losses import LOSSES, build_loss
from fedsegnet.training.loop import (
    WRAPPER_PREFIXES,
    load_exchanged_weights,
    make_optimizer,
    state_dict_for_exchange,
    strip_prefixes,
    train_steps,
)

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
]
