"""Compression under secure aggregation: the round's plan of shared blocks, per-block ranges, and the
block scores from which the server plans the next round.

Pairwise masks cancel only when every site sends the same coordinates, and a site's own top-k
positions would show the server where its update is largest. So every site of a round sends values
on one support the server chose from what it may know, and that is the plan of this module:

- **Blocks.** Each tensor of the model (sorted name order, :func:`~fedsegnet.secagg.support.flatten`)
  is cut into blocks of ``block`` consecutive values (the last block of a tensor is shorter;
  ``block=0``: one block per tensor), as the plain codec's per-block scales
  (:mod:`fedsegnet.compression`) are.
- **The support** is a set of whole blocks, about ``ratio`` of each tensor's values, and every
  tensor below ``dense_below`` values whole (as the plain codec sends those dense).
- **Values** are the site's weighted update plus its error-feedback residual on the support, clipped
  to the block's range ``clip_b`` and rounded to the nearest of ``L = 2^(value_bits - 1) - 1`` levels
  each side (:class:`~fedsegnet.secagg.quantize.RingQuantizer` with one range per value).
- **Block scores** follow the values in the same ring vector: for every block of the model, the
  ``log2`` of the root mean square of what the site expects to send next round (what this round
  leaves in its residual plus another update like this one), rounded to at least ``SCORE_LEVELS``
  levels around a public centre (``SCORE_OCTAVES`` octaves each side), in as many ring elements
  (digits in base ``2L + 1``) as that takes. Masked and summed like the values, they tell the server only
  the *mean over the round's sites* of each block's log-RMS: where the federation as a whole has
  most left to send, including what error feedback holds back. A block off the support keeps
  growing in every site's residual until its score brings it in; nothing starves.
- **The next plan** (:func:`next_plan`): the blocks of highest mean score fill ``1 - random_share``
  of the budget, blocks drawn from the rest with a public seed (ChaCha20, as the masks) the rest;
  each block's range is ``CLIP_FACTOR`` times its geometric-mean RMS (for Gaussian-like values
  about the largest of a 256-value block, the plain codec's per-block scale). Round 0, or a round
  without the previous round's scores (a restarted server), draws every block at random, with
  ``first_value_bits`` and the range ``first_clip`` for all blocks.

Why not the previous aggregate's top-k (this module's first design): the
aggregate is zero off the previous support, so its top-k only re-picks last round's coordinates,
and the rest of the model moves only when a random draw hits it. The block scores are a sum too
(the server learns nothing about one site that it does not learn from the aggregate's kind of
information), they cost one ring element per block (``numel / block``: 0.4% of the values at
``block=256``), and they see the residuals.

Nothing here knows FLARE; the workflow sends :meth:`RoundPlan.to_dict` with the layout, and each
site rebuilds the plan with :meth:`RoundPlan.from_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedsegnet.secagg.errors import SecAggError
from fedsegnet.secagg.masking import MAX_RING_BITS, expand
from fedsegnet.secagg.quantize import RingQuantizer, ring_bits_needed
from fedsegnet.secagg.support import Layout, support_seed

SCORE_OCTAVES = 8.0
"""The block scores cover ``log2`` RMS from ``centre - 8`` to ``centre + 8`` (a factor of 65,536 each way)."""
SCORE_LEVELS = 64
"""At least this many score levels each side (steps of 1/8 octave or finer): at 4-bit values (7 levels)
a score takes two ring elements (112 levels); at 8 bits and more one."""
CLIP_FACTOR = 3.0
"""A block's range is this many times the geometric mean over the sites of its RMS."""
FIRST_CLIP = 1.0
"""The range of every block in a round without scores (round 0): the update's values are below it."""
FIRST_VALUE_BITS = 16
"""Value bits of a round without scores: with one wide range for every block, 4 bits would round most
values to 0; 16 bits at range 1.0 give steps of 3e-5."""
FIRST_CENTRE = -12.0
"""The score centre of a round without scores: ``log2`` RMS of about 2.4e-4 (a weighted update)."""
RANDOM_SHARE = 0.1
"""Share of the support's values drawn at random (from the blocks the scores did not choose)."""


def model_blocks(layout: Layout, block: int) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, sizes)`` (int64) of the blocks of ``layout``'s flat vector.

    Each tensor is cut into runs of ``block`` values, its last run shorter; ``block=0`` makes each
    tensor one block. Blocks never straddle two tensors.

    Raises:
        SecAggError: ``block`` not an integer >= 0, or an empty layout.
    """
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 0:
        raise SecAggError(f"block={block!r}: must be an integer >= 0 (0 = one block per tensor)")
    starts, sizes, offset = [], [], 0
    for _, shape in layout:
        n = int(math.prod(shape))
        step = n if block == 0 else int(block)
        for s in range(0, n, max(step, 1)):
            starts.append(offset + s)
            sizes.append(min(step, n - s))
        offset += n
    if not starts:
        raise SecAggError("layout: no values to aggregate")
    return np.asarray(starts, dtype=np.int64), np.asarray(sizes, dtype=np.int64)


def block_log_rms(flat: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``log2`` of each block's root mean square (``-inf`` where a block is all zeros)."""
    energy = np.add.reduceat(np.asarray(flat, dtype=np.float64) ** 2, starts) / sizes
    with np.errstate(divide="ignore"):
        return 0.5 * np.log2(energy)


class RoundPlan:
    """What every site of one round encodes: the blocks of the support, their ranges and the value levels.

    Args:
        round: the round number.
        layout: the model's ``((name, shape), ...)`` in sorted name order.
        block: values per block (0 = one block per tensor).
        blocks: ids of the support's blocks (sorted, unique, below the number of blocks).
        clips: one range per support block (finite, > 0).
        value_bits: bits of one site's signed value (and score), 2..31; ``L = 2^(value_bits-1) - 1``.
        n_sites: most sites summed (the round's sites); with ``value_bits`` it sets the ring's bits
            (:func:`~fedsegnet.secagg.quantize.ring_bits_needed`).
        score_centre: the centre of the block scores' ``log2`` RMS scale. Defaults to ``FIRST_CENTRE``.

    Raises:
        SecAggError: naming the field: blocks out of range or unsorted, clips of the wrong count or
            not positive, value bits or sites out of range, a ring that would need more than 32 bits.
    """

    def __init__(
        self,
        round: int,
        layout: Layout,
        block: int,
        blocks: Sequence[int],
        clips: Sequence[float],
        value_bits: int,
        n_sites: int,
        score_centre: float = FIRST_CENTRE,
    ):
        self.round = round
        self.layout = tuple(layout)
        self.block = int(block) if not isinstance(block, bool) and isinstance(block, (int, np.integer)) else block
        self.starts, self.sizes = model_blocks(self.layout, self.block)
        self.numel = int(self.starts[-1] + self.sizes[-1])
        self.n_blocks = int(self.starts.size)
        ids = np.asarray(blocks)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise SecAggError("plan: field 'blocks' must be a non-empty list of block ids", round)
        if ids[0] < 0 or ids[-1] >= self.n_blocks or (ids.size > 1 and not (np.diff(ids) > 0).all()):
            raise SecAggError(f"plan: field 'blocks' must be sorted, unique and in [0, {self.n_blocks})", round)
        self.blocks = ids.astype(np.int64)
        c = np.asarray(clips, dtype=np.float64)
        if c.shape != self.blocks.shape or not np.isfinite(c).all() or not (c > 0).all():
            raise SecAggError(f"plan: field 'clips' must hold {self.blocks.size} finite ranges > 0", round)
        self.clips = c
        if isinstance(value_bits, bool) or not isinstance(value_bits, int) or not 2 <= value_bits < MAX_RING_BITS:
            raise SecAggError(f"plan: field 'value_bits'={value_bits!r} must be an integer in 2..{MAX_RING_BITS - 1}", round)
        if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
            raise SecAggError(f"plan: field 'n_sites'={n_sites!r} must be an integer >= 1", round)
        self.value_bits, self.n_sites = value_bits, n_sites
        self.ring_bits = ring_bits_needed(value_bits, n_sites)
        if self.ring_bits > MAX_RING_BITS:
            raise SecAggError(f"plan: value_bits={value_bits} at {n_sites} sites needs a {self.ring_bits}-bit ring (at most {MAX_RING_BITS})", round)
        if isinstance(score_centre, bool) or not isinstance(score_centre, (int, float)) or not math.isfinite(score_centre):
            raise SecAggError(f"plan: field 'score_centre'={score_centre!r} must be a finite number", round)
        self.score_centre = float(score_centre)
        self.support = np.concatenate([np.arange(self.starts[b], self.starts[b] + self.sizes[b]) for b in self.blocks])
        self.quantizer = RingQuantizer(np.repeat(self.clips, self.sizes[self.blocks]), n_sites, self.ring_bits, value_bits, stochastic=False)
        self.levels = self.quantizer.levels
        # a score spreads over as many ring elements ("digits" in base 2L + 1, each in [-L, L] so that
        # n sites' digits sum without wrapping) as give it SCORE_LEVELS levels each side
        self.score_digits = 1
        while ((2 * self.levels + 1) ** self.score_digits - 1) // 2 < SCORE_LEVELS:
            self.score_digits += 1
        self.score_levels = ((2 * self.levels + 1) ** self.score_digits - 1) // 2
        self.score_step = SCORE_OCTAVES / self.score_levels

    @property
    def length(self) -> int:
        """Ring elements of one site's input: the support's values, then the digits of one score per block."""
        return int(self.support.size + self.n_blocks * self.score_digits)

    def to_dict(self) -> dict:
        """The plan as JSON-able fields (the layout travels beside it)."""
        return {
            "round": self.round, "block": self.block, "blocks": self.blocks.tolist(), "clips": self.clips.tolist(),
            "value_bits": self.value_bits, "n_sites": self.n_sites, "score_centre": self.score_centre,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping, layout: Layout) -> RoundPlan:
        """The plan of :meth:`to_dict` for ``layout``.

        Raises:
            SecAggError: not a mapping, or a field missing or bad (naming it).
        """
        if not isinstance(data, Mapping):
            raise SecAggError(f"plan: must be a mapping, got {type(data).__name__}")
        missing = [k for k in ("round", "block", "blocks", "clips", "value_bits", "n_sites", "score_centre") if k not in data]
        if missing:
            raise SecAggError(f"plan: missing field(s) {', '.join(missing)}", data.get("round"))
        return cls(data["round"], layout, data["block"], data["blocks"], data["clips"], data["value_bits"],
                   data["n_sites"], data["score_centre"])  # fmt: skip

    def encode(self, flat: np.ndarray, generator: np.random.Generator, update: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One site's ring input from its flat vector (weighted update plus residual).

        Args:
            flat: float ``(numel,)``; not modified.
            generator: the site's secret random source (for a stochastically rounding quantiser; the
                plan's rounds to the nearest level and draws nothing).
            update: the weighted update alone, float ``(numel,)``. The block scores are of what the
                site expects to have to send next round: what this round leaves behind (``flat``
                minus what it carries) plus another update like this one. Defaults to None (scores
                of ``flat``).

        Returns:
            ``(ring, carried)``: uint32 ``(length,)`` (values on the support, then the block scores) and
            the float64 values on the support that the ring stands for (what error feedback subtracts).

        Raises:
            SecAggError: ``flat`` of the wrong shape or with NaN/Inf.
        """
        v = np.asarray(flat, dtype=np.float64)
        if v.shape != (self.numel,):
            raise SecAggError(f"values: {v.size} values, the plan's layout has {self.numel}", self.round)
        if not np.isfinite(v).all():
            raise SecAggError("values: hold NaN or Inf", self.round)
        ring, carried = self.quantizer.encode(v[self.support], generator)
        if update is not None:
            v = v + np.asarray(update, dtype=np.float64)
            v[self.support] -= carried
        z = (block_log_rms(v, self.starts, self.sizes) - self.score_centre) / self.score_step
        z = np.where(np.isfinite(z), z, -self.score_levels)  # an all-zero block scores the lowest level
        q = np.clip(np.rint(z), -self.score_levels, self.score_levels).astype(np.int64)
        base, u, digits = 2 * self.levels + 1, q + self.score_levels, []
        for _ in range(self.score_digits):  # q = sum_i (d_i - L) base^i with d_i in [0, 2L]
            digits.append(u % base - self.levels)
            u //= base
        scores = (np.concatenate(digits) % (1 << self.ring_bits)).astype(np.uint32)
        return np.concatenate([ring, scores]), carried

    def decode(self, ring_sum: np.ndarray, n_summed: int) -> tuple[np.ndarray, np.ndarray]:
        """The summed values and the mean block scores from the unmasked ring sum of ``n_summed`` sites.

        Returns:
            ``(values, mean_log_rms)``: float64 ``(numel,)``, the sum of the sites' carried values (zero
            off the support), and float64 ``(n_blocks,)``, the mean over the sites of each block's
            ``log2`` RMS (as scored; the input of :func:`next_plan`).

        Raises:
            SecAggError: a ring sum of the wrong length, or ``n_summed`` out of 1..n_sites.
        """
        ring_sum = np.asarray(ring_sum)
        if ring_sum.shape != (self.length,):
            raise SecAggError(f"ring_sum: {ring_sum.size} values, the plan has {self.length}", self.round)
        values = np.zeros(self.numel)
        values[self.support] = self.quantizer.decode_sum(ring_sum[: self.support.size], n_summed)
        s = ring_sum[self.support.size :].astype(np.int64)
        s = np.where(s >= 1 << (self.ring_bits - 1), s - (1 << self.ring_bits), s).reshape(self.score_digits, self.n_blocks)
        total = sum(s[i].astype(np.float64) * float(2 * self.levels + 1) ** i for i in range(self.score_digits))
        return values, self.score_centre + self.score_step * total / n_summed

    def summary(self) -> dict:
        """What the round records keep of the plan."""
        return {
            "support_values": int(self.support.size), "support_blocks": int(self.blocks.size), "blocks": self.n_blocks,
            "value_bits": self.value_bits, "ring_bits": self.ring_bits, "score_digits": self.score_digits,
            "score_centre": round(self.score_centre, 3),
        }  # fmt: skip


def round_to_digits(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (a short JSON number)."""
    return float(f"{x:.{digits}g}")


def _fit(sizes: np.ndarray, room: float) -> int:
    """How many of the blocks of ``sizes`` (in order) fill ``room`` values: a block counts when at least
    half of it fits, so the support is within half a block of its budget."""
    return int(np.searchsorted(np.cumsum(sizes) - sizes / 2, room, side="right")) if room > 0 else 0


def _pick(ids: np.ndarray, sizes: np.ndarray, scores: np.ndarray | None, keys: np.ndarray, budget: int, random_share: float) -> np.ndarray:
    """Blocks of ``ids`` worth about ``budget`` values: the highest ``scores`` for ``1 - random_share`` of it,
    then blocks in the order of the public ``keys``; at least one block (the best scored, if any)."""
    top = ids[:0]
    if scores is not None:
        order = ids[np.argsort(-scores[ids], kind="stable")]
        top = order[: max(1, _fit(sizes[order], (1 - random_share) * budget))] if random_share < 1 else top
    rest = np.setdiff1d(ids, top, assume_unique=True)
    drawn = rest[np.argsort(keys[rest], kind="stable")]
    take = _fit(sizes[drawn], budget - int(sizes[top].sum()))
    return np.concatenate([top, drawn[: max(take, 1 if top.size == 0 else 0)]])


def next_plan(
    round: int,
    layout: Layout,
    n_sites: int,
    round_seed: bytes,
    ratio: float = 0.1,
    value_bits: int = 4,
    block: int = 256,
    scope: str = "tensor",
    dense_below: int = 2048,
    mean_log_rms: np.ndarray | None = None,
    random_share: float = RANDOM_SHARE,
    first_value_bits: int = FIRST_VALUE_BITS,
    first_clip: float = FIRST_CLIP,
) -> RoundPlan:
    """The server's plan for ``round``, from public information only.

    Args:
        round: the round to plan.
        layout: the model's layout.
        n_sites: the round's sites.
        round_seed: public bytes (the job id) for the random blocks.
        ratio: share of the values in the support, (0, 1]. Defaults to 0.1 (``up_ratio``).
        value_bits: bits per value once scores exist. Defaults to 4 (``up_bits``).
        block: values per block (0 = one per tensor). Defaults to 256 (``compression_block``).
        scope: ``"tensor"``: ``ratio`` of each tensor's values (at least one block of every tensor),
            as the plain codec's ``compression_scope="tensor"``; ``"global"``: ``ratio`` of the model's
            values, blocks ranked over the whole model. Defaults to ``"tensor"``.
        dense_below: tensors with fewer values are in every round's support whole (norm layers,
            biases: a tenth of the ``tiny`` preset's values in 55 of its 66 tensors), as the plain
            codec sends them dense. Defaults to 2048 (the plain codec's ``dense_below``).
        mean_log_rms: the previous round's mean block scores (:meth:`RoundPlan.decode`), or None
            (round 0, or a server that lost them): blocks at random, ``first_value_bits`` and
            ``first_clip``. Defaults to None.
        random_share: share of the support's values drawn at random when scores exist, [0, 1].
        first_value_bits: value bits without scores. Defaults to 16.
        first_clip: every block's range without scores. Defaults to 1.0.

    Raises:
        SecAggError: naming the field.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise SecAggError(f"ratio={ratio!r}: must be in (0, 1]", round)
    if isinstance(random_share, bool) or not isinstance(random_share, (int, float)) or not 0 <= random_share <= 1:
        raise SecAggError(f"random_share={random_share!r}: must be in [0, 1]", round)
    if scope not in ("tensor", "global"):
        raise SecAggError(f"scope={scope!r}: must be 'tensor' or 'global'", round)
    starts, sizes = model_blocks(layout, block)
    scores = None
    if mean_log_rms is not None:
        scores = np.asarray(mean_log_rms, dtype=np.float64)
        if scores.shape != starts.shape or not np.isfinite(scores).all():
            raise SecAggError(f"mean_log_rms: must be finite of shape ({starts.size},), got {scores.shape}", round)
    if isinstance(dense_below, bool) or not isinstance(dense_below, (int, np.integer)) or dense_below < 0:
        raise SecAggError(f"dense_below={dense_below!r}: must be an integer >= 0", round)
    keys = expand(support_seed(round_seed, round), starts.size)
    ends = np.cumsum([math.prod(shape) for _, shape in layout])
    tensors = [g for g in np.split(np.arange(starts.size), np.searchsorted(starts, ends[:-1])) if g.size]
    dense = [g for g in tensors if int(sizes[g].sum()) < dense_below]
    rest = [g for g in tensors if int(sizes[g].sum()) >= dense_below]
    groups = ([np.concatenate(rest)] if rest else []) if scope == "global" else rest
    chosen = np.sort(np.concatenate([
        *dense, *(_pick(g, sizes, scores, keys, max(1, math.ceil(ratio * int(sizes[g].sum()))), random_share) for g in groups),
    ]).astype(np.int64))  # fmt: skip
    if scores is not None:  # ranges to 4 significant digits: what travels is what the server decodes with
        clips = np.array([round_to_digits(c) for c in CLIP_FACTOR * np.exp2(scores[chosen])])
        return RoundPlan(round, layout, block, chosen, clips, value_bits, n_sites, round_to_digits(float(np.median(scores))))
    return RoundPlan(round, layout, block, chosen, np.full(chosen.size, float(first_clip)), max(first_value_bits, value_bits), n_sites)
