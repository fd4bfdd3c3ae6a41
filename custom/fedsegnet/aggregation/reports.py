"""What a site reports with its update, and the bounds that limit what reporting can buy.

A site's case count, label kind and Dice values come with its update and are self-reported: an
untrusted site can send anything. :meth:`SiteReport.clamped` brings them into sane ranges (counts
to ``[1, max_cases]``, Dice to ``[0, 1]``, non-numbers and unknown label kinds to "not used" and the
lowest trust) and notes every change; :func:`peer_bounded_counts` bounds each count by what the
other sites report. :data:`LABEL_KIND_TRUST` is the prior trust of each label kind (FedMix: sites
with voxel masks, boxes or image-level tags). AAM (:mod:`.aam`) and FedAvg's weights in the server
round (:mod:`.server_round`) both read reports through these. Under secure aggregation, where the
server never sees an update, :func:`reported_weights` gives the round's weights from the reports
alone (AAM without its divergence terms, or :func:`sample_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

LABEL_KIND_TRUST = {"voxel": 1.0, "partial": 0.7, "box": 0.5, "tag": 0.3}
"""Prior trust per label kind; an unknown kind gets the lowest of these."""


@dataclass
class SiteReport:
    """What a site reports with its update (self-reported: clamp with :meth:`clamped`).

    Args:
        n_train: training cases. Defaults to 1.
        label_kind: ``voxel``, ``box``, ``tag`` or ``partial``. Defaults to ``"voxel"``.
        agreement: Dice of the received global model's predictions with the site's training
            labels, in [0, 1]. Defaults to None (not reported).
        val_dice_global: Dice of the received global model on the site's validation split.
            Defaults to None.
        val_dice_local: Dice of the site's local model after training on the same split.
            Defaults to None.
    """

    n_train: float = 1.0
    label_kind: str = "voxel"
    agreement: float | None = None
    val_dice_global: float | None = None
    val_dice_local: float | None = None

    @classmethod
    def clamped(cls, max_cases: float = 100_000, **values) -> tuple[SiteReport, list[str]]:
        """Build a report from raw (untrusted) values, clamped to sane ranges.

        Args:
            max_cases: upper bound of ``n_train``. Defaults to 100_000.
            **values: the fields of :class:`SiteReport`; unknown keys are ignored.

        Returns:
            ``(report, notes)``: the clamped report and one note per value that was changed.
        """
        notes = []
        n = _number(values.get("n_train"))
        if n is None or n < 1:
            notes.append(f"n_train={values.get('n_train')!r} -> 1")
            n = 1.0
        elif n > max_cases:
            notes.append(f"n_train={n:g} -> {max_cases:g} (max_cases)")
            n = float(max_cases)
        kind = values.get("label_kind") or "voxel"
        if kind not in LABEL_KIND_TRUST:
            notes.append(f"label_kind={kind!r} unknown -> lowest trust")
        dice = {}
        for key in ("agreement", "val_dice_global", "val_dice_local"):
            raw = values.get(key)
            x = _number(raw)
            if raw is not None and x is None:
                notes.append(f"{key}={raw!r} not a finite number -> not used")
            if x is not None and not 0.0 <= x <= 1.0:
                notes.append(f"{key}={x:g} -> clamped to [0, 1]")
                x = min(1.0, max(0.0, x))
            dice[key] = x
        return cls(n_train=float(n), label_kind=str(kind), **dice), notes


def _number(x) -> float | None:
    """``x`` as a finite float, or None (None, a bool, a non-number, NaN or Inf)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def peer_bounded_counts(counts: Mapping[str, float], ratio: float = 2.0) -> dict[str, float]:
    """Bound each site's (self-reported) case count by what the other sites report.

    Every count is cut to at most ``ratio`` times the *lower* median of the other sites' counts
    (with an even number of others, the smaller of the two middle values), so that one site, or
    fewer than half of the others, cannot raise the bound that applies to them by overclaiming.

    Args:
        counts: ``{site: count}`` (already clamped to ``[1, max_cases]``); not modified.
        ratio: the bound as a multiple of the others' lower median, >= 1; 0 turns the bound off.
            Defaults to 2.0.

    Returns:
        ``{site: bounded count}`` in the order of ``counts``; unchanged with fewer than 2 sites.

    Raises:
        ValueError: ``ratio`` neither 0 nor >= 1.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (ratio == 0 or ratio >= 1):
        raise ValueError(f"ratio={ratio!r}: must be 0 (off) or >= 1")
    if not ratio or len(counts) < 2:
        return dict(counts)
    out = {}
    for site, n in counts.items():
        others = sorted(float(v) for s, v in counts.items() if s != site)
        out[site] = min(float(n), float(ratio) * others[(len(others) - 1) // 2])
    return out


def _bounded_counts(n_train: dict[str, int], peer_cases_ratio: float) -> dict[str, float]:
    """The reported counts, checked (positive integers, at least one site) and bounded by the peers'."""
    if not n_train:
        raise ValueError("n_train: no site reported a number of training cases")
    for site, n in n_train.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"site {site!r}: n_train={n!r} must be a positive integer")
    return peer_bounded_counts(n_train, peer_cases_ratio)


def sample_weights(n_train: dict[str, int], peer_cases_ratio: float = 2.0) -> dict[str, float]:
    """``{site: n / sum(n)}`` from the cases each site reported, each count first bounded by its peers'
    as in the plain modes (:func:`peer_bounded_counts`: at most
    ``peer_cases_ratio`` times the others' lower median), so that a site claiming ``1e9`` cases cannot
    take the round's weight.

    Args:
        n_train: ``{site: reported training cases}``.
        peer_cases_ratio: the job arg ``aam_peer_cases_ratio`` (0 = counts as reported). Defaults to 2.0.

    Raises:
        ValueError: no site, or a count that is not a positive integer (naming the site).
    """
    bounded = _bounded_counts(n_train, peer_cases_ratio)
    total = sum(bounded.values())
    return {site: n / total for site, n in sorted(bounded.items())}


def reported_weights(
    aam, n_train: dict[str, int], kinds: dict[str, str], reports: dict[str, dict], peer_cases_ratio: float = 2.0,
    max_cases: float = 100_000,
) -> tuple[dict[str, float], dict[str, dict]]:
    """AAM's weights from what the sites reported, for a round whose updates the server never sees.

    Args:
        aam: the job's :class:`~fedsegnet.aggregation.AdaptiveAggregation` (its smoothed signals are
            updated; its ``weights`` is called without divergence signals), or None for sample-count
            weights (:func:`sample_weights`).
        n_train: ``{site: training cases}`` reported with this round's adverts.
        kinds: ``{site: label kind}`` reported with the adverts (missing: ``voxel``).
        reports: ``{site: {"agreement", "val_dice_global", "val_dice_local"}}`` of each site's previous
            masked input (missing: neutral, as in the plain modes).
        peer_cases_ratio: the job arg ``aam_peer_cases_ratio``. Defaults to 2.0.
        max_cases: the aggregator's bound on a reported count. Defaults to 100,000.

    Returns:
        ``({site: weight}, {site: AAM's signals and score})``; weights sum to 1; the signals are empty
        for sample-count weights.

    Raises:
        ValueError: no site, or a count that is not a positive integer (naming the site).
    """
    if aam is None:
        return sample_weights(n_train, peer_cases_ratio), {}
    bounded = _bounded_counts(n_train, peer_cases_ratio)
    site_reports = {}
    for site in sorted(bounded):
        prev = reports.get(site, {})
        site_reports[site], _ = SiteReport.clamped(
            max_cases, n_train=bounded[site], label_kind=kinds.get(site) or "voxel", agreement=prev.get("agreement"),
            val_dice_global=prev.get("val_dice_global"), val_dice_local=prev.get("val_dice_local"),
        )  # fmt: skip
    signals = aam.weights(site_reports, {})
    return {site: float(signals[site]["weight"]) for site in sorted(signals)}, signals
