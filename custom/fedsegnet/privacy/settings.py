"""DP-SGD settings of a site, built from the job args ``dp``, ``dp_noise``, ``dp_target_epsilon``,
``dp_delta``, ``dp_clip`` and ``dp_budget`` (declared in :data:`fedsegnet.config.JOB_ARGS`).

Each value is checked against its declaration (so a bad value gets the schema's message, naming the
job arg); the rules that join several args are checked here. What the settings mean is in
``docs/privacy.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from fedsegnet.config import check_job_args
from fedsegnet.errors import ConfigError, check_int

logger = logging.getLogger(__name__)

__all__ = ["DPSettings", "default_delta", "DEFAULT_DELTA", "DELTA_SHARE", "DP_JOB_ARGS"]

DEFAULT_DELTA = 1e-5
"""The largest delta a site gets by default."""

DELTA_SHARE = 0.1
"""The default delta is at most this share of ``1 / n_cases``."""

DP_JOB_ARGS = {
    "mode": "dp",
    "noise": "dp_noise",
    "target_epsilon": "dp_target_epsilon",
    "delta": "dp_delta",
    "clip": "dp_clip",
    "budget": "dp_budget",
}
"""Field of :class:`DPSettings` -> the job arg it comes from."""


def default_delta(n_cases: int) -> float:
    """The delta of a site that leaves ``dp_delta`` null: ``min(1e-5, 0.1 / n_cases)``.

    A delta of ``1 / n`` would allow a mechanism that publishes one patient's data outright; the
    default stays at a tenth of that or below (1e-5 for sites of up to 10,000 training cases).

    Args:
        n_cases: the site's training cases, >= 1.

    Returns:
        The delta.

    Raises:
        ConfigError: naming ``n_cases`` when it is not an integer >= 1.
    """
    n = check_int("n_cases", n_cases, 1)
    return min(DEFAULT_DELTA, DELTA_SHARE / n)


@dataclass(frozen=True)
class DPSettings:
    """Differential privacy of one site (job args of the names in :data:`DP_JOB_ARGS`).

    Args:
        mode: ``"none"`` (no DP) or ``"patient"`` (DP-SGD, one training case is the unit). Job arg
            ``dp``. Defaults to ``"none"``.
        noise: the noise multiplier sigma (Gaussian noise of sd ``sigma * clip`` on the sum of the
            clipped case gradients), > 0; job arg ``dp_noise``. Defaults to None (chosen from
            ``target_epsilon``).
        target_epsilon: the epsilon the job's planned steps spend exactly; the noise multiplier is
            then chosen for it (:func:`fedsegnet.privacy.noise_for_target_epsilon`), > 0; job arg
            ``dp_target_epsilon``. Defaults to None (``noise`` is given).
        delta: the delta of the guarantee, in (0, 1); job arg ``dp_delta``. Defaults to None
            (:func:`default_delta` of the site's training cases).
        clip: the bound on one case's gradient norm in one step, > 0; job arg ``dp_clip``.
            Defaults to 1.0.
        budget: the epsilon the site may spend in all (0 = no budget); job arg ``dp_budget``.
            Defaults to 0.0.

    Raises:
        ConfigError: naming the job arg: a value its declaration refuses; ``dp_delta`` = 1;
            ``dp='patient'`` with neither or both of ``dp_noise`` and ``dp_target_epsilon``;
            ``dp='none'`` with ``dp_noise``, ``dp_target_epsilon``, ``dp_delta`` or ``dp_budget``
            set (they would do nothing).
    """

    mode: str = "none"
    noise: float | None = None
    target_epsilon: float | None = None
    delta: float | None = None
    clip: float = 1.0
    budget: float = 0.0

    def __post_init__(self):
        checked = check_job_args({arg: getattr(self, field) for field, arg in DP_JOB_ARGS.items()})
        for field, arg in DP_JOB_ARGS.items():
            object.__setattr__(self, field, checked[arg])
        if self.delta == 1.0:
            raise ConfigError("dp_delta", self.delta, "must be < 1 (a delta of 1 promises nothing)")
        if self.mode == "none":
            for field in ("noise", "target_epsilon", "delta", "budget"):
                if getattr(self, field):
                    raise ConfigError(
                        DP_JOB_ARGS[field], getattr(self, field), "is set but dp='none'; set dp='patient' or leave it unset"
                    )
            return
        if self.noise is None and self.target_epsilon is None:
            raise ConfigError("dp_noise", None, "dp='patient' needs dp_noise (a noise multiplier) or dp_target_epsilon")
        if self.noise is not None and self.target_epsilon is not None:
            raise ConfigError(
                "dp_target_epsilon", self.target_epsilon,
                f"give dp_noise or dp_target_epsilon, not both (dp_noise={self.noise!r})",
            )  # fmt: skip

    @classmethod
    def from_job_args(cls, values: Mapping) -> DPSettings:
        """Settings from job-arg values.

        Args:
            values: ``{job arg: value}``; the ``dp*`` args are read (a missing one takes its
                declared default), the others are ignored.

        Returns:
            The checked settings.

        Raises:
            ConfigError: as :class:`DPSettings`.
        """
        return cls(**{field: values[arg] for field, arg in DP_JOB_ARGS.items() if arg in values})

    @property
    def enabled(self) -> bool:
        """True when the site trains with DP-SGD."""
        return self.mode != "none"

    def delta_for(self, n_cases: int) -> float:
        """The delta at a site of ``n_cases`` training cases: ``dp_delta``, else :func:`default_delta`.

        A given ``dp_delta`` of ``1 / n_cases`` or more is kept but logged at WARNING.

        Args:
            n_cases: the site's training cases, >= 1.

        Returns:
            The delta.

        Raises:
            ConfigError: naming ``n_cases`` when it is not an integer >= 1.
        """
        default = default_delta(n_cases)
        if self.delta is None:
            return default
        if self.delta >= 1.0 / n_cases:
            logger.warning(
                "dp_delta=%g is not below 1 / %d training cases: it would allow publishing one case outright", self.delta, n_cases
            )
        return self.delta
