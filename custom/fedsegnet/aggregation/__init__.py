"""Aggregation of site updates (no FLARE imports): robust centres and the contribution gate.

- :mod:`.robust`: coordinate-wise median and trimmed mean (Yin et al., ICML 2018), weighted mean.
- :mod:`.gate`: the hard gate every update passes before aggregation (names, shapes, NaN/Inf, norm).
"""

from fedsegnet.aggregation.gate import GateDecision, gate_updates
from fedsegnet.aggregation.robust import (
    aggregate_mean,
    aggregate_median,
    aggregate_trimmed_mean,
)
from fedsegnet.compression import update_norm  # the norm the gate uses, here for callers of this package

__all__ = [
    "GateDecision", "gate_updates", "aggregate_mean", "aggregate_median", "aggregate_trimmed_mean", "update_norm",
]  # fmt: skip
