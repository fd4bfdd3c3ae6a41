"""The personalisation half of a site's trainer: its personal keys, Ditto's model, fine-tuning.

:class:`PersonalTraining` is a mixin of :class:`~fedsegnet.training.site.SiteTrainer`; the methods
themselves (which keys stay local, how they are laid over the received weights, where the state is
kept) are in :mod:`fedsegnet.training.personal`. The site's personal state (its values of the
personal keys, Ditto's or the fine-tuned model) is restored from its :class:`PersonalStore` file
when the trainer is built and written after every round.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from fedsegnet.config import PersonalConfig
from fedsegnet.errors import FedSegNetError
from fedsegnet.training.boundary_loss import PerturbedBoundaryLoss
from fedsegnet.training.loop import load_exchanged_weights, make_optimizer, state_dict_for_exchange
from fedsegnet.training.personal import PersonalStore, personal_key_names, personalise, proximal_term

logger = logging.getLogger(__name__)

__all__ = ["PersonalTraining"]


class PersonalTraining:
    """Personalisation of a site's trainer (mixin of :class:`~fedsegnet.training.site.SiteTrainer`).

    Uses the trainer's ``site``, ``config``, ``datalist``, ``num_classes``, ``model``,
    ``rounds_done``, ``_global_model`` (the received global model, frozen), ``_train(...)`` and
    ``evaluate(...)``; :meth:`_init_personal` sets up the rest.
    """

    def _init_personal(self, personal: PersonalConfig, personal_dir) -> None:
        """Set up the personal keys, the boundary loss and the personal state (restored when stored).

        Args:
            personal: how the site personalises the model.
            personal_dir: folder of the site's personal state file ``<site>.pt``, or None (memory only).

        Raises:
            FedSegNetError: the stored state is of another method or another set of personal keys.
        """
        self.personal = personal
        self.personal_keys = personal_key_names(self.model, personal)
        self.store = PersonalStore(Path(personal_dir) / f"{self.site}.pt", site=self.site) if personal_dir else None
        self._personal: dict[str, torch.Tensor] = {}  # this site's values of its personal keys
        self._personal_model: dict[str, torch.Tensor] | None = None  # ditto's / the fine-tuned model
        self.personal_net = None  # ditto's personal network (built on first use)
        self._personal_opt = None
        self.ditto_helper = None  # FLARE's PTDittoHelper when run by the FLARE Learner (fedsegnet.flare.ditto)
        self._helper_loaded = False
        self.boundary_loss = None
        if personal.boundary_weight > 0:
            if self.datalist.label_kind in ("box", "tag"):
                logger.warning("%s: boundary loss off: a %s site has no label boundaries", self.site, self.datalist.label_kind)
            else:
                self.boundary_loss = PerturbedBoundaryLoss(
                    band_width=personal.boundary_band, perturbation=personal.boundary_perturbation,
                    weight=personal.boundary_weight, num_classes=self.num_classes,
                )  # fmt: skip
        state = self.store.load() if self.store is not None else None
        if state is not None:
            stored = set(state.get("keys") or {})
            if stored != set(self.personal_keys) or state.get("method") != personal.method:
                raise FedSegNetError(
                    f"site {self.site!r}: {self.store.path} holds the personal state of method "
                    f"{state.get('method')!r} with {len(stored)} personal key(s); this job uses {personal.method!r} "
                    f"with {len(self.personal_keys)}: move the file away to start the personal part afresh"
                )
            self._personal = dict(state["keys"])
            self._personal_model = state.get("model")
            self.rounds_done = int(state.get("round", -1)) + 1
            logger.info("%s: personal state of round %s restored from %s", self.site, state.get("round"), self.store.path)

    def _personal_network(self, weights: dict, fresh_optimizer: bool = False):
        """The site's second network (Ditto's model, the fine-tuned one) loaded with ``weights``."""
        if self.personal_net is None:
            self.personal_net = copy.deepcopy(self.model)
        if self._personal_opt is None or fresh_optimizer:
            p = self.config.preset
            self._personal_opt = make_optimizer(self.personal_net, lr=p.lr, weight_decay=p.weight_decay)
        load_exchanged_weights(self.personal_net, weights, strict=True)
        return self.personal_net

    def train_ditto(self, round: int, should_stop=None, steps: int | None = None) -> dict:
        """Train the site's Ditto model for one round: the site's loss plus
        ``ditto_lambda / 2 * ||w - w_global||^2`` towards the received global model.

        The personal model starts as the first global model the site receives and is the site's
        alone from then on (restored from the personal state after a restart). Call after
        :meth:`train_round` has received the round's global model.

        Args:
            round: the federation's round.
            should_stop: abort check between steps. Defaults to None.
            steps: optimiser steps. Defaults to None (``personal_steps``, or ``local_steps`` when 0).

        Returns:
            The loop statistics of the personal model's training.
        """
        if self._global_model is None:
            raise FedSegNetError(f"site {self.site!r}: Ditto's personal model trains after a global model arrives")
        reference, helper = self._global_model, self.ditto_helper
        if helper is not None:  # FLARE's helper holds the model, restores it and adds its proximal term
            if not self._helper_loaded:
                helper.load_model(reference.state_dict())  # its saved personal model, else the global one
                self._helper_loaded = True
            net, optimizer = helper.model, helper.optimizer
            prox = lambda m: helper.prox_criterion(m, reference)  # noqa: E731
        else:
            net = self._personal_network(self._personal_model or state_dict_for_exchange(reference))
            optimizer, lam = self._personal_opt, self.personal.ditto_lambda
            prox = lambda m: proximal_term(m, reference, lam)  # noqa: E731
        steps = steps or self.personal.personal_steps or self.config.local_steps
        stats = self._train(net, optimizer, steps, round, should_stop, prox, desc=f"{self.site} ditto round {round}")
        self._personal_model = state_dict_for_exchange(net)
        if helper is not None:
            helper.epoch_global = round
            metric = self.evaluate(weights=self._personal_model).dice_mean
            helper.update_metric_save_model(metric if metric is not None else 0.0)
        return stats

    def finetune(self, global_weights: dict, steps: int | None = None, round: int | None = None, should_stop=None) -> dict:
        """Fine-tune ``global_weights`` on the site's training data (the ``finetune`` method).

        The result is the site's personal model (saved with the personal state). The site's own
        training model is left as it was.

        Args:
            global_weights: the (final) global model.
            steps: optimiser steps. Defaults to None (``personal_steps``, or ``local_steps`` when 0).
            round: recorded with the personal state. Defaults to None (rounds done).
            should_stop: abort check between steps. Defaults to None.

        Returns:
            The loop statistics.
        """
        net = self._personal_network(personalise(global_weights, self._personal), fresh_optimizer=True)
        steps = steps or self.personal.personal_steps or self.config.local_steps
        round = self.rounds_done if round is None else int(round)
        stats = self._train(net, self._personal_opt, steps, round, should_stop, None, desc=f"{self.site} fine-tune")
        self._personal_model = state_dict_for_exchange(net)
        self._save_personal(round)
        return stats

    def with_personal_keys(self, weights: dict) -> dict:
        """``weights`` with this site's values of its personal keys laid over them (a new dict)."""
        return personalise(weights, self._personal)

    def personal_weights(self, global_weights: dict) -> dict:
        """The site's personalised model for ``global_weights``.

        ``ditto`` and ``finetune``: the site's personal model (the global one until it exists);
        otherwise the global weights with the site's personal keys laid over them.
        """
        if self.personal.method in ("ditto", "finetune") and self._personal_model is not None:
            return dict(self._personal_model)
        return personalise(global_weights, self._personal)

    def _save_personal(self, round: int) -> None:
        if self.store is not None and (self._personal or self._personal_model is not None):
            self.store.save(method=self.personal.method, round=round, keys=self._personal, model=self._personal_model)
