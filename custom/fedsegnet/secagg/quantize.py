"""Values into the ring and the ring sum back to floats, with a scale shared by every site of a round.

A site's values (on the round's shared support) are clipped to ``[-clip, clip]``, divided by the
shared step ``clip / L`` and stochastically rounded (unbiased: ``floor(z + U[0, 1))``) to integers in
``[-L, L]``, stored in two's complement in ``Z_{2^ring_bits}``. The sum of ``n`` sites lies in
``[-n L, n L]`` and decodes without wrapping when ``n L <= 2^(ring_bits - 1) - 1``;
:class:`RingQuantizer` refuses settings that break it, naming the field. Bonawitz et al. (CCS 2017)
sum in ``Z_R`` with ``R`` large enough for the sum; here the ring is sized from the number of sites
and the value bits, so fewer ring bits travel (:func:`ring_bits_needed`).
"""

from __future__ import annotations

import math

import numpy as np

from fedsegnet.secagg.errors import SecAggError
from fedsegnet.secagg.masking import MAX_RING_BITS, check_ring_bits, check_ring_vector


def ring_bits_needed(value_bits: int, n_sites: int) -> int:
    """The fewest ring bits in which the sum of ``n_sites`` values of ``value_bits`` (signed) never wraps.

    Args:
        value_bits: bits of one site's signed integer (levels ``L = 2^(value_bits - 1) - 1``), >= 2.
        n_sites: most sites summed, >= 1.

    Returns:
        The smallest ``k`` with ``n_sites * L <= 2^(k - 1) - 1``.

    Raises:
        SecAggError: naming ``value_bits`` or ``n_sites`` when out of range.
    """
    if isinstance(value_bits, bool) or not isinstance(value_bits, int) or not 2 <= value_bits <= MAX_RING_BITS:
        raise SecAggError(f"value_bits={value_bits!r}: must be an integer in 2..{MAX_RING_BITS}")
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
        raise SecAggError(f"n_sites={n_sites!r}: must be an integer >= 1")
    levels = 2 ** (value_bits - 1) - 1
    return max(2, (n_sites * levels).bit_length() + 1)


class RingQuantizer:
    """Shared clipping, scale and stochastic rounding into ``Z_{2^ring_bits}``.

    Args:
        clip: the range ``r``: values are clipped to ``[-r, r]`` (> 0, finite); a 1-D array gives each
            value its own range (and step ``r_i / L``), as :class:`~fedsegnet.secagg.plan.RoundPlan`
            does with one range per block.
        n_sites: most sites whose inputs are summed (the round's site count), >= 1.
        ring_bits: bits of a ring element, 2..32. Defaults to 32.
        value_bits: bits of one site's signed integer; ``L = 2^(value_bits - 1) - 1`` levels each side.
            Defaults to None (the most that fit: ``L = (2^(ring_bits - 1) - 1) // n_sites``).
        stochastic: round stochastically (unbiased, ``floor(z + U[0, 1))``) or to the nearest level
            (False: an error of at most half a step, what error feedback then carries; at a few bits
            per value stochastic rounding's noise is far larger: at 4 bits and a step of 0.43 x the
            block's RMS, about 30% of the values' norm against 15% for the nearest level). Defaults
            to True.

    Raises:
        SecAggError: naming the field: ``clip`` not a positive finite number, ``n_sites`` or
            ``ring_bits`` out of range, or ``ring_bits`` too small for ``n_sites`` sums of
            ``value_bits`` values (the sum could wrap; the message gives the bits needed).
    """

    def __init__(self, clip: float, n_sites: int, ring_bits: int = 32, value_bits: int | None = None, stochastic: bool = True):
        if isinstance(clip, np.ndarray):
            if clip.ndim != 1 or clip.size == 0 or not np.isfinite(clip).all() or not (clip > 0).all():
                raise SecAggError(f"clip: an array of ranges must be 1-D, non-empty, finite and > 0 (shape {clip.shape})")
            clip = clip.astype(np.float64)
        elif isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
            raise SecAggError(f"clip={clip!r}: must be a finite number > 0")
        else:
            clip = float(clip)
        if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
            raise SecAggError(f"n_sites={n_sites!r}: must be an integer >= 1")
        self.ring_bits = check_ring_bits(ring_bits)
        half = 2 ** (ring_bits - 1) - 1
        if value_bits is None:
            levels = half // n_sites
            if levels < 1:
                raise SecAggError(
                    f"ring_bits={ring_bits}: {n_sites} sites leave no level per site (need ring_bits >= "
                    f"{ring_bits_needed(2, n_sites)})"
                )
        else:
            needed = ring_bits_needed(value_bits, n_sites)
            if ring_bits < needed:
                raise SecAggError(
                    f"ring_bits={ring_bits}: the sum of {n_sites} sites of value_bits={value_bits} could wrap "
                    f"(needs ring_bits >= {needed})"
                )
            levels = 2 ** (value_bits - 1) - 1
        self.stochastic = bool(stochastic)
        self.clip = clip
        self.n_sites = n_sites
        self.value_bits = value_bits
        self.levels = int(levels)
        self.step = self.clip / self.levels

    def config(self) -> dict:
        """The settings (what the server sends every site of the round; a scalar ``clip`` only)."""
        if isinstance(self.clip, np.ndarray):
            raise SecAggError("config(): per-value ranges travel as a RoundPlan's per-block clips")
        return {"clip": self.clip, "n_sites": self.n_sites, "ring_bits": self.ring_bits, "value_bits": self.value_bits}

    def encode(self, values, generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One site's values as ring elements.

        Args:
            values: float array of shape ``(m,)`` (the values on the support); not modified.
            generator: the stochastic rounding's random source (the site's own, secret).

        Returns:
            ``(ring, carried)``: uint32 ring elements ``(m,)`` and the float64 values they stand for
            ``(m,)`` (clipped and rounded; what error feedback subtracts).

        Raises:
            SecAggError: ``values`` not 1-D or holding NaN/Inf.
        """
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 1:
            raise SecAggError(f"values: must be 1-D, got shape {v.shape}")
        if isinstance(self.clip, np.ndarray) and self.clip.shape != v.shape:
            raise SecAggError(f"values: {v.size} values but {self.clip.size} ranges")
        if not np.isfinite(v).all():
            raise SecAggError("values: hold NaN or Inf")
        z = np.clip(v, -self.clip, self.clip) / self.step
        z = np.floor(z + generator.random(z.shape)) if self.stochastic else np.rint(z)
        q = np.clip(z, -self.levels, self.levels).astype(np.int64)
        ring = (q % (1 << self.ring_bits)).astype(np.uint32)
        return ring, q.astype(np.float64) * self.step

    def decode_sum(self, ring_sum: np.ndarray, n_summed: int) -> np.ndarray:
        """The float sum of ``n_summed`` sites' inputs from their ring sum.

        Args:
            ring_sum: uint32 ``(m,)``, the unmasked sum mod ``2^ring_bits``.
            n_summed: how many sites' inputs it sums (1..n_sites).

        Returns:
            float64 ``(m,)``: the sum of the values the sites' ring elements stand for (divide by the
            weights' sum for a mean).

        Raises:
            SecAggError: ``n_summed`` above ``n_sites`` (the sum may have wrapped), or a bad ring vector.
        """
        if isinstance(n_summed, bool) or not isinstance(n_summed, int) or not 1 <= n_summed <= self.n_sites:
            raise SecAggError(f"n_summed={n_summed!r}: must be in 1..n_sites={self.n_sites} (beyond, the sum may wrap)")
        s = check_ring_vector(ring_sum, self.ring_bits, "ring_sum").astype(np.int64)
        s = np.where(s >= 1 << (self.ring_bits - 1), s - (1 << self.ring_bits), s)
        return s.astype(np.float64) * self.step
