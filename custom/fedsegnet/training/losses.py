"""Segmentation losses, picked by name from job configs.

- ``dice_ce``: Dice + cross-entropy (MONAI ``DiceCELoss``), the nnU-Net / SwinUNETR default;
  Milletari F. et al., "V-Net", 3DV 2016 for the soft Dice term.
- ``dice``: soft Dice alone (MONAI ``DiceLoss``).
- ``dice_focal``: Dice + focal loss (MONAI ``DiceFocalLoss``); Lin T.-Y. et al., "Focal Loss for
  Dense Object Detection", ICCV 2017.

Every loss takes logits ``(B, C, X, Y, Z)`` and a label map of class ids ``(B, 1, X, Y, Z)`` (int
or float), and returns a scalar: the defaults are ``to_onehot_y=True, softmax=True``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch.nn as nn
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

from fedsegnet.errors import ConfigError

__all__ = ["LOSSES", "build_loss"]

_DEFAULTS = {"to_onehot_y": True, "softmax": True}

#: name -> loss class; :func:`build_loss` applies ``to_onehot_y=True, softmax=True``.
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice_ce": DiceCELoss,
    "dice": DiceLoss,
    "dice_focal": DiceFocalLoss,
}


def build_loss(name: str = "dice_ce", **kwargs) -> nn.Module:
    """Build the loss registered as ``name``.

    Args:
        name: one of :data:`LOSSES`. Defaults to ``"dice_ce"``.
        kwargs: constructor arguments overriding ``to_onehot_y=True, softmax=True`` (e.g.
            ``lambda_dice``, ``lambda_ce``, ``include_background``, ``squared_pred``).

    Returns:
        The loss module: ``loss(logits (B, C, X, Y, Z), label (B, 1, X, Y, Z)) -> scalar``.

    Raises:
        ConfigError: for an unknown name (options listed), an unknown keyword argument (field
            ``loss_kwargs.<name>``) or a value MONAI rejects.
    """
    if name not in LOSSES:
        raise ConfigError("loss", name, "unknown loss", options=sorted(LOSSES))
    cls = LOSSES[name]
    allowed = sorted(p for p in inspect.signature(cls).parameters if p != "self")
    for key, value in kwargs.items():
        if key not in allowed:
            raise ConfigError(f"loss_kwargs.{key}", value, f"unknown argument of {name}", options=allowed)
    try:
        return cls(**{**_DEFAULTS, **kwargs})
    except (ValueError, TypeError) as err:
        raise ConfigError("loss_kwargs", kwargs, f"{name} rejected the settings: {err}") from err
