"""One server round: gate, shared keys, method, clipping, combination and the round record, in one place.

The FLARE aggregator (:class:`fedsegnet.flare.aggregator.AAMAggregator`) and the in-process
federation (:func:`fedsegnet.federation.run_federation`) both call :meth:`ServerRound.round`, so a
benchmark measures the round a job runs. A round:

1. the shared reference: the global model without the keys the job keeps at the sites (computed
   by the server from its own job args, never taken from a site);
2. the hard gate (:mod:`.gate`: names, shapes, NaN/Inf against the shared reference, then the norm
   rule against the round's reference norm and its history), for every method;
3. the method: ``"aam"`` (:class:`~.aam.AdaptiveAggregation`: peer-bounded case counts, signals,
   clipping to the reference norm, bounded weights; Wang et al., FedSegNet), ``"mean"``
   (FedAvg weights: clamped, peer-bounded case counts; McMahan et al., AISTATS 2017),
   ``"median"`` or ``"trimmed_mean"`` (coordinate-wise, Yin et al., ICML 2018);
4. the record: per site accepted, gate reason, weight and the signals; the dict ``RoundRecorder``
   writes.

The per-update part of the gate (:meth:`ServerRound.check`: the job's personal keys, names,
shapes, NaN/Inf) can run when an update arrives; the round then applies only the norm rule to
the updates checked against the same reference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedsegnet.aggregation.aam import AdaptiveAggregation
from fedsegnet.aggregation.divergence import sample_positions
from fedsegnet.aggregation.gate import check_update, reference_shapes
from fedsegnet.aggregation.reports import SiteReport, peer_bounded_counts
from fedsegnet.aggregation.robust import aggregate_mean, aggregate_median, aggregate_trimmed_mean

logger = logging.getLogger(__name__)

METHODS = ("aam", "mean", "median", "trimmed_mean")
"""Aggregation methods of a server round (``mean`` = FedAvg weights): the job arg ``aggregation``,
the FLARE aggregator and the in-process federation take these names."""


def check_personal_keys(declared, expected: frozenset, keys) -> str:
    """Why an update does not keep exactly the job's personal keys at the site ("" when it does).

    Args:
        declared: what the site declares it keeps (a list of names; None: nothing).
        expected: the job's personal key names.
        keys: the names the update holds.

    Returns:
        The reason, or "" when the declaration is the job's set and no personal key was sent.
    """
    declared = declared or []
    if not isinstance(declared, (list, tuple)) or not all(isinstance(k, str) for k in declared):
        return "the declared personal keys are not a list of parameter names"
    if set(declared) != set(expected):
        return (f"declares {len(set(declared))} personal key(s), the job keeps {len(expected)} at the sites "
                f"(e.g. {sorted(set(declared) ^ set(expected))[:3]} differ)")  # fmt: skip
    sent = sorted(set(keys) & set(expected))
    if sent:
        return f"sends {len(sent)} key(s) the job keeps at the sites: {sent[:3]}"
    return ""


@dataclass(frozen=True)
class RoundResult:
    """What one server round produced.

    Args:
        update: ``{name: float32 array}`` over the shared keys, or None when no update passed the gate.
        record: ``{"round", "method", "sites": {site: {"accepted", "gate", "weight", ...}}}``.
    """

    update: dict | None
    record: dict


class ServerRound:
    """The server's side of a round for one method; its state is the AAM mechanism and its history.

    Args:
        method: one of :data:`METHODS`. Defaults to ``"aam"``.
        aam: the mechanism whose gate settings, norm history and (for ``"aam"``) weights the
            round uses. Defaults to None (``AdaptiveAggregation()``).
        trimmed_beta: share trimmed at each end for ``"trimmed_mean"``, in [0, 0.5). Defaults to 0.25.

    Raises:
        ValueError: an unknown method or ``trimmed_beta`` outside [0, 0.5).
    """

    def __init__(self, method: str = "aam", aam: AdaptiveAggregation | None = None, trimmed_beta: float = 0.25):
        if method not in METHODS:
            raise ValueError(f"method={method!r}: unknown (valid: {', '.join(METHODS)})")
        if isinstance(trimmed_beta, bool) or not isinstance(trimmed_beta, (int, float)) or not 0 <= trimmed_beta < 0.5:
            raise ValueError(f"trimmed_beta={trimmed_beta!r}: must be in [0, 0.5)")
        self.method = method
        self.aam = aam if aam is not None else AdaptiveAggregation()
        self.trimmed_beta = float(trimmed_beta)
        self._shapes_key = None
        self._shapes_ref = None
        self._shapes: dict | None = None

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The AAM state (signal and norm history), as :meth:`AdaptiveAggregation.state_dict`."""
        return self.aam.state_dict()

    def load_state_dict(self, state) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.aam.load_state_dict(state)

    # ----------------------------------------------------------------------------- reference
    def shared_shapes(self, reference: Mapping, expected_personal=frozenset()) -> dict[str, tuple]:
        """``{name: shape}`` of the reference without the job's personal keys (computed once per reference).

        Args:
            reference: ``{name: array or shape}``, the global model; not modified.
            expected_personal: the names the job keeps at the sites. Defaults to none.

        Returns:
            The shared shapes; the same object while the reference object and the keys are the same.
        """
        kept = frozenset(expected_personal or ())
        key = (len(reference), kept)
        if self._shapes is None or self._shapes_key != key or self._shapes_ref is not reference:
            self._shapes = {k: v for k, v in reference_shapes(reference).items() if k not in kept}
            self._shapes_key, self._shapes_ref = key, reference
        return self._shapes

    def sample_positions(self, shapes: Mapping[str, tuple]) -> dict[str, np.ndarray] | None:
        """The coordinates the round reads of every update before the weighted sum: the divergence sample.

        An update can keep their values when it arrives (:class:`~.compact.CompactUpdate`'s
        ``sample``), read from the decode its check made, so a packed record is decoded twice in
        a round, not three times.

        Args:
            shapes: the round's shared shapes (:meth:`shared_shapes`).

        Returns:
            ``{name: positions}`` of :func:`~.divergence.sample_positions` with the mechanism's
            ``sample_size``; None when the method reads no sample (not ``"aam"``) or the sample is
            every coordinate (``sample_size`` 0, or shapes of at most ``sample_size`` values): a
            dense copy per site is not kept.
        """
        total = sum(math.prod(shape) for shape in shapes.values())
        if self.method != "aam" or not 0 < self.aam.sample_size < total:
            return None
        return sample_positions(shapes, self.aam.sample_size)

    def check(self, update: Mapping, reference: Mapping, expected_personal=frozenset(), declared=None) -> str:
        """The checks one update can pass on its own, as it arrives: personal keys, names, shapes, NaN/Inf.

        Args:
            update: ``{name: array}`` or a :class:`~.compact.CompactUpdate`; not modified.
            reference: ``{name: array or shape}``, the global model.
            expected_personal: the names the job keeps at the sites. Defaults to none.
            declared: the personal keys the site declares. Defaults to None (none).

        Returns:
            Why the update is refused, or "" when it may enter the round.
        """
        expected = frozenset(expected_personal or ())
        reason = check_personal_keys(declared, expected, update)
        return reason or check_update(update, self.shared_shapes(reference, expected))

    # ----------------------------------------------------------------------------- the round
    def round(
        self,
        updates: Mapping[str, Mapping],
        reports: Mapping[str, Mapping],
        reference: Mapping,
        round: int | None = None,
        expected_personal=frozenset(),
        refused: Mapping[str, str] | None = None,
        checked: Mapping[str, Mapping] | None = None,
    ) -> RoundResult:
        """Gate, weigh and combine one round's updates and write its record.

        Args:
            updates: ``{site: {name: array}}`` (plain dicts or :class:`~.compact.CompactUpdate`)
                over the shared keys; not modified.
            reports: ``{site: {n_train, label_kind, agreement, val_dice_global, val_dice_local}}``
                (raw, self-reported; clamped here).
            reference: ``{name: array or shape}``, the global model (all keys).
            round: the round number for the record. Defaults to None.
            expected_personal: the names the job keeps at the sites. Defaults to none.
            refused: ``{site: reason}`` of updates refused on arrival, recorded as dropped.
                Defaults to None.
            checked: ``{site: shapes}``: sites whose updates passed :meth:`check` against those
                shared shapes; when they equal this round's, only the norm rule is applied.
                Defaults to None (every update fully gated).

        Returns:
            :class:`RoundResult`; its ``update`` is None when no update passed the gate.
        """
        expected = frozenset(expected_personal or ())
        shapes = self.shared_shapes(reference, expected)
        done = {s for s, against in (checked or {}).items() if s in updates and (against is shapes or against == shapes)}
        record = {"round": round, "method": self.method,
                  "sites": {s: {"accepted": False, "gate": r, "weight": 0.0} for s, r in (refused or {}).items()}}  # fmt: skip
        combined = None
        if updates:
            decisions, rho = self.aam.gate(updates, shapes, checked=done)
            if self.method == "aam":
                result = self.aam.combine(updates, reports, decisions, rho, round=round)
                combined = result.update
                record["sites"].update(result.sites)
            else:
                combined = self._baseline(updates, reports, decisions, record["sites"])
            if expected:
                for site in updates:
                    record["sites"][site]["personal_keys"] = len(expected)  # kept at the sites (the job's set, never sent)
        kept = [s for s, r in record["sites"].items() if r.get("accepted")]
        logger.debug("round %s (%s): %d of %d update(s) aggregated", round, self.method, len(kept), len(record["sites"]))
        return RoundResult(combined, record)

    def _baseline(self, updates, reports, decisions, sites: dict) -> dict | None:
        kept = [s for s in updates if decisions[s].accepted]
        for s, d in decisions.items():
            sites[s] = {"accepted": d.accepted, "gate": d.reason or "accepted", "norm": d.norm, "weight": 0.0, **dict(reports.get(s, {}))}
        if not kept:
            return None
        ups = [updates[s] for s in kept]
        if self.method == "mean":
            raw = {s: SiteReport.clamped(self.aam.max_cases, n_train=dict(reports.get(s, {})).get("n_train"))[0].n_train for s in kept}
            bounded = peer_bounded_counts(raw, self.aam.peer_cases_ratio)
            n = np.array([bounded[s] for s in kept])
            for s, w in zip(kept, n / n.sum()):
                sites[s]["weight"] = float(w)
            return aggregate_mean(ups, n)
        for s in kept:
            sites[s]["weight"] = None  # no per-site weight in a coordinate-wise rule
        if self.method == "median":
            return aggregate_median(ups)
        return aggregate_trimmed_mean(ups, beta=self.trimmed_beta)


__all__ = ["METHODS", "RoundResult", "ServerRound", "check_personal_keys"]
