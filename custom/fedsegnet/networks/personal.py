"""Which parameters a site keeps (personal) and which it exchanges (shared), by name or by layer type.

Personalised federated learning splits a model into a shared part, averaged on the server, and a
personal part that never leaves the site. Two splits are common:

- by *role*: a network names the parameters that encode a site's own view, e.g. the personal
  queries of FedOAP's decoupled cross-attention (Tashdeed I. et al., "FedOAP: Organ Agnostic
  Tumor Segmentation Using Personalized Federated Learning", arXiv:2511.18847, 2025; see
  :meth:`fedsegnet.networks.dca.DCATransformerUNet.personal_patterns`); :func:`split_personal`
  applies such fnmatch-style patterns to state-dict keys;
- by *layer type*: FedBN keeps every normalisation layer local, because feature statistics are what
  differs most between scanners and sites (Li X. et al., "FedBN: Federated Learning on Non-IID
  Features via Local Batch Normalization", ICLR 2021, arXiv:2102.07623); :func:`norm_keys` finds
  those keys by module type, and :data:`NORM_PATTERNS` is the same set for the hybrid family as
  names, for job configs that can only carry strings.

Patterns use :func:`fnmatch.fnmatchcase`: ``*`` matches any run of characters including dots, so
``"dca.*.q_proj.*"`` matches ``dca.0.q_proj.weight`` and ``dca.1.q_proj.bias``.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable

import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase

from fedsegnet.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["NORM_LAYERS", "NORM_PATTERNS", "match_any", "norm_keys", "split_personal"]

#: Module types :func:`norm_keys` treats as normalisation layers. ``_NormBase`` covers every
#: BatchNorm and InstanceNorm (1d/2d/3d, lazy and sync variants).
NORM_LAYERS: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm)

#: Name patterns of every normalisation parameter and buffer of the hybrid family
#: (``hybrid_unetr``, ``dca_unetr``) with instance, batch or group norm: MONAI's ``Convolution``
#: puts its norm at ``<block>.adn.N``, ``UnetResBlock``/``UnetBasicBlock`` use ``norm1..norm3``, the
#: transformer and DCA blocks ``norm1``, ``norm2``, ``norm_q``, ``norm_kv`` and the bottleneck
#: ``transformer_norm``. Other networks may name their norms differently: prefer :func:`norm_keys`.
NORM_PATTERNS: tuple[str, ...] = ("*.adn.N.*", "*norm*")


def _patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    if isinstance(patterns, (str, bytes)):
        raise ConfigError("patterns", patterns, "must be a sequence of patterns, not one string")
    try:
        patterns = tuple(patterns)
    except TypeError:
        raise ConfigError("patterns", patterns, "must be a sequence of non-empty strings") from None
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("patterns", pattern, "every pattern must be a non-empty string")
    return patterns


def match_any(key: str, patterns: Iterable[str]) -> bool:
    """True when ``key`` matches at least one fnmatch-style pattern (case-sensitive).

    Args:
        key: a state-dict key, e.g. ``"dca.0.q_proj.weight"``.
        patterns: fnmatch-style patterns.

    Returns:
        Whether any pattern matches.

    Raises:
        ConfigError: naming ``patterns`` when it is a bare string or holds a non-string/empty pattern.
    """
    return any(fnmatch.fnmatchcase(key, p) for p in _patterns(patterns))


def split_personal(
    state_dict_keys: Iterable[str], patterns: Iterable[str]
) -> tuple[list[str], list[str]]:
    """Split state-dict keys into shared (exchanged) and personal (kept at the site) keys.

    A pure function: the inputs are only read, and the order of ``state_dict_keys`` is kept in
    both outputs. Every pattern must match at least one key, so a renamed layer or a typo in a job
    config fails loudly instead of silently sharing what should stay personal.

    Args:
        state_dict_keys: the model's keys, e.g. ``model.state_dict().keys()``; a key listed twice
            is kept twice.
        patterns: fnmatch-style patterns of the personal keys (e.g. ``("dca.*.q_proj.*",)``);
            an empty sequence makes every key shared.

    Returns:
        ``(shared_keys, personal_keys)``: two lists that together hold every key once.

    Raises:
        ConfigError: naming ``patterns`` when it is a bare string, holds a non-string or empty
            pattern, or holds a pattern that matches no key (the message lists a few keys).
    """
    patterns = _patterns(patterns)
    keys = [str(k) for k in state_dict_keys]
    shared: list[str] = []
    personal: list[str] = []
    used = set()
    for key in keys:
        hits = [p for p in patterns if fnmatch.fnmatchcase(key, p)]
        used.update(hits)
        (personal if hits else shared).append(key)
    unused = [p for p in patterns if p not in used]
    if unused:
        sample = keys[:5] + (["..."] if len(keys) > 5 else [])
        raise ConfigError(
            "patterns", unused[0], f"matches no parameter name of the {len(keys)} given", options=sample
        )
    logger.debug("split_personal: %d shared, %d personal keys", len(shared), len(personal))
    return shared, personal


def norm_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every normalisation layer of ``model``, found by module type.

    Covers BatchNorm (weight, bias, ``running_mean``, ``running_var``, ``num_batches_tracked``),
    InstanceNorm (affine weight/bias and running stats when tracked), GroupNorm and LayerNorm; see
    :data:`NORM_LAYERS`. Keys are found whatever the layers are called, which is what FedBN needs
    for any network (MONAI names its norms ``adn.N``, ``norm1``, ``norm``, ...).

    Args:
        model: any module; it is not modified.

    Returns:
        The keys in ``model.state_dict()`` order; empty when the model has no normalisation
        layer or its norms have no parameters or buffers (e.g. InstanceNorm without affine).
    """
    prefixes = []
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, NORM_LAYERS):
            prefixes.append(f"{name}." if name else "")
    keys = [
        key for key in model.state_dict()
        if any(key.startswith(p) and "." not in key[len(p):] for p in prefixes)
    ]
    return keys
