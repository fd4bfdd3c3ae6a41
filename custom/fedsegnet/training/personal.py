"""Personalised federated learning at one site: which parameters stay local, and where they are kept.

When sites scan different organs or use very different scanners, one global model serves none of
them well. The methods (job arg ``personalization``, :data:`fedsegnet.config.PERSONALIZATION`):

- ``fedbn``: the normalisation layers (affine parameters and running statistics) never leave the
  site; everything else is aggregated. Li X. et al., "FedBN: Federated Learning on Non-IID
  Features via Local Batch Normalization", ICLR 2021.
- ``dca``: the DCA network's query projections stay at the site while the keys/values of its
  decoupled cross-attention are aggregated (FedOAP, organ-agnostic personalised federated tumour
  segmentation; :mod:`fedsegnet.networks.dca`).
- ``ditto``: the exchanged model trains as usual; every site also trains a *personal* model with
  its loss plus ``lambda / 2 * ||w - w_global||^2`` towards the received global model. Li T. et al.,
  "Ditto: Fair and Robust Federated Learning Through Personalization", ICML 2021.
- ``finetune``: the final global model trained further on the site's own data.

For ``fedbn``, ``dca`` and any ``personal_keys`` patterns, the site's update holds only the shared
keys; on every round the site loads the received global weights and then its own values of the
personal keys over them. The personal state (those values, Ditto's model, the fine-tuned model)
lives in one file per site (:class:`PersonalStore`), written atomically after every round, so it
survives a site restart and is what ``fedsegnet eval --personal`` reads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from fedsegnet.config import PersonalConfig
from fedsegnet.errors import ConfigError, FedSegNetError
from fedsegnet.networks.personal import norm_keys, split_personal
from fedsegnet.training.loop import load_exchanged_weights, state_dict_for_exchange, strip_prefixes

logger = logging.getLogger(__name__)

__all__ = ["STORE_VERSION", "PersonalStore", "apply_personal_state", "personal_key_names", "personalise", "proximal_term"]

STORE_VERSION = 1


def personal_key_names(model: nn.Module, config: PersonalConfig) -> list[str]:
    """The exchange keys of ``model`` that stay at the site under ``config``.

    Args:
        model: the site's network.
        config: the personalisation settings.

    Returns:
        Sorted exchange keys (wrapper prefixes removed): the normalisation layers' parameters and
        buffers (``fedbn``), the network's own personal keys (``dca``: ``personal_keys()`` of
        :class:`~fedsegnet.networks.dca.DCATransformerUNet`), and whatever
        ``config.personal_keys`` matches. Empty for ``none``, ``ditto`` and ``finetune`` without
        extra patterns (the whole model is shared).

    Raises:
        ConfigError: ``network`` when ``dca`` is asked of a network without personal parameters;
            ``personal_keys`` when a pattern matches no key.
    """
    keys = [strip_prefixes(k) for k in model.state_dict()]  # the exchange keys (names only, no tensor copies)
    chosen: set[str] = set()
    if config.method == "fedbn":
        chosen |= {strip_prefixes(k) for k in norm_keys(model)}
        if not chosen:
            raise ConfigError("personalization", "fedbn", f"{type(model).__name__} has no normalisation layer to keep local")
    if config.method == "dca":
        own = list(getattr(model, "personal_keys", lambda: [])())
        if not own:
            raise ConfigError(
                "network", type(model).__name__,
                "personalization 'dca' needs a network with personal query projections (dca_unetr with dca_layers >= 1)",
                options=["dca_unetr"],
            )  # fmt: skip
        chosen |= {strip_prefixes(k) for k in own}
    if config.personal_keys:
        try:
            chosen |= set(split_personal(keys, config.personal_keys)[1])
        except ConfigError as e:
            raise ConfigError("personal_keys", list(config.personal_keys), str(e)) from None
    return sorted(chosen)


def personalise(global_weights: Mapping, personal: Mapping) -> dict:
    """The site's model: the received weights with the site's personal values laid over them.

    Args:
        global_weights: ``{key: array or tensor}`` as received (all keys, or the shared ones only,
            as another site's model arrives for cross-site evaluation).
        personal: ``{key: tensor}`` of the site's personal keys (may be empty).

    Returns:
        A new dict (neither input is changed). Loading it strictly catches keys of another network.
    """
    return {**dict(global_weights), **dict(personal)}


def proximal_term(model: nn.Module, reference: nn.Module, mu: float) -> torch.Tensor:
    """Ditto's (and FedProx's) proximal term ``mu / 2 * sum ||w - w_ref||^2`` over ``model``'s
    trainable parameters (the same term as FLARE's ``PTFedProxLoss``); ``reference`` gets no
    gradient. Returns a scalar tensor (0 when ``mu`` is 0)."""
    if mu == 0:
        return next(model.parameters()).sum() * 0.0
    total = 0.0
    for w, w_ref in zip(model.parameters(), reference.parameters()):
        if w.requires_grad:
            total = total + (w - w_ref.detach()).pow(2).sum()
    return 0.5 * float(mu) * total


class PersonalStore:
    """One site's personal state in one file, written atomically (temporary file + rename).

    The file is a ``torch.save`` of ``{"version", "site", "method", "round", "keys": {name:
    tensor}, "model": {name: tensor} or None}``: ``keys`` holds the personal keys' values
    (fedbn/dca), ``model`` a whole personal model (ditto, finetune).

    Args:
        path: the file (its folder is created on the first save).
        site: the site name, checked on load. Defaults to None (not checked).
    """

    def __init__(self, path: str | Path, site: str | None = None):
        self.path = Path(path)
        self.site = site

    def load(self) -> dict | None:
        """The stored state, or None when there is none yet.

        Raises:
            FedSegNetError: naming the file, when it is unreadable, of another version or of
                another site.
        """
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FedSegNetError(f"{self.path}: unreadable personal state ({type(e).__name__}: {e})") from e
        if not isinstance(state, dict) or state.get("version") != STORE_VERSION:
            raise FedSegNetError(f"{self.path}: not a FedSegNet personal state (version {STORE_VERSION} expected)")
        if self.site is not None and state.get("site") not in (None, self.site):
            raise FedSegNetError(f"{self.path}: personal state of site {state.get('site')!r}, not {self.site!r}")
        return state

    def save(self, *, method: str, round: int, keys: Mapping | None = None, model: Mapping | None = None) -> Path:
        """Write the state (tensors are copied to the CPU); returns the path."""
        state = {
            "version": STORE_VERSION,
            "site": self.site,
            "method": method,
            "round": int(round),
            "keys": {k: torch.as_tensor(v).detach().cpu().clone() for k, v in (keys or {}).items()},
            "model": None if model is None else {k: torch.as_tensor(v).detach().cpu().clone() for k, v in model.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        logger.debug("saved personal state of %s (round %d) to %s", self.site, round, self.path)
        return self.path


def apply_personal_state(model: nn.Module, path: str | Path) -> dict:
    """Turn a global model into one site's personalised model, in place.

    Args:
        model: the global model (as loaded from ``FL_global_model.pt``).
        path: the site's personal state file (``<site job workspace>/fedsegnet_personal/<site>.pt``).

    Returns:
        The stored state's summary ``{"site", "method", "round", "n_keys", "whole_model"}``.

    Raises:
        FedSegNetError: naming the file, when it is missing, unreadable, empty or made for another
            network (keys or shapes that do not fit ``model``).
    """
    store = PersonalStore(path)
    state = store.load()
    if state is None:
        raise FedSegNetError(f"{store.path}: no such personal state file")
    whole = state.get("model") is not None
    weights = state["model"] if whole else personalise(state_dict_for_exchange(model), state.get("keys") or {})
    if not whole and not state.get("keys"):
        raise FedSegNetError(f"{store.path}: the personal state holds neither personal keys nor a personal model")
    try:
        load_exchanged_weights(model, weights, strict=True)
    except FedSegNetError as e:
        raise FedSegNetError(f"{store.path}: does not fit the model (another network?): {e}") from e
    return {"site": state.get("site"), "method": state.get("method"), "round": state.get("round"),
            "n_keys": len(state.get("keys") or {}), "whole_model": whole}  # fmt: skip
