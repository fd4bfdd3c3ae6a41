"""Error feedback: a site (or the server) keeps what its codec did not send and adds it next round.

With a residual ``r`` the sender encodes ``u + r`` and keeps ``r' = u + r - decode(payload)``, so
over any number of rounds ``sum(sent) + r_T = sum(u)``: nothing is lost, only delayed (Seide et al.,
Interspeech 2014; Karimireddy et al., ICML 2019, who also show the residual stays bounded for a
contractive compressor such as top-k).

:class:`ErrorFeedback` owns one residual. It persists it (``save``/``load``, atomically, with
``torch.save``) so a site process restart keeps it; a residual that no longer matches the model
(other names or sizes), cannot be read, or holds NaN/Inf is dropped with a logged warning and the
site starts again from zero, which costs only the delayed part of earlier updates.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from fedsegnet.compression.codec import SparseQuantCodec, update_norm

logger = logging.getLogger(__name__)

STATE_VERSION = 1


def atomic_torch_save(obj, path: str | os.PathLike):
    """``torch.save(obj)`` to ``path`` through a temporary file and a rename: a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class ErrorFeedback:
    """One sender's residual and codec.

    Args:
        codec: the codec that encodes ``update + residual``.
        name: who owns the residual, used in log messages (e.g. the site name). Defaults to ``"sender"``.
    """

    def __init__(self, codec: SparseQuantCodec, name: str = "sender"):
        if not hasattr(codec, "encode"):
            raise ValueError(f"codec={codec!r}: must have an encode(update, residual) method")
        self.codec = codec
        self.name = name
        self.residual: dict[str, torch.Tensor] = {}
        self.rounds = 0
        self.last_update_norm = 0.0
        self.last_residual_norm = 0.0

    def _matching_residual(self, update: Mapping) -> dict | None:
        if not self.residual:
            return None
        same = set(self.residual) == set(update) and all(
            self.residual[k].numel() == math.prod(update[k].shape) for k in update
        )
        if not same:
            logger.warning(
                "%s: error-feedback residual does not match this update (other tensor names or sizes); "
                "starting from a zero residual", self.name,
            )  # fmt: skip
            return None
        if not all(torch.isfinite(r).all() for r in self.residual.values()):
            logger.warning("%s: error-feedback residual holds NaN/Inf; starting from a zero residual", self.name)
            return None
        return self.residual

    def compress(self, update: Mapping, generator: torch.Generator | None = None) -> dict:
        """Encode ``update`` plus the residual; keep the new residual.

        Args:
            update: ``{name: float tensor or array}``; not modified.
            generator: random source for the codec. Defaults to None.

        Returns:
            The payload.
        """
        payload, self.residual = self.codec.encode(update, self._matching_residual(update), generator=generator)
        self.rounds += 1
        self.last_update_norm = update_norm(update)
        self.last_residual_norm = update_norm(self.residual)
        logger.debug(
            "%s: round %d residual norm %.4g (update norm %.4g)",
            self.name, self.rounds, self.last_residual_norm, self.last_update_norm,
        )  # fmt: skip
        return payload

    def reset(self, reason: str = ""):
        """Drop the residual (logged as a warning with ``reason``)."""
        if self.residual:
            logger.warning("%s: error-feedback residual reset%s", self.name, f": {reason}" if reason else "")
        self.residual = {}

    def state_dict(self) -> dict:
        """``{"version", "rounds", "codec", "residual"}``; tensors are not copied."""
        return {
            "version": STATE_VERSION,
            "rounds": self.rounds,
            "codec": self.codec.config() if hasattr(self.codec, "config") else {},
            "residual": dict(self.residual),
        }

    def load_state_dict(self, state: Mapping):
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: ``state`` is not a state of this version.
        """
        check_state(state, "error-feedback", STATE_VERSION, ("residual",))
        residual = state["residual"]
        self.residual = {k: v.to(torch.float32) for k, v in residual.items()}
        self.rounds = int(state.get("rounds", 0))

    def save(self, path: str | os.PathLike):
        """Write the state to ``path`` atomically (a temporary file, then rename)."""
        atomic_torch_save(self.state_dict(), path)

    def load(self, path: str | os.PathLike) -> bool:
        """Read the state saved at ``path``.

        Returns:
            True when a residual was restored; False when there is no file, or it could not be
            read (then a warning is logged and the residual starts from zero).
        """
        path = Path(path)
        if not path.exists():
            return False
        try:
            self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # a torn or foreign file must not stop the site
            logger.warning("%s: cannot read the error-feedback residual %s (%s); starting from zero", self.name, path, e)
            self.residual = {}
            return False
        logger.info("%s: restored the error-feedback residual from %s (round %d)", self.name, path, self.rounds)
        return True


def check_state(state, owner: str, version: int, tensor_dicts: tuple[str, ...] = ()) -> None:
    """Refuse a saved state that is not ``owner``'s of ``version``, or whose named fields are not
    dicts of tensors.

    Raises:
        ValueError: naming ``owner``, the field and what was found.
    """
    if not isinstance(state, Mapping) or state.get("version") != version:
        got = state.get("version") if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{owner} state: version {got!r}, expected {version}")
    for field in tensor_dicts:
        value = state.get(field)
        if not isinstance(value, Mapping) or not all(isinstance(v, torch.Tensor) for v in value.values()):
            raise ValueError(f"{owner} state: field {field!r} must be a dict of tensors")
