"""The Adaptive Aggregation Mechanism (AAM): per-site weights from data quality, performance and divergence.

Each round, for the sites whose updates pass the hard gate (:mod:`.gate`):

Signals (``x_med`` is the median of ``x`` over the round's accepted sites):

* **data quality** ``q_i``: the agreement of the site's own training labels with the received global
  model's predictions (foreground Dice on a few training crops, reported by the site), smoothed
  over rounds (exponential moving average, ``smoothing`` = weight of the newest value). Sites whose
  labels disagree with what the federation learned elsewhere (noisy, shifted or missing
  annotations) score low. Box and tag sites report the agreement of their weak labels instead
  (:func:`fedsegnet.training.evaluate.weak_label_agreement`), on another scale, so ``q_med`` is the
  median over the sites *of the same label kind* (a kind with one site is never penalised for
  quality). The label kind sets a prior trust ``kappa_i`` (voxel 1, partial 0.7, box 0.5, tag 0.3).
* **performance** ``p_i``: Dice of the site's local model (after its training) on its own
  validation split, smoothed like ``q_i``; its gain over the received global model is recorded. A site
  whose own model cannot fit its own validation labels holds labels that contradict each other.
* **divergence**, measured by the server on the update itself (:mod:`.divergence`): the cosine
  distance ``c_i`` of the update to a robust centre of the *other* sites' updates (its similarity
  ``g_i = 1 - c_i`` enters the score) and the norm ratio ``r_i = ||u_i|| / rho`` to the round's
  reference norm ``rho`` (:func:`~fedsegnet.aggregation.gate.reference_norm`, clamped around the
  history of earlier rounds' reference norms, which is kept in the state). The similarity enters
  as ``g_i / g_med`` (relative to the round's median), smoothed like ``q_i`` over the rounds where
  it is informative: 3 or more sites and a median similarity of at least ``min_similarity``. Late
  in training, sparse updates of different sites barely overlap (similarities near 0 for
  everyone); the value from the earlier rounds is kept.

Score and weight (``relu(x) = max(x, 0)``; only a site that falls clearly behind the others loses weight)::

    s_i = -[ a * relu(1 - q_i / q_med - m) + b * relu(1 - p_i / p_med - m)
             + d * relu(1 - EMA(g_i / g_med) - m_c) + e * relu(log r_i - log m_r) ]
    w_i ∝ kappa_i * n_i * exp(s_i / T)

with ``n_i`` the site's training-case count (clamped to ``[1, max_cases]`` and to
``peer_cases_ratio`` times the lower median of the other sites' counts: :mod:`.reports`) and ``T``
the temperature. The prior shares ``kappa_i * n_i`` (what a site reports) are bounded to at most
``cap`` first, the weights after the scores to at least ``floor`` (:mod:`.weights`): the cap limits
what reporting buys, never how far a measured penalty can take a weight down. The penalties are one-sided and start beyond a tolerance
(``m`` and ``m_c`` as shares of the median, so that intrinsically harder data, where every Dice is
lower, and sparse updates, whose similarities are all low, are judged on their own scale; ``m_r``
as a norm ratio, applied upward only: a larger update never gains weight, and a smaller one is not
penalised, so that a site shrinking its own update cannot push an honest one down): sites within the ordinary
spread keep their FedAvg weights, so round-to-round noise in the signals does not concentrate the
weight on a lucky site, and sites that are merely *different* (another scanner, smaller
structures: the ``noniid`` case) are not treated as bad unless they fall far behind. With all
coefficients 0 the weights are FedAvg's (sample counts). A missing signal counts as the median
(neutral). Before the weights, an update above ``clip_norm`` times the reference norm ``rho`` is
scaled to ``rho`` (its direction is used, its size is not), so a scaled (x10) update that slips
under the gate adds no more than an ordinary one, also with two sites (where the median norm is the mean of the two and a scaled
update would set it) and in a round where one update arrives alone (``rho`` is then held near the
history).

What a dishonest site can fake, and what limits it: ``n_i``, the label kind, ``q_i`` and ``p_i``
are self-reported and clamped (:mod:`.reports`); quality and performance can only lower a weight (claiming more than the others gains nothing),
and every weight is capped at ``cap``: overclaiming cases buys at most ``peer_cases_ratio`` times
an ordinary site's prior. Quality and performance are ignored while their median is below ``min_signal`` (an
untrained global model makes them noise). The divergence terms are
measured by the server on the update itself and cannot be faked; an update that is far from the
others in direction is down-weighted, one larger than the others is scaled to the reference norm
or dropped by the gate, whatever the site reports. An attacker who sends updates close to the robust
centre can only move the model a little per round, which is the limit any robust rule has.

Everything here is deterministic (no randomness), takes plain mappings or
:class:`~fedsegnet.aggregation.compact.CompactUpdate`, and never modifies its inputs. :class:`AdaptiveAggregation` keeps the signal history and exposes
``state_dict()/load_state_dict()`` so that it survives a server restart with the global model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from fedsegnet.aggregation.divergence import divergence_signals
from fedsegnet.aggregation.gate import GateDecision, gate_updates, reference_norm
from fedsegnet.aggregation.reports import LABEL_KIND_TRUST, SiteReport, peer_bounded_counts
from fedsegnet.aggregation.robust import check_centre, weighted_sum
from fedsegnet.aggregation.weights import bounded_weights

logger = logging.getLogger(__name__)

STATE_VERSION = 2
"""Version 2 adds the history of reference norms; a version-1 state loads with an empty one."""


@dataclass
class _SiteState:
    quality: float | None = None  # smoothed agreement
    performance: float | None = None  # smoothed local validation Dice
    rounds: int = 0  # rounds with an accepted update
    last_weight: float | None = None
    direction: float | None = None  # smoothed similarity / the round's median similarity (informative rounds only)


@dataclass
class AggregationResult:
    """One round of aggregation.

    Attributes:
        update: the combined update ``{name: float32 array}``, or None when no update was accepted.
        sites: per site: gate decision, signals, score, prior, weight, clip factor, notes.
        round: the round number given to :meth:`AdaptiveAggregation.aggregate`.
    """

    update: dict[str, np.ndarray] | None
    sites: dict[str, dict]
    round: int | None = None


class AdaptiveAggregation:
    """AAM weights and the weighted combination of one round's updates (see the module docstring).

    Args:
        temperature: softmax temperature ``T`` of the combined score (smaller: sharper). Defaults to 0.2.
        quality_coef: ``a``, weight of the smoothed label agreement's shortfall. Defaults to 1.0.
        performance_coef: ``b``, weight of the local validation Dice's shortfall. Defaults to 1.0.
        divergence_coef: ``d``, weight of the cosine distance's excess. Defaults to 1.0.
        norm_coef: ``e``, weight of the norm ratio's excess (in log). Defaults to 1.0.
        margin: ``m``, relative shortfall of quality or performance below the median that is
            tolerated (0.3: 30% below the median). Defaults to 0.3.
        cos_margin: ``m_c``, relative shortfall of the cosine similarity to the centre below the
            median similarity that is tolerated (0.7: a site may point 70% less along the common
            direction than the median site; sparse updates of different sites overlap little, so
            honest similarities vary a lot). Defaults to 0.7.
        min_signal: quality and performance count only once their median reaches this Dice (before,
            the global model predicts too little for them to mean anything). Defaults to 0.1.
        norm_margin: ``m_r``, norm ratio above the reference norm that is tolerated (smaller
            updates are never penalised). Defaults to 1.5.
        floor: lowest weight of an accepted site. Defaults to 0.02.
        cap: highest prior share (case count x label-kind trust) of any site, applied before the
            scores. Defaults to 0.6.
        smoothing: weight of the newest agreement in the moving average, in (0, 1]. Defaults to 0.5.
        clip_norm: an update above this many times the reference norm is scaled to the reference
            norm before it is weighed and added (0 = off; the norm term then down-weights it).
            Defaults to 1.5.
        centre: robust centre of the divergence signal, ``"trimmed_mean"`` or ``"median"``.
            Defaults to ``"trimmed_mean"``.
        max_norm_ratio: the gate drops updates above this many times the reference norm. Defaults to 10.0.
        max_cases: clamp of the self-reported case count. Defaults to 100_000.
        peer_cases_ratio: a site's case count counts at most this many times the lower median of
            the other accepted sites' counts (0 = no peer bound; see :func:`peer_bounded_counts`).
            Defaults to 2.0.
        norm_window: rounds of reference norms whose median anchors this round's reference norm.
            Defaults to 5.
        norm_growth: the reference norm stays within this factor of that median (a lone update,
            or sites that grow their norms together, move it by at most this much). Defaults to 2.0.
        leave_one_out: compare each update's direction with the centre of the *other* updates
            (else with a centre that includes it). Defaults to True.
        min_similarity: the direction signal is measured only in rounds whose median similarity
            reaches this (while honest updates still agree; later, sparse updates of different
            sites barely overlap and a site's similarity says nothing); a site's smoothed relative
            similarity from those rounds is kept for the others. Defaults to 0.2.
        kind_trust: label kind -> prior trust. Defaults to None (:data:`LABEL_KIND_TRUST`).
        history: rounds of per-site weights kept in the state. Defaults to 100.
        sample_size: coordinates used for the divergence signal (see :func:`divergence_signals`;
            0 = all). Defaults to 250_000.

    Raises:
        ValueError: an argument out of range (the message names it).
    """

    def __init__(
        self,
        temperature: float = 0.2,
        quality_coef: float = 1.0,
        performance_coef: float = 1.0,
        divergence_coef: float = 1.0,
        norm_coef: float = 1.0,
        margin: float = 0.3,
        cos_margin: float = 0.7,
        min_signal: float = 0.1,
        norm_margin: float = 1.5,
        floor: float = 0.02,
        cap: float = 0.6,
        smoothing: float = 0.5,
        clip_norm: float = 1.5,
        centre: str = "trimmed_mean",
        max_norm_ratio: float = 10.0,
        max_cases: float = 100_000,
        kind_trust: Mapping[str, float] | None = None,
        history: int = 100,
        sample_size: int = 250_000,
        peer_cases_ratio: float = 2.0,
        norm_window: int = 5,
        norm_growth: float = 2.0,
        leave_one_out: bool = True,
        min_similarity: float = 0.2,
    ):
        checks = {
            "temperature": temperature > 0,
            "margin": margin >= 0,
            "cos_margin": cos_margin >= 0,
            "min_signal": 0 <= min_signal < 1,
            "norm_margin": norm_margin >= 1,
            "quality_coef": quality_coef >= 0,
            "performance_coef": performance_coef >= 0,
            "divergence_coef": divergence_coef >= 0,
            "norm_coef": norm_coef >= 0,
            "floor": 0 <= floor < 1,
            "cap": 0 < cap <= 1 and cap >= floor,
            "smoothing": 0 < smoothing <= 1,
            "clip_norm": clip_norm == 0 or clip_norm >= 1,
            "max_norm_ratio": max_norm_ratio > 1,
            "max_cases": max_cases >= 1,
            "history": history >= 0,
            "sample_size": sample_size >= 0,
            "peer_cases_ratio": peer_cases_ratio == 0 or peer_cases_ratio >= 1,
            "norm_window": isinstance(norm_window, int) and not isinstance(norm_window, bool) and norm_window >= 1,
            "norm_growth": norm_growth > 1,
            "min_similarity": 0 <= min_similarity < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}={locals()[name]!r}: out of range")
        check_centre(centre, 0.0)
        self.temperature = float(temperature)
        self.quality_coef = float(quality_coef)
        self.performance_coef = float(performance_coef)
        self.divergence_coef = float(divergence_coef)
        self.norm_coef = float(norm_coef)
        self.margin = float(margin)
        self.cos_margin = float(cos_margin)
        self.min_signal = float(min_signal)
        self.norm_margin = float(norm_margin)
        self.floor = float(floor)
        self.cap = float(cap)
        self.smoothing = float(smoothing)
        self.clip_norm = float(clip_norm)
        self.centre = centre
        self.max_norm_ratio = float(max_norm_ratio)
        self.max_cases = float(max_cases)
        self.kind_trust = dict(LABEL_KIND_TRUST if kind_trust is None else kind_trust)
        self.history = int(history)
        self.sample_size = int(sample_size)
        self.peer_cases_ratio = float(peer_cases_ratio)
        self.norm_window = int(norm_window)
        self.norm_growth = float(norm_growth)
        self.leave_one_out = bool(leave_one_out)
        self.min_similarity = float(min_similarity)
        self._sites: dict[str, _SiteState] = {}
        self._history: list[dict] = []
        self._norms: list[float] = []  # reference norms of earlier rounds, oldest first
        self.rounds = 0

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The signal history: plain Python values (JSON- and ``torch.save``-safe)."""
        return {
            "version": STATE_VERSION,
            "rounds": self.rounds,
            "sites": {s: asdict(v) for s, v in sorted(self._sites.items())},
            "history": [dict(h) for h in self._history],
            "norms": list(self._norms),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: the state is not a FedSegNet AAM state of a known version (field named).
        """
        if not isinstance(state, Mapping) or state.get("version") not in (1, STATE_VERSION):
            got = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"AAM state: field 'version' is {got!r}, expected 1 or {STATE_VERSION}")
        try:
            sites = {str(s): _SiteState(**v) for s, v in dict(state["sites"]).items()}
            history = [dict(h) for h in state.get("history", [])]
            rounds = int(state["rounds"])
            norms = [float(n) for n in state.get("norms", [])]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"AAM state: malformed ({type(e).__name__}: {e})") from None
        if not all(math.isfinite(n) and n >= 0 for n in norms):
            raise ValueError("AAM state: field 'norms' holds a negative or non-finite value")
        self._sites, self._history, self.rounds, self._norms = sites, history, rounds, norms

    @property
    def norm_history(self) -> list[float]:
        """Reference norms of the rounds so far, oldest first (a copy)."""
        return list(self._norms)

    def gate(
        self, updates: Mapping[str, Mapping], reference: Mapping, update_state: bool = True, checked=()
    ) -> tuple[dict[str, GateDecision], float | None]:
        """The hard gate with this mechanism's norm history, and the round's reference norm.

        Args:
            updates: ``{site: {name: array}}``; not modified.
            reference: ``{name: array or shape}`` the updates must match.
            update_state: append the reference norm of the accepted updates to the history.
                Defaults to True.
            checked: sites whose updates passed :func:`~fedsegnet.aggregation.gate.check_update`
                already (at accept): only the norm rule is applied to them. Defaults to ().

        Returns:
            ``({site: GateDecision}, rho)``: ``rho`` is the reference norm of the accepted updates
            (:func:`~fedsegnet.aggregation.gate.reference_norm`), None when none was accepted and
            there is no history.
        """
        decisions = gate_updates(
            updates, reference, max_norm_ratio=self.max_norm_ratio, history=self._norms, growth=self.norm_growth,
            window=self.norm_window, checked=checked,
        )  # fmt: skip
        norms = [d.norm for d in decisions.values() if d.accepted]
        rho = reference_norm(norms, self._norms, self.norm_growth, self.norm_window)
        if update_state and norms and rho is not None and rho > 0:
            self._norms = (self._norms + [rho])[-max(self.norm_window, self.history, 1) :]
        return decisions, rho

    @property
    def site_quality(self) -> dict[str, float | None]:
        """Smoothed label agreement per site seen so far."""
        return {s: v.quality for s, v in self._sites.items()}

    # ------------------------------------------------------------------------------ weights
    def _prior(self, report: SiteReport) -> float:
        trust = self.kind_trust.get(report.label_kind, min(self.kind_trust.values()) if self.kind_trust else 1.0)
        return trust * report.n_train

    def weights(
        self, reports: Mapping[str, SiteReport], divergence: Mapping[str, Mapping[str, float]], update_state: bool = True
    ) -> dict[str, dict]:
        """Per-site score and weight of the accepted sites.

        Args:
            reports: ``{site: SiteReport}`` (already clamped).
            divergence: ``{site: {"cos_dist", "norm_ratio", ...}}`` from :func:`divergence_signals`.
            update_state: fold this round's agreement into the moving average. Defaults to True.

        Returns:
            ``{site: {"quality", "performance", "gain", "cos_dist", "norm_ratio", "score", "prior",
            "weight"}}`` (weights sum to 1).
        """
        sites = list(reports)
        if not sites:
            return {}
        def smooth(old, new):
            if new is None:
                return old
            return new if old is None else (1 - self.smoothing) * old + self.smoothing * new

        quality, perf = {}, {}
        for s in sites:
            state = self._sites.get(s, _SiteState())
            quality[s] = smooth(state.quality, reports[s].agreement)
            perf[s] = smooth(state.performance, reports[s].val_dice_local)
            if update_state:
                self._sites[s] = _SiteState(quality[s], perf[s], state.rounds + 1, state.last_weight, state.direction)
        cos = {s: divergence.get(s, {}).get("cos_dist") for s in sites}

        def shortfall(values, margin):  # relative shortfall below the round's median, beyond a tolerance
            known = [v for v in values.values() if v is not None]
            med = float(np.median(known)) if known else 0.0
            if med < self.min_signal:  # the global model still predicts little: the Dice signals are noise
                return {s: 0.0 for s in values}
            return {s: 0.0 if v is None else max(0.0, 1.0 - v / med - margin) for s, v in values.items()}

        pq = {}
        for kind in {reports[s].label_kind for s in sites}:  # quality scales differ between label kinds
            pq.update(shortfall({s: quality[s] for s in sites if reports[s].label_kind == kind}, self.margin))
        pp = shortfall(perf, self.margin)
        # direction: the update's cosine similarity to the (others') centre relative to the round's median
        # similarity, smoothed over the rounds where it means something: while honest updates agree (median
        # similarity >= min_similarity); later (sparse updates of different sites barely overlap) it is kept
        sim = {s: None if v is None else 1.0 - v for s, v in cos.items()}
        known_sim = [v for v in sim.values() if v is not None]
        med_sim = float(np.median(known_sim)) if known_sim else 0.0
        informative = len(known_sim) >= 3 and med_sim >= self.min_similarity
        direction = {}
        for s in sites:
            old = self._sites[s].direction if s in self._sites else None
            new = None if not informative or sim[s] is None else sim[s] / med_sim
            direction[s] = smooth(old, new)
            if update_state and s in self._sites:
                self._sites[s].direction = direction[s]
        pc = {s: 0.0 if v is None else max(0.0, 1.0 - v - self.cos_margin) for s, v in direction.items()}
        scores = {}
        for s in sites:
            ratio = divergence.get(s, {}).get("norm_ratio") or 1.0
            pn = max(0.0, math.log(max(ratio, 1e-12)) - math.log(self.norm_margin))  # upward only
            scores[s] = -(
                self.quality_coef * pq[s] + self.performance_coef * pp[s] + self.divergence_coef * pc[s] + self.norm_coef * pn
            )
        top = max(scores.values())
        priors = {s: self._prior(reports[s]) for s in sites}
        prior_total = sum(priors.values())
        # the cap bounds the self-reported part (the prior shares); the measured penalties then act in
        # full: with two sites, a capped honest site would otherwise leave 1 - cap to a penalised one
        shares = bounded_weights([priors[s] for s in sites], 0.0, self.cap)
        raw = [shares[i] * math.exp((scores[s] - top) / self.temperature) for i, s in enumerate(sites)]
        w = bounded_weights(raw, self.floor, 1.0)
        out = {}
        for i, s in enumerate(sites):
            g, p = reports[s].val_dice_global, reports[s].val_dice_local
            out[s] = {
                "quality": quality[s],
                "performance": p,
                "gain": None if g is None or p is None else p - g,
                "cos_dist": cos[s],
                "norm_ratio": divergence.get(s, {}).get("norm_ratio"),
                "score": scores[s],
                "prior": priors[s] / prior_total if prior_total > 0 else 1.0 / len(sites),
                "weight": float(w[i]),
            }
            if update_state:
                self._sites[s].last_weight = float(w[i])
        return out

    # ------------------------------------------------------------------------------ aggregate
    def aggregate(
        self,
        updates: Mapping[str, Mapping],
        reports: Mapping[str, Mapping | SiteReport],
        reference: Mapping,
        round: int | None = None,
    ) -> AggregationResult:
        """Gate, weigh and combine one round's updates.

        Args:
            updates: ``{site: {name: array}}`` (plain dicts or :class:`CompactUpdate`); not modified.
            reports: ``{site: SiteReport or dict of its fields}``, raw values are clamped here.
            reference: ``{name: array or shape}`` of the global model (names and shapes to expect).
            round: round number for the record. Defaults to None.

        Returns:
            :class:`AggregationResult`; ``update`` is None when the gate accepted no update.
        """
        decisions, rho = self.gate(updates, reference)
        return self.combine(updates, reports, decisions, rho, round=round)

    def combine(
        self,
        updates: Mapping[str, Mapping],
        reports: Mapping[str, Mapping | SiteReport],
        decisions: Mapping[str, GateDecision],
        rho: float | None,
        round: int | None = None,
    ) -> AggregationResult:
        """Weigh and combine one round's updates once :meth:`gate` has decided on them.

        Args:
            updates: ``{site: {name: array}}``; not modified.
            reports: ``{site: SiteReport or dict of its fields}``, raw values are clamped here.
            decisions: :meth:`gate`'s ``{site: GateDecision}`` for the same sites.
            rho: :meth:`gate`'s reference norm.
            round: round number for the record. Defaults to None.

        Returns:
            :class:`AggregationResult`; ``update`` is None when the gate accepted no update.
        """
        records: dict[str, dict] = {}
        clamped: dict[str, SiteReport] = {}
        for site in updates:
            raw = reports.get(site, {})
            raw = asdict(raw) if isinstance(raw, SiteReport) else dict(raw)
            clamped[site], notes = SiteReport.clamped(self.max_cases, **raw)
            d = decisions[site]
            records[site] = {
                "accepted": d.accepted,
                "gate": d.reason or "accepted",
                "n_train": clamped[site].n_train,
                "label_kind": clamped[site].label_kind,
                "agreement": clamped[site].agreement,
                "val_dice_global": clamped[site].val_dice_global,
                "val_dice_local": clamped[site].val_dice_local,
                "notes": notes,
                "weight": 0.0,
            }
        accepted = [s for s in updates if decisions[s].accepted]
        if not accepted:
            self.rounds += 1
            return AggregationResult(None, records, round)
        bounded = peer_bounded_counts({s: clamped[s].n_train for s in accepted}, self.peer_cases_ratio)
        for s in accepted:
            if bounded[s] < clamped[s].n_train:
                records[s]["notes"].append(f"n_train={clamped[s].n_train:g} -> {bounded[s]:g} (peer_cases_ratio x the others' median)")
                clamped[s] = SiteReport(**{**asdict(clamped[s]), "n_train": bounded[s]})
                records[s]["n_train"] = bounded[s]
        div = divergence_signals(
            {s: updates[s] for s in accepted}, centre=self.centre, sample_size=self.sample_size, reference=rho,
            leave_one_out=self.leave_one_out,
        )
        clips = {}
        for s in accepted:  # an update above clip_norm x rho is scaled to rho: its direction counts, its size does not
            norm = div[s]["norm"]
            clips[s] = rho / norm if self.clip_norm and rho and norm > self.clip_norm * rho > 0 else 1.0
        # the norm term judges what is aggregated (a scaled-down update is ordinary); it bites only with clipping off
        scaled = {s: {**div[s], "norm_ratio": div[s]["norm_ratio"] * clips[s]} for s in accepted}
        weights = self.weights({s: clamped[s] for s in accepted}, scaled)
        factors = []
        for s in accepted:
            records[s].update(weights[s], norm=div[s]["norm"], clip=clips[s], reference_norm=rho, norm_ratio=div[s]["norm_ratio"])
            factors.append(weights[s]["weight"] * clips[s])
        combined = weighted_sum([updates[s] for s in accepted], factors)
        self.rounds += 1
        if self.history:
            self._history.append({"round": round, "weights": {s: records[s]["weight"] for s in records}})
            self._history = self._history[-self.history :]
        return AggregationResult(combined, records, round)

