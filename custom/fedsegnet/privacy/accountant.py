"""The privacy spent at one site: epsilon(delta) of DP-SGD composed over every step of every round.

The accountant is Opacus's Rényi-DP accountant (``opacus.accountants.RDPAccountant``): each step
is one Poisson-subsampled Gaussian mechanism (sampling rate q, noise multiplier sigma), their RDP
curves add up over the steps, and epsilon(delta) is read from the sum with the conversion of Balle
et al. 2020 (Opacus ``privacy_analysis.get_privacy_spent``).

    Mironov I., "Rényi Differential Privacy", CSF 2017; Mironov I., Talwar K., Zhang L., "Rényi
    Differential Privacy of the Sampled Gaussian Mechanism", arXiv:1908.10530, 2019.

Its state is the list of ``(sigma, q, steps)`` it has composed, so epsilon can be recomputed for
any delta after a restart; ``tests/privacy/test_accountant.py`` checks it against Google's
``dp_accounting`` RDP accountant.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping

from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedsegnet.errors import ConfigError, check_int

logger = logging.getLogger(__name__)

__all__ = ["PrivacyAccountant", "noise_for_target_epsilon", "check_rate", "ACCOUNTANT", "EPSILON_TOLERANCE"]

ACCOUNTANT = RDPAccountant.mechanism()
"""The accounting mechanism (``"rdp"``)."""

EPSILON_TOLERANCE = 0.01
"""The noise chosen for a target epsilon spends between ``target - 0.01`` and ``target``."""


def check_rate(sample_rate: float) -> float:
    """``sample_rate`` as a float in (0, 1], else :class:`ConfigError` naming ``sample_rate``."""
    ok = not isinstance(sample_rate, bool) and isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1
    if not ok:
        raise ConfigError("sample_rate", sample_rate, "must be a number in (0, 1]")
    return float(sample_rate)


def _check_noise(noise_multiplier: float) -> float:
    ok = not isinstance(noise_multiplier, bool) and isinstance(noise_multiplier, (int, float))
    if not ok or not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise ConfigError("noise_multiplier", noise_multiplier, "must be a finite number > 0")
    return float(noise_multiplier)


def noise_for_target_epsilon(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier with which ``steps`` steps at ``sample_rate`` spend ``target_epsilon``.

    Opacus's ``get_noise_multiplier`` (binary search on the RDP accountant): the result spends
    between ``target_epsilon - EPSILON_TOLERANCE`` and ``target_epsilon`` at ``delta``.

    Args:
        target_epsilon: the epsilon to spend (job arg ``dp_target_epsilon``), > 0.
        delta: the delta, in (0, 1).
        sample_rate: the Poisson sampling rate of cases, in (0, 1].
        steps: the planned steps of the whole job (rounds x local steps), >= 1.

    Returns:
        The noise multiplier sigma.

    Raises:
        ConfigError: naming ``dp_target_epsilon`` when no noise multiplier up to Opacus's
            ``MAX_SIGMA`` (1e6) reaches it, or the bad argument.
    """
    ok = not isinstance(target_epsilon, bool) and isinstance(target_epsilon, (int, float))
    if not ok or not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ConfigError("dp_target_epsilon", target_epsilon, "must be a finite number > 0")
    rate = check_rate(sample_rate)
    steps = check_int("steps", steps, 1)
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=float(target_epsilon), target_delta=float(delta), sample_rate=rate, steps=steps,
                accountant=ACCOUNTANT, epsilon_tolerance=EPSILON_TOLERANCE,
            )  # fmt: skip
        )
    except ValueError:  # Opacus: "The privacy budget is too low."
        raise ConfigError(
            "dp_target_epsilon", target_epsilon,
            f"cannot be reached: {steps} planned steps at sampling rate {rate:g} spend more even with "
            f"noise multiplier 1e6 (delta {delta:g}); raise it or plan fewer rounds or local_steps",
        ) from None  # fmt: skip


class PrivacyAccountant:
    """Epsilon(delta) spent by one site, over every DP-SGD step it has taken (Opacus RDP).

    Args:
        delta: the delta epsilon is reported at, in (0, 1).

    Raises:
        ConfigError: naming ``dp_delta`` when ``delta`` is not in (0, 1).
    """

    def __init__(self, delta: float):
        ok = not isinstance(delta, bool) and isinstance(delta, (int, float)) and 0 < delta < 1
        if not ok:
            raise ConfigError("dp_delta", delta, "must be a number in (0, 1)")
        self.delta = float(delta)
        self._rdp = RDPAccountant()

    @property
    def steps(self) -> int:
        """DP-SGD steps composed so far."""
        return sum(int(n) for _, _, n in self._rdp.history)

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        """Compose one step: a Poisson-subsampled Gaussian mechanism.

        Args:
            noise_multiplier: sigma, > 0.
            sample_rate: the Poisson sampling rate q, in (0, 1].

        Raises:
            ConfigError: naming the bad argument.
        """
        self._rdp.step(noise_multiplier=_check_noise(noise_multiplier), sample_rate=check_rate(sample_rate))

    def optimizer_hook(self, sample_rate: float):
        """Opacus's step hook for a ``DPOptimizer``: composes one step at ``sample_rate`` and the
        optimizer's noise multiplier after every noised step (``DPOptimizer.attach_step_hook``)."""
        return self._rdp.get_optimizer_hook_fn(check_rate(sample_rate))

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far (0.0 before the first step).

        Args:
            delta: the delta to read epsilon at. Defaults to None (this accountant's ``delta``).

        Returns:
            Epsilon.
        """
        if not self._rdp.history:
            return 0.0
        return float(self._rdp.get_epsilon(delta=self.delta if delta is None else float(delta)))

    def epsilon_after(self, steps: int, noise_multiplier: float, sample_rate: float) -> float:
        """Epsilon once ``steps`` more steps at ``(noise_multiplier, sample_rate)`` are taken (this
        accountant is not changed).

        Args:
            steps: further steps, >= 0.
            noise_multiplier: their sigma, > 0.
            sample_rate: their sampling rate, in (0, 1].

        Returns:
            Epsilon at this accountant's ``delta``.

        Raises:
            ConfigError: naming the bad argument.
        """
        steps = check_int("steps", steps, 0)
        ahead = copy.deepcopy(self)
        if steps:
            ahead._rdp.history.append((_check_noise(noise_multiplier), check_rate(sample_rate), steps))
        return ahead.epsilon()

    def budget_refusal(self, budget: float, steps: int, noise_multiplier: float, sample_rate: float,
                       label: str | None = None) -> str | None:  # fmt: skip
        """Why the next round may not train: its ``steps`` would take epsilon past ``budget``.

        Args:
            budget: the site's budget (job arg ``dp_budget``; 0 = none).
            steps: the next round's steps, >= 0.
            noise_multiplier: their sigma, > 0.
            sample_rate: their sampling rate, in (0, 1].
            label: how the message names the budget. Defaults to None (``dp_budget=<budget>``).

        Returns:
            None when the round fits the budget (or there is none), else one line naming the spent
            and the would-be epsilon, the budget and delta.
        """
        if not budget:
            return None
        after = self.epsilon_after(steps, noise_multiplier, sample_rate)
        if after <= budget:
            return None
        return (
            f"privacy budget: {steps} more steps would spend epsilon {after:.3f} > {label or f'dp_budget={budget:g}'} "
            f"(spent so far {self.epsilon():.3f} over {self.steps} steps, delta {self.delta:g}); not training"
        )

    def state_dict(self) -> dict:
        """The accountant's state, to save with the site's state every round.

        Returns:
            ``{"mechanism": "rdp", "history": [[sigma, q, steps], ...]}`` (plain floats and ints).
        """
        return {"mechanism": ACCOUNTANT, "history": [[float(s), float(q), int(n)] for s, q, n in self._rdp.history]}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from a saved state: the steps already composed count again.

        Args:
            state: what :meth:`state_dict` returned.

        Raises:
            ConfigError: (field ``dp_state``) for another mechanism or a malformed history; the
                accountant is not changed.
        """
        if not isinstance(state, Mapping) or state.get("mechanism") != ACCOUNTANT:
            found = state.get("mechanism") if isinstance(state, Mapping) else type(state).__name__
            raise ConfigError("dp_state", found, f"not a {ACCOUNTANT!r} accountant state")
        history = []
        for entry in state.get("history", ()):
            try:
                sigma, rate, steps = entry
                history.append((_check_noise(sigma), check_rate(rate), check_int("steps", steps, 1)))
            except (TypeError, ValueError) as e:
                raise ConfigError("dp_state", entry, f"bad history entry ([sigma, q, steps] expected): {e}") from None
        self._rdp.history = history
