"""Network registry: job JSON picks a network by name, :func:`build_network` builds it.

A registered constructor has the signature
``constructor(in_channels: int, out_channels: int, patch_size: tuple[int, int, int], **kwargs)
-> torch.nn.Module``; it validates ``patch_size`` and its own keyword arguments and raises
:class:`~fedsegnet.errors.ConfigError` naming the field at fault.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn as nn

from fedsegnet.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["NETWORKS", "EXTENDS", "register_network", "build_network", "check_kwargs", "as_patch_size"]

#: name -> constructor ``(in_channels, out_channels, patch_size, **kwargs) -> nn.Module``.
NETWORKS: dict[str, Callable[..., nn.Module]] = {}

#: name -> the registered network it extends (it accepts that network's keyword arguments), so a
#: preset's ``network_kwargs`` carry over when a job picks the extension.
EXTENDS: dict[str, str] = {}


def register_network(name: str, extends: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a network constructor to :data:`NETWORKS` under ``name``.

    Args:
        name: registry name used in job configs (e.g. ``"hybrid_unetr"``).
        extends: a registered network whose keyword arguments this one accepts too (see
            :data:`EXTENDS`). Defaults to None.

    Returns:
        The decorator; it returns the constructor unchanged.

    Raises:
        ConfigError: when ``name`` is empty or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("name", name, "must be a non-empty string")
    if name in NETWORKS:
        raise ConfigError("name", name, "network already registered", options=sorted(NETWORKS))

    if extends is not None and extends not in NETWORKS:
        raise ConfigError("extends", extends, "not a registered network", options=sorted(NETWORKS))

    def decorator(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        NETWORKS[name] = constructor
        if extends is not None:
            EXTENDS[name] = extends
        return constructor

    return decorator


def as_patch_size(patch_size) -> tuple[int, int, int]:
    """Return ``patch_size`` as 3 positive ints (an int means a cube).

    Raises:
        ConfigError: naming ``patch_size`` when it is not 1 or 3 positive integers.
    """
    if isinstance(patch_size, bool):
        raise ConfigError("patch_size", patch_size, "must be an int or 3 ints >= 1")
    if isinstance(patch_size, int):
        patch_size = (patch_size,) * 3
    try:
        triple = tuple(patch_size)
    except TypeError:
        raise ConfigError("patch_size", patch_size, "must be an int or 3 ints >= 1") from None
    if len(triple) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in triple):
        raise ConfigError("patch_size", patch_size, "must be an int or 3 ints >= 1")
    return tuple(int(v) for v in triple)


def check_kwargs(network: str, kwargs: Mapping, target: Callable, reserved: Iterable[str] = ()) -> None:
    """Raise if ``kwargs`` holds a name that ``target`` does not accept or that is reserved.

    Args:
        network: registry name, used in the message.
        kwargs: the network keyword arguments from the job config.
        target: the class or function whose signature defines the valid names.
        reserved: names that :func:`build_network` sets itself (channels, sizes).

    Raises:
        ConfigError: with field ``network_kwargs.<name>`` and the valid names as options.
    """
    reserved = set(reserved)
    params = inspect.signature(target).parameters
    allowed = sorted(
        p for p, v in params.items()
        if p != "self" and p not in reserved and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)
    )
    for key, value in kwargs.items():
        if key in reserved:
            raise ConfigError(
                f"network_kwargs.{key}",
                value,
                f"{network}: set by build_network from in_channels/out_channels/patch_size; remove it",
            )
        if key not in allowed:
            raise ConfigError(f"network_kwargs.{key}", value, f"unknown argument of {network}", options=allowed)


def build_network(
    name: str,
    *,
    in_channels: int,
    out_channels: int,
    patch_size,
    seed: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build the network registered as ``name`` for ``patch_size`` crops.

    Args:
        name: registry name, one of :data:`NETWORKS`.
        in_channels: image channels (modalities), >= 1.
        out_channels: classes including background, >= 1.
        patch_size: training crop and sliding-window ROI in voxels, an int or 3 ints.
        seed: when given, initialise the weights from ``torch.manual_seed(seed)`` inside a forked
            RNG (the global RNG state is left untouched), so every process building the global
            model gets the same weights. Defaults to None (use the global RNG).
        kwargs: network-specific arguments (a preset's ``network_kwargs``).

    Returns:
        The network in train mode on the CPU, mapping ``(B, in_channels, X, Y, Z)`` float32 to
        logits ``(B, out_channels, X, Y, Z)``.

    Raises:
        ConfigError: for an unknown name (options listed), a bad channel count or patch size
            (field ``patch_size``, e.g. SwinUNETR needs every dim divisible by 32), or an unknown
            or invalid keyword argument (field ``network_kwargs.<name>``).
    """
    if name not in NETWORKS:
        raise ConfigError("network", name, "unknown network", options=sorted(NETWORKS))
    for field, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(field, value, "must be an integer >= 1")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError("seed", seed, "must be an integer or None")
    patch = as_patch_size(patch_size)
    constructor = NETWORKS[name]
    if seed is None:
        net = constructor(in_channels, out_channels, patch, **kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = constructor(in_channels, out_channels, patch, **kwargs)
    n_params = sum(p.numel() for p in net.parameters())
    logger.debug("built %s (%d parameters) for patch %s", name, n_params, patch)
    return net

