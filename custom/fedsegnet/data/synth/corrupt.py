"""Label corruption of a synthetic site: what imperfect annotators do to the true label map.

Per-site label noise is one source of non-IID sites (FedMix, Wicaksana et al. 2022; the
FL-for-segmentation review): missed lesions and false-positive annotations, systematically eroded
or dilated boundaries, a class never drawn, a registration shift (:data:`CORRUPTION_KINDS`).
"""

from __future__ import annotations

import math

import numpy as np

from fedsegnet.data.synth.phantom import LABELS
from fedsegnet.errors import ConfigError

__all__ = ["CORRUPTION_KINDS", "corrupt_label", "validate_corruption"]

CORRUPTION_KINDS = ("label_noise", "erode", "dilate", "drop_class", "shift")
"""Label corruptions accepted by :func:`~fedsegnet.data.synth.synthesize` (``corrupt=``) and
:func:`~fedsegnet.data.synth.options.parse_corrupt`."""


def validate_corruption(field: str, spec, kind: str, amount: float) -> None:
    """Check one corruption.

    Args:
        field: the argument name an error names.
        spec: the value an error shows (the spec or the item it came from).
        kind: one of :data:`CORRUPTION_KINDS`.
        amount: the kind's amount (see :func:`corrupt_label`).

    Raises:
        ConfigError: (field ``field``) for an unknown kind or an amount outside the kind's range.
    """
    if kind not in CORRUPTION_KINDS:
        raise ConfigError(field, spec, f"unknown corruption kind {kind!r}", options=CORRUPTION_KINDS)
    if not math.isfinite(amount):
        raise ConfigError(field, spec, "amount must be finite")
    if kind == "label_noise" and not 0.0 <= amount <= 1.0:
        raise ConfigError(field, spec, "label_noise amount is a probability in [0, 1]")
    if kind in ("erode", "dilate") and (amount < 0 or amount > 32 or amount != int(amount)):
        raise ConfigError(field, spec, f"{kind} amount is a whole number of voxels in [0, 32]")
    if kind == "drop_class" and (amount != int(amount) or int(amount) not in LABELS or int(amount) == 0):
        options = [k for k in LABELS if k > 0]
        raise ConfigError(field, spec, "drop_class amount is a foreground class id", options=options)
    if kind == "shift" and amount != int(amount):
        raise ConfigError(field, spec, "shift amount is a whole number of voxels")


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation with the 6-neighbourhood (a voxel per iteration)."""
    out = mask.copy()
    for _ in range(int(iterations)):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[:, :, 1:] |= out[:, :, :-1]
        grown[:, :, :-1] |= out[:, :, 1:]
        out = grown
    return out


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary erosion with the 6-neighbourhood (a voxel per iteration)."""
    return ~_dilate(~mask, iterations)


def corrupt_label(
    label: np.ndarray, kind: str, amount: float, *, structures: dict | None = None, seed: int = 0
) -> np.ndarray:
    """Return a corrupted copy of a label map (the input is not modified).

    Kinds (see :data:`CORRUPTION_KINDS`):

    * ``label_noise`` (amount = probability p): structure-level annotation errors. Each lesion is
      missed with probability p (relabelled as the organ where it lies in the organ, else
      background); each nodule (small bright spot) is annotated as a lesion and each bowel blob
      as organ with probability p (false-positive annotations). This needs ``structures`` (the generator's
      masks); without them, each lesion voxel is relabelled organ with probability p.
    * ``erode`` / ``dilate`` (amount = voxels, 0-32): systematic boundary error; the foreground and the
      lesion masks are eroded/dilated by that many 6-neighbourhood steps (an eroded lesion rim
      becomes organ; a dilated lesion grows over organ and background).
    * ``drop_class`` (amount = class id): that class is labelled background.
    * ``shift`` (amount = voxels, may be negative): the labels move by that many voxels along the
      first axis (x), zero-filled (a registration error).

    Args:
        label: (X, Y, Z) integer label map.
        kind: corruption kind.
        amount: kind-specific amount (see above).
        structures: generator masks ``organ``, ``lesions``, ``nodules``, ``blobs``. Defaults to None.
        seed: seed of the random choices of ``label_noise``. Defaults to 0.

    Returns:
        The corrupted label map, same shape and dtype.

    Raises:
        ConfigError: (field ``corrupt``) for an unknown kind or a bad amount.
    """
    validate_corruption("corrupt", f"{kind}:{amount}", kind, float(amount))
    rng = np.random.default_rng(seed)
    out = label.copy()
    if kind == "label_noise":
        if structures is None:
            flip = (out == 2) & (rng.random(out.shape) < amount)
            out[flip] = 1
            return out
        organ = structures["organ"]
        for m in structures["lesions"]:
            if rng.random() < amount:
                out[m] = 0
                out[m & organ] = 1
        for m in structures["nodules"]:
            if rng.random() < amount:
                out[m] = 2
        for m in structures["blobs"]:
            if rng.random() < amount:
                out[m & (out == 0)] = 1
        return out
    if kind in ("erode", "dilate"):
        steps = int(amount)
        op = _erode if kind == "erode" else _dilate
        fg = op(label > 0, steps)
        les = op(label == 2, steps)
        out[:] = 0
        out[fg] = 1
        out[les] = 2
        return out
    if kind == "drop_class":
        out[out == int(amount)] = 0
        return out
    # shift
    k = int(amount)
    if k == 0:
        return out
    out[:] = 0
    if k > 0:
        out[k:] = label[:-k]
    else:
        out[:k] = label[-k:]
    return out
