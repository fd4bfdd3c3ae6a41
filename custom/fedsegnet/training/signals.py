"""AAM's data-quality signal, measured at the site: how well its labels agree with the global model.

Each round the site runs the received global model on a few of its own training crops and compares
the predictions with its labels: :func:`label_agreement` (Dice) for voxel and partial sites,
:func:`weak_label_agreement` for box and tag sites. The server's AAM (:mod:`fedsegnet.aggregation.aam`)
weighs the sites by it, comparing weak sites only with sites of the same label kind.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from fedsegnet.errors import ConfigError

__all__ = ["label_agreement", "weak_label_agreement"]


def _take(batches: Iterable, n_batches: int) -> Iterator:
    """The first ``n_batches`` (>= 1) batches of an iterator or iterable (fewer if it runs out)."""
    if int(n_batches) < 1:
        raise ConfigError("n_batches", n_batches, "must be >= 1")
    return itertools.islice(iter(batches), int(n_batches))


@torch.no_grad()
def label_agreement(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    num_classes: int,
    device: str | torch.device,
    n_batches: int = 2,
    classes: Sequence[int] | None = None,
) -> float | None:
    """Agreement of a model's predictions with the labels of a few training batches.

    The mean over foreground classes of the Dice between ``argmax(model(image))`` and ``label``,
    pooled over the batches (a class absent from both predictions and labels is skipped). Run with
    the received global model on a site's own training crops, it estimates how well the site's
    annotations agree with what the federation has learned (AAM's data-quality signal). The
    model is put in eval mode and left there.

    Args:
        model: the network, on ``device``.
        batches: an iterator (or iterable) of ``{"image": (B, C, X, Y, Z), "label": (B, 1, X, Y, Z)}``;
            ``n_batches`` are drawn from it.
        num_classes: classes including background.
        device: where the batches are moved.
        n_batches: batches to use, >= 1. Defaults to 2.
        classes: foreground classes to score (a partial site's annotated classes; predictions of
            the others count as background). Defaults to None (all).

    Returns:
        The agreement in [0, 1], or None when no foreground class occurs in predictions or labels.
    """
    model.eval()
    inter = torch.zeros(num_classes, dtype=torch.float64)
    denom = torch.zeros(num_classes, dtype=torch.float64)
    for batch in _take(batches, n_batches):
        image, label = batch["image"], batch["label"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        label = label.as_tensor() if hasattr(label, "as_tensor") else label
        pred = model(image.to(device, dtype=torch.float32)).argmax(dim=1).cpu()
        label = label[:, 0].long().cpu()
        for c in classes if classes is not None else range(1, num_classes):
            p, t = pred == c, label == c
            inter[c] += float((p & t).sum())
            denom[c] += float(p.sum() + t.sum())
    present = denom > 0
    if not present.any():
        return None
    return float((2 * inter[present] / denom[present]).mean())


@torch.no_grad()
def weak_label_agreement(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    kind: str,
    num_classes: int,
    device: str | torch.device,
    n_batches: int = 2,
) -> float | None:
    """Agreement of a model's predictions with a box or tag site's weak labels, in [0, 1].

    - ``box``: the harmonic mean of *precision* (share of the predicted voxels of each class that
      lie inside a box of that class) and *tightness* (share of the planes crossing a box, along
      each axis, that hold a predicted voxel of its class: a tight box's planes all cut the object).
      A perfect model scores 1.
    - ``tag``: the share of predicted foreground voxels whose class the case's tags list.

    Run with the received global model on the site's training crops, it is AAM's data-quality
    signal for weak sites; AAM compares it only with sites of the same label kind (the scales
    differ from a voxel site's Dice). The model is put in eval mode and left there.

    Returns:
        The agreement, or None when there is nothing to compare (no prediction and no box).
    """
    if kind not in ("box", "tag"):
        raise ConfigError("kind", kind, "weak agreement is for box or tag sites", options=("box", "tag"))
    model.eval()
    inside = total = 0.0
    hits, planes = 0.0, 0.0
    for batch in _take(batches, n_batches):
        image = batch["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        pred = model(image.to(device, dtype=torch.float32)).argmax(dim=1).cpu()  # (B, X, Y, Z)
        if kind == "tag":
            tags = torch.as_tensor(batch["tags"]).cpu() > 0.5  # (B, C-1)
            for c in range(1, num_classes):
                n = (pred == c).flatten(1).sum(dim=1).double()
                total += float(n.sum())
                inside += float((n * tags[:, c - 1]).sum())
            continue
        boxes = batch["label"]
        boxes = (boxes.as_tensor() if hasattr(boxes, "as_tensor") else boxes).cpu() > 0.5  # (B, C-1, X, Y, Z)
        for c in range(1, num_classes):
            p, m = pred == c, boxes[:, c - 1]
            total += float(p.sum())
            inside += float((p & m).sum())
            for axis in (1, 2, 3):
                others = tuple(a for a in (1, 2, 3) if a != axis)
                crossing = m.amax(dim=others)  # (B, n): the planes perpendicular to axis that cross a box
                hit = (p & m).amax(dim=others)
                planes += float(crossing.sum())
                hits += float(hit.sum())
    if kind == "tag":
        return inside / total if total > 0 else None
    if total == 0 and planes == 0:
        return None
    precision = inside / total if total > 0 else 0.0
    tightness = hits / planes if planes > 0 else 0.0
    return 0.0 if precision + tightness == 0 else 2 * precision * tightness / (precision + tightness)
