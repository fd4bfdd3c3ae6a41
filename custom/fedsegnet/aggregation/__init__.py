"""Aggregation of site updates (no FLARE imports): AAM weights, robust centres and the contribution gate.

- :mod:`.aam`: the Adaptive Aggregation Mechanism (signals to weights with floor/cap/temperature,
  weighted combination, state that survives restarts).
- :mod:`.reports`: what a site reports (clamped), label-kind trust, peer-bounded case counts.
- :mod:`.divergence`: AAM's divergence signal (direction against a robust centre of the others, norm ratio).
- :mod:`.weights`: weights normalised within a floor and a cap.
- :mod:`.robust`: coordinate-wise median and trimmed mean (Yin et al., ICML 2018), weighted sum and mean.
- :mod:`.gate`: the hard gate every update passes before aggregation (names, shapes, NaN/Inf, norm),
  and the reference norm a round's updates are measured against.
- :mod:`.compact`: updates kept sparse as they arrived, and the one interface every update is read through.
- :mod:`.server_round`: one server round (shared keys, gate, method, combination, record) that the
  FLARE aggregator and the in-process federation both run; :data:`METHODS`.
"""

from fedsegnet.aggregation.aam import AdaptiveAggregation, AggregationResult
from fedsegnet.aggregation.compact import CompactUpdate
from fedsegnet.aggregation.divergence import divergence_signals
from fedsegnet.aggregation.gate import GateDecision, check_update, gate_updates, reference_norm, shared_reference
from fedsegnet.aggregation.reports import LABEL_KIND_TRUST, SiteReport, peer_bounded_counts, reported_weights, sample_weights
from fedsegnet.aggregation.robust import (
    aggregate_mean,
    aggregate_median,
    aggregate_trimmed_mean,
    weighted_sum,
)
from fedsegnet.aggregation.server_round import METHODS, RoundResult, ServerRound, check_personal_keys
from fedsegnet.aggregation.weights import bounded_weights
from fedsegnet.compression import update_norm  # the norm the gate uses, here for callers of this package

__all__ = [
    "LABEL_KIND_TRUST", "METHODS", "AdaptiveAggregation", "AggregationResult", "CompactUpdate", "GateDecision",
    "RoundResult", "ServerRound", "SiteReport", "aggregate_mean", "check_personal_keys", "check_update", "aggregate_median", "aggregate_trimmed_mean", "bounded_weights",
    "divergence_signals", "gate_updates", "peer_bounded_counts", "reference_norm", "reported_weights", "sample_weights",
    "shared_reference", "update_norm",
    "weighted_sum",
]  # fmt: skip
