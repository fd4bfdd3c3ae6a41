"""The hard gate: which site updates may enter aggregation at all.

An update is dropped, with the reason, when it does not have exactly the global model's tensor
names, when a tensor's shape differs, when it holds NaN or Inf, or when its norm exceeds
``max_norm_ratio`` times the round's reference norm (:func:`reference_norm`: the median norm of
the round's updates with 3 or more of them, the smaller norm with 2, clamped to within a factor
``growth`` of the history of earlier rounds' reference norms). Without history, 2 updates are not
compared (the rule would drop the larger of an honest and a shrunken update) and 1 is not checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedsegnet.aggregation.compact import as_numpy, view


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on one site's update.

    Args:
        site: the site name.
        accepted: whether the update may be aggregated.
        reason: why it was dropped (empty when accepted).
        norm: the update's L2 norm (NaN when it could not be computed).
    """

    site: str
    accepted: bool
    reason: str
    norm: float


def shared_reference(reference: Mapping, personal) -> tuple[dict | None, str]:
    """The part of the global model a site's update must match, given the keys it keeps to itself.

    Personalised sites send only their shared keys and declare (by name) the ones they keep.

    Args:
        reference: ``{name: array or shape}``, the global model.
        personal: the declared personal key names (a list of strings; None or empty: none).

    Returns:
        ``(shared, "")`` with ``shared`` the reference without the declared keys, or
        ``(None, reason)`` when the declaration is not a list of names the global model has.
    """
    personal = personal or []
    if not isinstance(personal, (list, tuple)) or not all(isinstance(k, str) for k in personal):
        return None, "the declared personal keys are not a list of parameter names"
    unknown = sorted(set(personal) - set(reference))
    if unknown:
        return None, f"declares personal keys the global model does not have: {unknown[:3]}"
    kept = set(personal)
    return {k: v for k, v in reference.items() if k not in kept}, ""


def reference_norm(norms, history=(), growth: float = 2.0, window: int = 5) -> float | None:
    """The norm an ordinary update of this round has, robust to one site scaling its update.

    With 3 or more norms: their median (one site, or fewer than half, cannot move it beyond the
    honest ones). With 2: the smaller one (a site that scales its update up only makes itself the
    larger; one that scales it down can shrink the reference, which slows the round but moves the
    model less, never more). With 1: that norm. When earlier rounds left reference norms
    (``history``), the result is clamped to ``[h / growth, h * growth]`` with ``h`` the median of
    the last ``window`` of them (``[h / growth, h]`` for a lone update, which cannot raise it):
    sites that grow their norms together move the reference by at most a factor ``growth`` per
    ``window`` rounds.

    Args:
        norms: the round's update norms (finite, >= 0); not modified.
        history: earlier rounds' reference norms, oldest first. Defaults to () (none).
        growth: the clamp factor around the history, > 1. Defaults to 2.0.
        window: how many of the latest history values the clamp uses, >= 1. Defaults to 5.

    Returns:
        The reference norm (float), or None when there are neither norms nor history.

    Raises:
        ValueError: ``growth`` <= 1 or ``window`` < 1.
    """
    if not growth > 1:
        raise ValueError(f"growth={growth!r}: must be > 1")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window={window!r}: must be an int >= 1")
    values = sorted(float(n) for n in norms)
    past = [float(h) for h in list(history)[-window:] if math.isfinite(float(h)) and float(h) > 0]
    h = float(np.median(past)) if past else None
    if not values:
        return h
    ref = float(np.median(values)) if len(values) >= 3 else values[0]
    if h is not None:  # a lone update may not raise the reference at all
        ref = min(max(ref, h / growth), h if len(values) == 1 else h * growth)
    return ref


def check_update(update: Mapping, shapes: Mapping[str, tuple]) -> str:
    """Why one update cannot be aggregated on its own (names, shapes, NaN/Inf); "" when it can.

    The per-update part of the gate (the norm rule needs the round's other updates): every shape
    first, then the values. A :class:`~fedsegnet.aggregation.compact.CompactUpdate` is checked on
    its stored values, nothing densified (unless a tensor holds NaN or Inf, to name it).

    Args:
        update: ``{name: array or tensor}``; not modified.
        shapes: ``{name: shape tuple}`` the update must match.

    Returns:
        The reason (naming the tensor at fault), or "" when the update passes.
    """
    missing, extra = sorted(set(shapes) - set(update)), sorted(set(update) - set(shapes))
    if missing or extra:
        return f"tensor names differ from the global model's: {len(missing)} missing {missing[:3]}, {len(extra)} unexpected {extra[:3]}"
    reader = view(update)
    wrong = next((n for n in update if reader.shape(n) != shapes[n]), None)
    if wrong is not None:
        return f"{wrong}: shape {list(reader.shape(wrong))} differs from the global model's {list(shapes[wrong])}"
    if not reader.is_finite():
        bad = next(n for n in update if not np.isfinite(as_numpy(update[n])).all())
        return f"{bad}: holds NaN or Inf"
    return ""


def reference_shapes(reference: Mapping) -> dict[str, tuple]:
    """``{name: shape tuple}`` of a reference given as arrays, tensors or shapes."""
    return {k: tuple(getattr(v, "shape", v)) for k, v in reference.items()}


def gate_updates(
    updates: Mapping[str, Mapping],
    reference: Mapping,
    max_norm_ratio: float = 10.0,
    history=(),
    growth: float = 2.0,
    window: int = 5,
    checked=(),
) -> dict[str, GateDecision]:
    """Check every site's update against the global model and against the others.

    Args:
        updates: ``{site: {name: array or tensor}}``; not modified.
        reference: ``{name: array or shape}``: the global model's names and shapes.
        max_norm_ratio: drop updates whose norm exceeds this many times the reference norm
            (:func:`reference_norm`) of the updates that passed the other checks; applied with 3 or
            more of them, or with any number once ``history`` holds a value. Defaults to 10.0.
        history: earlier rounds' reference norms (see :func:`reference_norm`). Defaults to ().
        growth: clamp factor around the history. Defaults to 2.0.
        window: history values the clamp uses. Defaults to 5.
        checked: sites whose updates already passed :func:`check_update` against the same
            reference (at accept); only the norm rule is applied to them. Defaults to ().

    Returns:
        ``{site: GateDecision}``, one per site of ``updates``.

    Raises:
        ValueError: ``max_norm_ratio`` is not a number > 1.
    """
    if isinstance(max_norm_ratio, bool) or not isinstance(max_norm_ratio, (int, float)) or not max_norm_ratio > 1:
        raise ValueError(f"max_norm_ratio={max_norm_ratio!r}: must be a number > 1")
    shapes = reference_shapes(reference)
    checked = set(checked)
    decisions, norms = {}, {}
    for site, update in updates.items():
        reason = "" if site in checked else check_update(update, shapes)
        if reason:
            decisions[site] = GateDecision(site, False, reason, math.nan)
        else:
            norms[site] = view(update).norm()
    history = list(history)
    ref = reference_norm(list(norms.values()), history, growth, window) if norms else None
    check = ref is not None and ref > 0 and (len(norms) >= 3 or bool(history))
    for site, norm in norms.items():
        if check and norm > max_norm_ratio * ref:
            decisions[site] = GateDecision(
                site, False, f"norm {norm:.4g} is {norm / ref:.1f}x the reference norm {ref:.4g} (limit {max_norm_ratio}x)", norm
            )
        else:
            decisions[site] = GateDecision(site, True, "", norm)
    return {site: decisions[site] for site in updates}
