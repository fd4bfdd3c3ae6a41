"""Losses for sites with weaker labels than voxel masks: boxes, image-level tags, partial label sets.

One federation mixes sites of every label kind (:mod:`fedsegnet.data.weak`); each site trains the
same network with the loss of its kind. Ideas from:

- FedMix (Wicaksana et al., "FedMix: Mixed Supervised Federated Learning for Medical Image
  Segmentation", IEEE TMI 2022): pixel, box and image-level labels in one federation; pseudo-labels
  from the model, constrained by the weak label; per-site adaptive aggregation weights.
- Marginal and exclusion losses (Shi et al., "Marginal loss and exclusion loss for partially
  supervised multi-organ segmentation", MedIA 2021), as used by SegViz and Fed-MENU for sites that
  annotate only some classes.
- The bounding-box tightness prior (Hsu et al., "Weakly Supervised Instance Segmentation using the
  Bounding Box Tightness Prior", NeurIPS 2019): every line crossing a tight 2D box meets the object;
  in 3D, every *plane* crossing a tight box (perpendicular to an axis) contains object voxels.

All functions take logits ``(B, C, X, Y, Z)`` (C classes with background 0) and return a scalar;
``teacher`` is the received global model's logits on the same crop (no gradient), the source of
pseudo-labels. Terms with nothing to average over contribute 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from fedsegnet.errors import ConfigError

__all__ = [
    "marginal_dice_ce",
    "exclusion_loss",
    "box_loss",
    "tag_loss",
    "pseudo_labels",
    "unannotated_pseudo_loss",
    "WeakSupervisionLoss",
]

_EPS = 1e-6


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    n = mask.sum()
    return (values * mask).sum() / n if n > 0 else values.sum() * 0.0


def _neg_log(x: torch.Tensor) -> torch.Tensor:
    return -torch.log(x.clamp_min(_EPS))


def _allowed_term(p: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``-log`` of the probability of the classes a weak label allows at each voxel, averaged; its
    gradient lowers every class that is not allowed and raises none of them."""
    return _neg_log((p * allowed).sum(dim=1)).mean()


def _unannotated(num_classes: int, annotated: Sequence[int]) -> list[int]:
    return [c for c in range(1, num_classes) if c not in {int(a) for a in annotated}]


def marginal_dice_ce(
    logits: torch.Tensor, label: torch.Tensor, annotated: Sequence[int], ignore: torch.Tensor | None = None
) -> torch.Tensor:
    """Dice + cross-entropy after merging every unannotated class into background.

    A partial site's label 0 means "background or a class this site does not annotate", so the
    model's probabilities of those classes are summed with background's before the loss (the
    marginal loss). With every class annotated it is exactly MONAI's ``DiceCELoss(softmax=True,
    to_onehot_y=True)``.

    Args:
        logits: ``(B, C, X, Y, Z)``.
        label: ``(B, 1, X, Y, Z)`` class ids, only 0 and ``annotated`` ones.
        annotated: foreground class ids the site annotates.
        ignore: ``(B, X, Y, Z)`` voxels left out of both terms. Defaults to None.
    """
    num_classes = logits.shape[1]
    annotated = sorted({int(c) for c in annotated})
    if not annotated or any(not 1 <= c < num_classes for c in annotated):
        raise ConfigError("annotated", annotated, f"must list foreground class ids in 1..{num_classes - 1}")
    absorbed = [c for c in range(num_classes) if c not in annotated]  # background + unannotated
    log_p = F.log_softmax(logits.float(), dim=1)
    channels = [torch.logsumexp(log_p[:, absorbed], dim=1, keepdim=True)] + [log_p[:, c : c + 1] for c in annotated]
    index = torch.zeros(num_classes, dtype=torch.long, device=label.device)
    for i, c in enumerate(annotated, start=1):
        index[c] = i
    target = index[label.long().clamp(0, num_classes - 1)]
    merged = torch.cat(channels, dim=1)
    if ignore is None:
        return DiceCELoss(to_onehot_y=True, softmax=True)(merged, target)
    keep = (~ignore)[:, None].to(merged.dtype)
    ce = _masked_mean(F.nll_loss(merged, target[:, 0], reduction="none"), ~ignore)
    onehot = F.one_hot(target[:, 0], len(channels)).permute(0, 4, 1, 2, 3).to(merged.dtype)
    return ce + DiceLoss()(merged.exp() * keep, onehot * keep)


def exclusion_loss(logits: torch.Tensor, label: torch.Tensor, annotated: Sequence[int]) -> torch.Tensor:
    """Where a partial site labels an annotated class, no unannotated class can be: ``-log(1 - sum p_u)``.

    Classes are mutually exclusive, so a voxel the site marks as (say) liver tells the model it is
    not tumour, even though the site never draws tumours. Averaged over the voxels labelled with
    an annotated foreground class; 0 when every class is annotated or no such voxel is present.
    """
    unannotated = _unannotated(logits.shape[1], annotated)
    if not unannotated:
        return logits.sum() * 0.0
    p = F.softmax(logits.float(), dim=1)
    labelled = (label[:, 0] > 0)
    return _masked_mean(_neg_log(1.0 - p[:, unannotated].sum(dim=1)), labelled)


def _balanced_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to ``target`` over ``mask``, averaged per target class, then over the classes
    present: a few confident lesion voxels weigh as much as a crop full of background."""
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    terms = [ce[mask & (target == c)].mean() for c in torch.unique(target[mask]).tolist()] if mask.any() else []
    return torch.stack(terms).mean() if terms else logits.sum() * 0.0


def unannotated_pseudo_loss(
    logits: torch.Tensor, label: torch.Tensor, teacher: torch.Tensor | None, annotated: Sequence[int], threshold: float = 0.8
) -> torch.Tensor:
    """A partial site's label 0 means "background or an unannotated class"; where the received
    global model is sure which (among background and the unannotated classes), learn that.

    Without it the marginal loss lets the easiest answer, background, absorb the unannotated
    structures the site sees (a liver-only site's tumours), and its updates erase those classes
    from the federation's features. Class-balanced cross-entropy on the confident label-0 voxels;
    0 without a teacher or when every class is annotated.
    """
    num_classes = logits.shape[1]
    unannotated = _unannotated(num_classes, annotated)
    if teacher is None or not unannotated:
        return logits.sum() * 0.0
    allowed = torch.zeros(num_classes, device=logits.device)
    allowed[[0, *unannotated]] = 1.0
    target, confident = pseudo_labels(teacher, allowed[None, :, None, None, None], threshold)
    return _balanced_ce(logits, target, confident & (label[:, 0] == 0))


def pseudo_labels(teacher: torch.Tensor, allowed: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels from a teacher's logits, restricted to the classes a weak label allows.

    Args:
        teacher: ``(B, C, X, Y, Z)`` logits of the received global model.
        allowed: ``(B, C, X, Y, Z)`` (or broadcastable) 1 where a class is possible at a voxel.
        threshold: keep a voxel when the renormalised probability of its best allowed class is at
            least this.

    Returns:
        ``(labels (B, X, Y, Z) long, confident (B, X, Y, Z) bool)``.
    """
    q = F.softmax(teacher.float(), dim=1) * allowed.to(torch.float32)
    q = q / q.sum(dim=1, keepdim=True).clamp_min(_EPS)
    conf, labels = q.max(dim=1)
    return labels, conf >= float(threshold)


def _tightness(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Every plane crossing a box (perpendicular to each axis) should hold an object voxel.

    ``p``, ``mask``: ``(B, X, Y, Z)``. For each axis and each plane where the box is present and
    not cut by the crop border (the box region of the plane touches no edge of the crop), the
    plane's highest object probability inside the box is pushed towards 1: ``-log max p``.
    """
    terms = []
    spatial = (1, 2, 3)
    for axis in spatial:
        others = tuple(a for a in spatial if a != axis)
        present = mask.amax(dim=others) > 0  # (B, n_axis)
        cut = torch.zeros_like(present)
        for o in others:  # the plane's box region reaches the crop's first or last index along o
            cut |= mask.narrow(o, 0, 1).amax(dim=others) > 0
            cut |= mask.narrow(o, mask.shape[o] - 1, 1).amax(dim=others) > 0
        best = (p * mask).amax(dim=others)
        valid = present & ~cut
        if valid.any():
            terms.append(_neg_log(best[valid]).mean())
    return torch.stack(terms).mean() if terms else p.sum() * 0.0


def box_loss(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    teacher: torch.Tensor | None = None,
    *,
    threshold: float = 0.8,
    pseudo_weight: float = 1.0,
    tightness_weight: float = 0.5,
    core_weight: float = 1.0,
) -> torch.Tensor:
    """Loss of a box-labelled crop.

    - Every voxel: ``-log`` of the probability of the classes the boxes allow there (background,
      and each class whose box covers the voxel); outside every box that is ``-log p_0``. Its
      gradient raises no class outside that class's boxes: nothing outside a box rewards foreground.
    - Box cores (``core_weight``; when ``boxes`` carries core channels): the central part of a tight
      box around a compact structure lies inside it (the central half of each axis lies inside the
      inscribed ellipsoid), so core voxels are taught their box's class from round 0, except where
      a box of a higher class covers them: where boxes overlap, higher class ids are taken to lie
      inside lower ones (a lesion inside its organ, as label maps draw them).
    - Inside boxes, outside cores: cross-entropy to the teacher's pseudo-labels, restricted to
      background and the classes whose boxes cover the voxel, where confident (``threshold``),
      times ``pseudo_weight``.
    - Pseudo-label and core terms are class-balanced: averaged per target class, then over classes.
    - Tightness prior (``tightness_weight``): see :func:`_tightness`.

    Args:
        logits: ``(B, C, X, Y, Z)``.
        boxes: ``(B, C - 1, X, Y, Z)`` 1 inside a box of class ``c`` (channel ``c - 1``), optionally
            followed by ``C - 1`` core channels (``(B, 2 * (C - 1), X, Y, Z)``).
        teacher: the received global model's logits on the crop; None skips the pseudo-label term.
        threshold: pseudo-label confidence. Defaults to 0.8.
        pseudo_weight: weight of the pseudo-label term. Defaults to 1.0.
        tightness_weight: weight of the tightness prior. Defaults to 0.5.
        core_weight: weight of the box-core term. Defaults to 1.0.
    """
    num_classes = logits.shape[1]
    k = num_classes - 1
    if boxes.shape[1] not in (k, 2 * k) or boxes.shape[2:] != logits.shape[2:]:
        raise ConfigError("boxes", tuple(boxes.shape),
                          f"expected (B, {k} or {2 * k}, {', '.join(map(str, logits.shape[2:]))}): box channels, then core channels")  # fmt: skip
    p = F.softmax(logits.float(), dim=1)
    cores = (boxes[:, k:] > 0.5) if boxes.shape[1] == 2 * k else None
    boxes = (boxes[:, :k] > 0.5).to(torch.float32)
    inside_any = boxes.amax(dim=1) > 0
    allowed = torch.cat([torch.ones_like(boxes[:, :1]), boxes], dim=1)
    loss = _allowed_term(p, allowed)
    core_any = torch.zeros_like(inside_any)
    if cores is not None and core_weight > 0:
        # a box's core is its class, unless a box of a higher class also covers the voxel (where
        # boxes overlap, higher class ids lie inside lower ones, as a lesion overwrites its organ)
        target = torch.zeros_like(inside_any, dtype=torch.long)
        for c in range(1, num_classes):
            above = boxes[:, c:].amax(dim=1) > 0 if c < num_classes - 1 else torch.zeros_like(inside_any)
            here = cores[:, c - 1] & ~above
            target[here] = c
            core_any |= here
        loss = loss + core_weight * _balanced_ce(logits, target, core_any)
    if teacher is not None and pseudo_weight > 0:
        target, confident = pseudo_labels(teacher, allowed, threshold)
        loss = loss + pseudo_weight * _balanced_ce(logits, target, confident & inside_any & ~core_any)
    if tightness_weight > 0:
        for c in range(1, num_classes):
            loss = loss + tightness_weight * _tightness(p[:, c], boxes[:, c - 1])
    return loss


def tag_loss(
    logits: torch.Tensor,
    tags: torch.Tensor,
    teacher: torch.Tensor | None = None,
    *,
    threshold: float = 0.8,
    pseudo_weight: float = 1.0,
    presence_weight: float = 0.5,
    presence_threshold: float = 0.5,
) -> torch.Tensor:
    """Loss of a crop from an image-level-tagged case.

    - A class absent from the case is suppressed at every voxel: ``-log`` of the probability of
      background and the present classes.
    - Present classes learn from the teacher's confident pseudo-labels (background and present
      classes allowed; class-balanced), times ``pseudo_weight``.
    - Presence (max-pooled, multiple-instance): for a present class that the teacher sees in this
      crop (its highest probability there is at least ``presence_threshold``), the model's highest
      probability in the crop is pushed towards 1. A crop can miss a present structure; the gate
      keeps the term from demanding it there.

    Args:
        logits: ``(B, C, X, Y, Z)``.
        tags: ``(B, C - 1)`` 1 where the class is present in the case.
        teacher: the received global model's logits; None skips the pseudo-label and presence terms.
        threshold: pseudo-label confidence. Defaults to 0.8.
        pseudo_weight: weight of the pseudo-label term. Defaults to 1.0.
        presence_weight: weight of the presence term. Defaults to 0.5.
        presence_threshold: teacher probability that opens the presence term. Defaults to 0.5.
    """
    num_classes = logits.shape[1]
    if tags.shape != (logits.shape[0], num_classes - 1):
        raise ConfigError("tags", tuple(tags.shape), f"expected ({logits.shape[0]}, {num_classes - 1})")
    p = F.softmax(logits.float(), dim=1)
    present = tags > 0.5  # (B, C-1)
    allowed = torch.cat([torch.ones_like(present[:, :1]), present], dim=1)[:, :, None, None, None]
    loss = _allowed_term(p, allowed)
    if teacher is None:
        return loss
    if pseudo_weight > 0:
        target, confident = pseudo_labels(teacher, allowed, threshold)
        loss = loss + pseudo_weight * _balanced_ce(logits, target, confident)
    if presence_weight > 0:
        q_max = F.softmax(teacher.float(), dim=1)[:, 1:].flatten(2).amax(dim=2)  # (B, C-1)
        gate = present & (q_max >= presence_threshold)
        if gate.any():
            p_max = p[:, 1:].flatten(2).amax(dim=2)
            loss = loss + presence_weight * _neg_log(p_max[gate]).mean()
    return loss


class WeakSupervisionLoss:
    """The loss of one site's label kind, with the pseudo-label terms ramped up over rounds.

    Args:
        kind: ``voxel``, ``box``, ``tag`` or ``partial``.
        num_classes: classes including background.
        annotated: foreground class ids a ``partial`` site annotates. Defaults to None (all).
        threshold: pseudo-label confidence for box/tag sites. Defaults to 0.8 (FedMix-style: keep
            only voxels the global model is sure of).
        ramp_rounds: the pseudo-label weight grows linearly from 0 (round 0, the untrained model)
            to 1 at this round; 0 = full weight at once. Defaults to 5.
        tightness_weight: box tightness prior weight. Defaults to 0.5.
        presence_weight: tag presence term weight. Defaults to 0.5.
        exclusion_weight: partial exclusion term weight. Defaults to 1.0.

    Call: ``loss(logits, label, *, tags=None, teacher=None, round=0)``; ``label`` is the class-id
    map (voxel, partial), the box channels (box) or ignored (tag).
    """

    KINDS = ("voxel", "box", "tag", "partial")

    def __init__(
        self,
        kind: str,
        num_classes: int,
        annotated: Sequence[int] | None = None,
        threshold: float = 0.8,
        ramp_rounds: int = 5,
        tightness_weight: float = 0.5,
        presence_weight: float = 0.5,
        exclusion_weight: float = 1.0,
    ):
        if kind not in self.KINDS:
            raise ConfigError("label_kind", kind, "unknown label kind", options=self.KINDS)
        if not 0.0 < float(threshold) <= 1.0:
            raise ConfigError("pseudo_threshold", threshold, "must be in (0, 1]")
        if int(ramp_rounds) < 0:
            raise ConfigError("pseudo_ramp_rounds", ramp_rounds, "must be >= 0")
        for name, value in (("tightness_weight", tightness_weight), ("presence_weight", presence_weight),
                            ("exclusion_weight", exclusion_weight)):  # fmt: skip
            if not (float(value) >= 0 and math.isfinite(float(value))):
                raise ConfigError(name, value, "must be a finite number >= 0")
        self.kind = kind
        self.num_classes = int(num_classes)
        self.annotated = tuple(annotated) if annotated else tuple(range(1, self.num_classes))
        self.threshold = float(threshold)
        self.ramp_rounds = int(ramp_rounds)
        self.tightness_weight = float(tightness_weight)
        self.presence_weight = float(presence_weight)
        self.exclusion_weight = float(exclusion_weight)
        self._dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    @property
    def needs_teacher(self) -> bool:
        """True when the loss uses the received global model's predictions (box, tag, partial)."""
        return self.kind in ("box", "tag", "partial")

    def ramp(self, round: int) -> float:
        """Weight of the pseudo-label terms in ``round`` (linear ramp-up)."""
        return 1.0 if self.ramp_rounds == 0 else min(1.0, max(0, int(round)) / self.ramp_rounds)

    def __call__(self, logits, label, *, tags=None, teacher=None, round: int = 0) -> torch.Tensor:
        if self.kind == "voxel":
            return self._dice_ce(logits, label)
        w = self.ramp(round)
        if self.kind == "partial":
            # label-0 voxels where the global model sees a structure are left out of the marginal
            # loss: they may hold a class this site does not draw (a tumour inside its liver)
            suspect = None if teacher is None or w == 0 else (teacher.argmax(dim=1) != 0) & (label[:, 0] == 0)
            loss = marginal_dice_ce(logits, label, self.annotated, ignore=suspect)
            loss = loss + self.exclusion_weight * exclusion_loss(logits, label, self.annotated)
            return loss + w * unannotated_pseudo_loss(logits, label, teacher, self.annotated, self.threshold)
        if self.kind == "box":
            return box_loss(logits, label, teacher, threshold=self.threshold, pseudo_weight=w,
                            tightness_weight=self.tightness_weight)  # fmt: skip
        if tags is None:
            raise ConfigError("tags", None, "a tag site's batch carries no 'tags'")
        return tag_loss(logits, tags, teacher, threshold=self.threshold, pseudo_weight=w,
                        presence_weight=self.presence_weight * w)  # fmt: skip
