"""DP-SGD at one site across rounds and restarts: the private step, the case loader, the saved
accountant state and the budget, for :class:`fedsegnet.training.site.SiteTrainer`.

A site with ``dp='patient'`` trains every round through :class:`SitePrivacy`:

1. before the round, :meth:`SitePrivacy.check_budget` refuses it (:class:`PrivacyBudgetSpent`)
   when its steps would take epsilon past ``dp_budget``;
2. the round's steps are :meth:`~fedsegnet.privacy.PrivateTraining.train_steps` on Poisson-sampled
   cases (:func:`~fedsegnet.privacy.build_case_loader`);
3. the accountant's state is written to the site's state file before the update leaves the trainer,
   so a site restarted in the same job, or a job continued with ``resume_from``, goes on from the
   epsilon already spent. A state file that cannot be read stops the site (it never starts again
   from zero).

What the site may publish about its privacy is :meth:`SitePrivacy.report` (settings and step
counts only). No FLARE here.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fedsegnet.data.transforms import crops_per_volume, infinite_batches
from fedsegnet.errors import ConfigError, PrivacyBudgetSpent, check_int
from fedsegnet.privacy.dp_sgd import PrivateTraining
from fedsegnet.privacy.sampling import build_case_loader, cases_per_step
from fedsegnet.privacy.settings import DPSettings

logger = logging.getLogger(__name__)

__all__ = ["SitePrivacy", "PrivacyBudgetSpent", "STATE_VERSION", "refuse_unsupported"]

STATE_VERSION = 1
"""Version of the site's privacy state file (``<site>.json``)."""


def refuse_unsupported(site: str, *, label_kind: str, proximal: bool, personal_method: str, boundary: bool) -> None:
    """Refuse what DP-SGD here cannot train with a per-case guarantee, naming the site and the setting.

    Refused: weak labels (``box``, ``tag``, ``partial``: their losses use the global model's
    pseudo-labels and batch-level terms, not yet split per case), FedProx (``fedprox_mu``), Ditto
    (``personalization='ditto'``: a second model trained on the same cases outside the accountant)
    and the boundary loss (``boundary_weight``: a second forward pass per batch).

    Raises:
        ConfigError: naming the job arg at fault.
    """
    where = f"site {site!r}: dp='patient'"
    if label_kind != "voxel":
        raise ConfigError("dp", "patient", f"{where} needs voxel labels; this site's dataset.json declares label kind {label_kind!r}")
    if proximal:
        raise ConfigError("fedprox_mu", "> 0", f"{where} does not support FedProx; set fedprox_mu=0")
    if personal_method == "ditto":
        raise ConfigError("personalization", "ditto", f"{where} does not support Ditto (its personal model trains outside the accountant)")
    if boundary:
        raise ConfigError("boundary_weight", "> 0", f"{where} does not support the boundary loss; set boundary_weight=0")


class SitePrivacy:
    """Patient-level DP-SGD of one site, its case loader and its saved accountant state.

    Args:
        site: the site's name (messages, the state file's contents).
        settings: the job's :class:`~fedsegnet.privacy.DPSettings` (``dp='patient'``).
        model: the site's network.
        optimizer: its optimiser (wrapped in Opacus's ``DPOptimizer``: use :attr:`optimizer`).
        loss_fn: the per-case loss ``loss_fn(logits, label)``.
        cases: the site's training cases (the privacy units).
        preset: the run's preset (crops per case, cases per step, patch size).
        num_classes: classes including background.
        in_channels: image channels.
        seed: the site seed (crop positions and flips only; the case draws and the noise come from
            the operating system's entropy).
        planned_steps: rounds x local steps the job plans (the noise for ``dp_target_epsilon``), >= 1.
        state_file: where the accountant's state is kept (read now when it exists, written after
            every round). Defaults to None (memory only).
        label_map: the site's label map. Defaults to None.

    Raises:
        ConfigError: as :class:`~fedsegnet.privacy.PrivateTraining`, or (field ``dp_state``) naming
            the state file when it cannot be read or belongs to another site.
    """

    def __init__(self, site, settings: DPSettings, model, optimizer, loss_fn, cases, preset, num_classes, in_channels,
                 *, seed: int, planned_steps: int, state_file=None, label_map=None):  # fmt: skip
        self.site = site
        self.settings = settings
        self.training = PrivateTraining(
            model, optimizer, settings, n_cases=len(cases), cases_per_step=cases_per_step(preset),
            crops_per_case=crops_per_volume(preset), planned_steps=check_int("planned_steps", planned_steps, 1),
            loss_fn=loss_fn,
        )  # fmt: skip
        self.optimizer = self.training.optimizer
        self.state_file = Path(state_file) if state_file else None
        self._loader_args = (cases, preset, num_classes, in_channels, seed, label_map)
        self._batches = None
        self.restored_from = None
        self.policy_budget = None  # a site privacy policy's budget (the Learner sets it per task); the smaller one holds
        if self.state_file is not None and self.state_file.exists():
            self._load()

    def _load(self) -> None:
        path = self.state_file
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict):
                raise ValueError(f"a JSON object expected, got {type(state).__name__}")
        except (OSError, ValueError) as e:
            raise ConfigError("dp_state", str(path), f"cannot be read ({e}); the site does not train rather than count epsilon from zero") from None
        if state.get("site") not in (None, self.site):
            raise ConfigError("dp_state", str(path), f"belongs to site {state.get('site')!r}, not {self.site!r}")
        try:
            self.training.load_state_dict(state.get("accountant"))
        except ConfigError as e:
            raise ConfigError("dp_state", str(path), f"bad accountant state: {e}") from None
        self.restored_from = str(path)
        logger.info("%s: privacy state restored from %s: epsilon %.3f spent over %d steps", self.site, path,
                    self.training.spent(), self.training.accountant.steps)  # fmt: skip

    def save(self, round: int) -> None:
        """Write the accountant's state (after ``round``) to the state file, atomically."""
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        state = {"version": STATE_VERSION, "site": self.site, "round": int(round), "accountant": self.training.state_dict(),
                 "report": self.report()}  # fmt: skip
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
        os.replace(tmp, self.state_file)

    def batches(self):
        """The endless iterator of Poisson-sampled case batches (built on first use)."""
        if self._batches is None:
            cases, preset, num_classes, in_channels, seed, label_map = self._loader_args
            self._batches = infinite_batches(
                build_case_loader(cases, preset, num_classes, in_channels, seed=seed, label_map=label_map)
            )
        return self._batches

    @property
    def budget(self) -> float:
        """The budget in force: the smaller of ``dp_budget`` and :attr:`policy_budget` (0 = none)."""
        budgets = [b for b in (self.settings.budget, self.policy_budget) if b]
        return min(budgets) if budgets else 0.0

    def check_budget(self, steps: int) -> None:
        """Raise :class:`PrivacyBudgetSpent` when ``steps`` more steps would pass :attr:`budget`."""
        t = self.training
        by_policy = bool(self.policy_budget) and self.budget == self.policy_budget != self.settings.budget
        label = f"the site privacy policy's budget {self.budget:g}" if by_policy else None
        reason = t.accountant.budget_refusal(self.budget, steps, t.noise_multiplier, t.sample_rate, label=label)
        if reason is not None:
            raise PrivacyBudgetSpent(self.site, reason)

    def train(self, steps: int, round: int, *, should_stop=None, progress=False, desc: str = "train (DP)") -> dict:
        """One round of DP-SGD steps; the state is saved before returning (also when stopped).

        Returns:
            :meth:`~fedsegnet.privacy.PrivateTraining.train_steps`' statistics plus ``dp``:
            :meth:`report` after the round.
        """
        try:
            stats = self.training.train_steps(self.batches(), steps, should_stop=should_stop, progress=progress, desc=desc)
        finally:  # the steps taken are counted, whatever happens next
            self.save(round)
        stats["dp"] = self.report()
        return stats

    def report(self) -> dict:
        """``{"epsilon", "delta", "noise_multiplier", "sample_rate", "clip", "steps", "budget"}``
        (``budget``: the one in force, None when there is none)."""
        return {**self.training.report(), "budget": self.budget or None}
