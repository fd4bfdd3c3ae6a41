"""Error feedback under secure aggregation: what the shared support did not carry stays at the site.

The idea of :mod:`fedsegnet.compression.error_feedback` (Seide et al. 2014; Karimireddy et al. 2019)
for the ring: a site encodes ``u + r`` under the round's plan (:mod:`~fedsegnet.secagg.plan`) and keeps
``r' = u + r - carried``, where ``carried`` is zero off the support and, on it, the clipped and
rounded value its ring elements stand for. Over rounds ``sum(carried) + r_T = sum(u)``: the
coordinates outside the support, the clipping and the rounding error are delayed, not lost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from fedsegnet.secagg.errors import SecAggError
from fedsegnet.secagg.plan import RoundPlan
from fedsegnet.secagg.support import flatten, unflatten

logger = logging.getLogger(__name__)

STATE_VERSION = 1


class SecAggErrorFeedback:
    """One site's residual for secure aggregation.

    Args:
        name: who owns the residual, used in log messages (the site name). Defaults to ``"site"``.
    """

    def __init__(self, name: str = "site"):
        self.name = name
        self.residual: np.ndarray | None = None
        self.layout = None
        self.rounds = 0

    def encode(self, update: Mapping, plan: RoundPlan, generator: np.random.Generator) -> np.ndarray:
        """The ring input of ``update + residual`` under the round's ``plan``; keeps the new residual.

        Args:
            update: ``{name: float tensor or array}`` in the plan's layout; not modified.
            plan: the round's :class:`~fedsegnet.secagg.plan.RoundPlan` (support, ranges, levels).
            generator: the site's secret random source (passed to :meth:`RoundPlan.encode`).

        Returns:
            uint32 ring elements of shape ``(plan.length,)``, ready for masking.

        Raises:
            SecAggError: an update that does not fit the plan's layout, or with NaN/Inf.
        """
        own, layout = flatten(update)
        if layout != plan.layout:
            raise SecAggError(f"{self.name}: the update's names or shapes are not the plan's layout", plan.round)
        flat = own
        if self.residual is not None and self.layout == layout:
            flat = own + self.residual
        elif self.residual is not None:
            logger.warning("%s: residual does not match this update (other names or shapes); starting from zero", self.name)
        ring, carried = plan.encode(flat, generator, update=own)
        flat[plan.support] -= carried
        self.residual, self.layout = flat, layout
        self.rounds += 1
        return ring

    def residual_dict(self) -> dict[str, np.ndarray]:
        """The residual as ``{name: float64 array}`` (empty before the first round)."""
        return {} if self.residual is None else unflatten(self.residual, self.layout)

    def state_dict(self) -> dict:
        """``{"version", "rounds", "residual"}`` (the residual as ``{name: array}``)."""
        return {"version": STATE_VERSION, "rounds": self.rounds, "residual": self.residual_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            SecAggError: not a state of this version, or a residual that is not a dict of arrays.
        """
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise SecAggError(f"secagg error-feedback state ({self.name}): version {got!r}, expected {STATE_VERSION}")
        residual = state.get("residual")
        if not isinstance(residual, Mapping):
            raise SecAggError(f"secagg error-feedback state ({self.name}): field 'residual' must be a dict of arrays")
        if residual:
            self.residual, self.layout = flatten(residual)
        else:
            self.residual, self.layout = None, None
        self.rounds = int(state.get("rounds", 0))
