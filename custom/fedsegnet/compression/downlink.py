"""The downlink: the global model sent to sites as a compressed difference, with server-side error feedback.

The server keeps the *reference* ``R``: the model every in-sync site holds, bit for bit. Per round
it encodes ``G - R`` once (``G`` the new global model) with a :class:`SparseQuantCodec`, and moves
``R`` by exactly what the sites add (it decodes its own payload), so what it did not send stays in
``G - R`` and goes out in later rounds: error feedback on the server, as in the bidirectional
compression of Tang et al. (DoubleSqueeze, ICML 2019) and Philippenko & Dieuleveut (Artemis, 2020).
Once ``G`` stops changing, ``R`` converges to it.

Each state of ``R`` has a *version*. A site holding the previous version (the *base*) gets the
difference; any other site (new, restarted, or one whose last round failed) gets a full message:

- the very first model (the start of the run, or after a server restart) dense at ``first_bits``
  with per-block scales; every site starts from that same quantized model, and its quantization
  error is part of the next difference. ``first_bits=32`` sends it exactly.
- afterwards, exact float32 copies of ``R``, so a rejoining site holds what the others hold.

:class:`GlobalModelDownlink` is the server side; :func:`rebuild_global_model` the site side. Both
take and return plain dicts; the messages are payloads of :mod:`~fedsegnet.compression.codec` or
``{name: float32 array}``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

import numpy as np
import torch

from fedsegnet.compression.codec import (
    MAX_PAYLOAD_VALUES,
    SparseQuantCodec,
    decode_payload,
    is_payload,
    seeded_generator,
    update_norm,
)
from fedsegnet.compression.error_feedback import check_state
from fedsegnet.compression.index_coding import PayloadError
from fedsegnet.compression.quantize import check_bits
from fedsegnet.errors import check_int

logger = logging.getLogger(__name__)

STATE_VERSION = 1
MODES = ("diff", "full")


def _float32(weights: Mapping, what: str) -> dict[str, torch.Tensor]:
    """``{name: float32 CPU tensor}`` of ``weights`` (no copy when already float32; never written to)."""
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"{what}: must be a non-empty dict of arrays or tensors, got {type(weights).__name__}")
    out = {}
    for k, v in weights.items():
        try:
            t = v.detach().to("cpu") if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{what}[{k!r}]: not an array of numbers ({e})") from None
        if not t.is_floating_point():
            raise ValueError(f"{what}[{k!r}]: dtype {t.dtype} is not a float type")
        out[k] = t.to(torch.float32)
    return out


class GlobalModelDownlink:
    """Server side of the downlink: the reference ``R``, its version, and the message for each site.

    Not thread-safe: callers serialise :meth:`message` (the FLARE adapter holds a lock).

    Args:
        codec: encodes each round's difference ``G - R``.
        first_bits: bits per value of the very first full model (4, 8, 16 or 32; 32 = exact).
            Defaults to 8.
        seed: seed of the codec's sampling and stochastic rounding (per round). Defaults to 0.
        instance: label of this server process, part of every version, so that a restarted server
            (which starts again from a full first model) never names a model the way the previous
            process did. Defaults to ``""``.

    Raises:
        ValueError: ``codec`` has no ``encode`` method, or ``first_bits`` is not one of 4, 8, 16, 32.
        ConfigError: ``seed`` is not an integer >= 0.
    """

    def __init__(self, codec: SparseQuantCodec, first_bits: int = 8, seed: int = 0, instance: str = ""):
        if not hasattr(codec, "encode"):
            raise ValueError(f"codec={codec!r}: must have an encode(update, generator=...) method")
        self.codec = codec
        self.first_bits = check_bits(first_bits)
        self.seed = check_int("seed", seed, 0)
        self.instance = str(instance)
        self._first_codec = SparseQuantCodec(ratio=1.0, dense_bits=self.first_bits, block=getattr(codec, "block", 256))
        self._reset()

    def _reset(self):
        self._round = None
        self._reference: dict[str, torch.Tensor] | None = None  # what in-sync sites hold
        self._full = None  # what full messages of this round carry: the reference (numpy) or its payload
        self._diff = None  # this round's payload (base -> version)
        self._base = None
        self._version = None
        self._count = 0  # models made so far (part of the version)
        self.last_unsent_norm = None

    @property
    def version(self) -> str | None:
        """Version of the reference (what an in-sync site holds now); None before the first message."""
        return self._version

    @property
    def base(self) -> str | None:
        """Version a site must hold to be sent this round's difference; None in a first-model round."""
        return self._base

    @property
    def round(self):
        """Round of the current reference (as given to :meth:`message`); None before the first."""
        return self._round

    @property
    def reference(self) -> dict[str, torch.Tensor]:
        """``{name: float32 tensor}``: what an in-sync site holds (a new dict of copies; empty before the first)."""
        return {k: v.clone() for k, v in (self._reference or {}).items()}

    def _new_version(self, rnd) -> str:
        self._count += 1
        tag = hashlib.sha256(f"{self.instance}:{self.seed}:{self._count}".encode()).hexdigest()[:12]
        return f"{rnd}-{tag}"

    def _new_round(self, weights: Mapping, rnd):
        target = _float32(weights, "weights")
        ref = self._reference
        same = ref is not None and set(target) == set(ref) and all(target[k].shape == ref[k].shape for k in target)
        if same:
            diff = {k: target[k] - ref[k] for k in target}
            payload, unsent = self.codec.encode(diff, generator=seeded_generator(self.seed, "server", rnd, "down"))
            # move R by exactly what the sites add (they decode the same payload), not by diff - unsent
            sent = decode_payload(payload, as_numpy=False)
            self._reference = {k: ref[k] + sent[k] for k in target}
            self._diff, self._base = payload, self._version
            self.last_unsent_norm = update_norm(unsent)
            self._full = {k: v.numpy() for k, v in self._reference.items()}
            logger.info("round %s: global model difference encoded; unsent remainder norm %.4g", rnd, self.last_unsent_norm)
        else:  # the first model (or the model's names or shapes changed): everyone starts from its encoding
            if ref is not None:
                logger.warning("round %s: the global model's tensor names or shapes changed; every site gets it in full", rnd)
            self._diff, self._base, self.last_unsent_norm = None, None, None
            if self.first_bits < 32:
                self._full, _ = self._first_codec.encode(target)
                self._reference = decode_payload(self._full, as_numpy=False)
            else:
                self._reference = {k: v.clone() for k, v in target.items()}
                self._full = {k: v.numpy() for k, v in self._reference.items()}
        self._version = self._new_version(rnd)
        self._round = rnd

    def message(self, weights: Mapping, rnd, held: str | None) -> tuple[dict, dict]:
        """The message for a site holding version ``held``, in round ``rnd``.

        The first call of a round (a ``rnd`` other than the last one seen) makes the round's
        reference from ``weights``; later calls of the same round reuse it (``weights`` is then
        not read), so every site of a round gets the same model.

        Args:
            weights: ``{name: float array or tensor}``, the new global model. Not modified.
            rnd: the round (any hashable label; compared with the previous call's).
            held: version the site holds (what it last confirmed), or None (a new or restarted site).

        Returns:
            ``(data, info)``: ``data`` is the round's difference payload (when ``held`` is the base
            version), else the full message (the first model's payload, or ``{name: float32
            array}`` of the reference). ``info`` is ``{"mode": "diff" | "full", "base": version or
            None, "version": the reference's version}``. ``data`` is shared by every site of the
            round: callers must not modify it.

        Raises:
            ValueError: ``weights`` is not a non-empty dict of float arrays or tensors.
        """
        if rnd != self._round or self._full is None:
            self._new_round(weights, rnd)
        if self._diff is not None and held is not None and held == self._base:
            return self._diff, {"mode": "diff", "base": self._base, "version": self._version}
        return self._full, {"mode": "full", "base": None, "version": self._version}

    def state_dict(self) -> dict:
        """What :meth:`load_state_dict` needs to go on from here (tensors and arrays are not copied)."""
        return {
            "version": STATE_VERSION, "round": self._round, "model_version": self._version, "base": self._base,
            "count": self._count, "reference": dict(self._reference or {}), "diff": self._diff,
            "full": self._full if is_payload(self._full) else None, "first_bits": self.first_bits,
        }  # fmt: skip

    def load_state_dict(self, state: Mapping):
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: ``state`` is not a state of this version, or its fields are malformed.
        """
        check_state(state, "downlink", STATE_VERSION, ("reference",))
        reference = state["reference"]
        for field in ("diff", "full"):
            if state.get(field) is not None and not is_payload(state[field]):
                raise ValueError(f"downlink state: field {field!r} must be a payload or None")
        self._reset()
        if not reference:
            return
        self._reference = {k: v.to(torch.float32) for k, v in reference.items()}
        self._round, self._version, self._base = state.get("round"), state.get("model_version"), state.get("base")
        self._count = int(state.get("count", 0))
        self._diff = state.get("diff")
        full = state.get("full")
        self._full = full if full is not None else {k: v.numpy() for k, v in self._reference.items()}


def rebuild_global_model(data, info: Mapping, held: Mapping | None = None, max_values: int = MAX_PAYLOAD_VALUES) -> dict:
    """Site side: the new global model from the server's message and the held copy.

    Args:
        data: the message (:meth:`GlobalModelDownlink.message`'s ``data``, possibly after serialisation).
        info: its ``info`` (``{"mode", "base", "version"}``).
        held: ``{name: float32 array}``, the model the site holds (version ``info["base"]`` for a
            difference; the caller checks the version). Not modified. Defaults to None.
        max_values: most values a full payload (the first model) may declare; a difference is
            bounded by ``held``'s shapes instead. Defaults to :data:`~fedsegnet.compression.MAX_PAYLOAD_VALUES`.

    Returns:
        ``{name: float32 array}``, a new dict of new arrays; every value finite.

    Raises:
        PayloadError: a difference without a held copy, a payload that is malformed or does not
            match ``held``, full weights that are not arrays of numbers, or a result that is not
            finite (the message names the tensor).
        ConfigError: ``max_values`` is not an integer >= 1.
    """
    max_values = check_int("max_values", max_values, 1)
    mode = info.get("mode") if isinstance(info, Mapping) else None
    if mode == "diff":
        if held is None:
            raise PayloadError("a difference needs the held global model, and none is held")
        diff = decode_payload(data, reference=held)
        with np.errstate(over="ignore", invalid="ignore"):
            new = {k: np.asarray(held[k], dtype=np.float32) + diff[k] for k in held}
    elif is_payload(data):  # the first model of the run, quantized
        new = decode_payload(data, max_values=max_values)
    else:
        if not isinstance(data, Mapping):
            raise PayloadError(f"full weights must be a dict of arrays, got {type(data).__name__}")
        new = {}
        for k, v in data.items():
            try:
                new[k] = np.array(v, dtype=np.float32, copy=True)
            except (TypeError, ValueError) as e:
                raise PayloadError(f"{k}: not an array of numbers ({e})") from None
    for k, v in new.items():
        if v.size and not (np.isfinite(v.min()) and np.isfinite(v.max())):
            raise PayloadError(f"{k}: the rebuilt weights contain NaN or Inf")
    return new
