"""MONAI networks in the registry: SwinUNETR, UNETR and SegResNet.

Papers:
    - SwinUNETR: Hatamizadeh A. et al., "Swin UNETR: Swin Transformers for Semantic Segmentation
      of Brain Tumors in MRI Images", BrainLes (MICCAI workshop) 2021, LNCS 12962, 2022.
      FedSegNet's GPU presets use it as the paper's Transformer U-Net.
    - UNETR: Hatamizadeh A. et al., "UNETR: Transformers for 3D Medical Image Segmentation",
      WACV 2022.
    - SegResNet: Myronenko A., "3D MRI brain tumor segmentation using autoencoder
      regularization", BrainLes 2018, LNCS 11384, 2019 (CNN baseline).

Size rules checked here, before any weights are allocated (MONAI 1.6.1):
    - SwinUNETR embeds 2^3 patches and merges patches 4 more times, so every ``patch_size`` dim
      must be divisible by 2**5 = 32. MONAI 1.6 removed the ``img_size`` argument: the network
      takes any divisible size, and ``patch_size`` here is only checked. SwinUNETR's own
      ``patch_size`` argument (the 2^3 embedding) is not exposed.
    - SwinUNETR with ``norm_name="instance"`` (the default) cannot run at 32^3: the deepest
      feature map (``encoder10`` on the 1/32 Swin stage) is 1x1x1, and ``InstanceNorm3d`` raises
      ``ValueError: Expected more than 1 spatial element when training``. Instance norm keeps no
      running statistics, so the same error is raised in eval mode too, i.e. in sliding-window
      inference with a 32^3 ROI. Verified with MONAI 1.6.1 / torch 2.13: 32x32x32 fails in
      train and eval; 32x32x64 and 64^3 work; ``("group", {"num_groups": 4})`` and ``"batch"``
      work at 32^3 (batch norm still fails in training when the batch has a single crop, since
      it then sees one value per channel). :func:`build_network` rejects this case with a
      :class:`~fedsegnet.errors.ConfigError` on ``patch_size``.
    - UNETR embeds 16^3 patches: every dim must be divisible by 16 (MONAI accepts other sizes at
      construction and then fails in the decoder's concatenation).
    - SegResNet downsamples ``len(blocks_down) - 1`` times: every dim must be divisible by
      ``2 ** (len(blocks_down) - 1)`` (8 by default).
"""

from __future__ import annotations

import math

import torch.nn as nn
from monai.networks.nets import SegResNet, SwinUNETR, UNETR

from fedsegnet.errors import ConfigError
from fedsegnet.networks.registry import check_kwargs, register_network

__all__ = ["build_swin_unetr", "build_unetr", "build_segresnet"]


def _norm_type(norm) -> str:
    if isinstance(norm, (tuple, list)) and norm:
        norm = norm[0]
    return str(norm).lower()


def _tuples(kwargs: dict) -> dict:
    """Copy of ``kwargs`` with lists (from JSON) turned into tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def _construct(name: str, cls, kwargs: dict, **fixed) -> nn.Module:
    try:
        return cls(**fixed, **kwargs)
    except (ValueError, TypeError, NotImplementedError, KeyError, AssertionError) as err:
        raise ConfigError("network_kwargs", kwargs, f"{name} rejected the settings: {err}") from err


def _check_divisible(name: str, patch_size: tuple[int, int, int], divisor: int, why: str) -> None:
    if any(d % divisor for d in patch_size):
        raise ConfigError("patch_size", patch_size, f"{name} needs every dim divisible by {divisor} ({why})")


@register_network("swin_unetr")
def build_swin_unetr(in_channels: int, out_channels: int, patch_size: tuple[int, int, int], **kwargs) -> nn.Module:
    """MONAI ``SwinUNETR`` (3D) for ``patch_size`` crops.

    Args:
        in_channels: image channels.
        out_channels: classes including background.
        patch_size: crop size; every dim divisible by 32, and not 32^3 with instance norm.
        kwargs: ``SwinUNETR`` arguments except ``in_channels``, ``out_channels``,
            ``spatial_dims`` and ``patch_size`` (e.g. ``feature_size`` divisible by 12,
            ``depths``, ``num_heads``, ``window_size``, ``norm_name``, ``use_checkpoint``,
            ``use_v2``).

    Returns:
        The network.

    Raises:
        ConfigError: on ``patch_size`` for an indivisible size or the 32^3 instance-norm case;
            on ``network_kwargs.<name>`` for unknown arguments; on ``network_kwargs`` when
            MONAI rejects a value.
    """
    name = "swin_unetr"
    check_kwargs(name, kwargs, SwinUNETR, reserved=("in_channels", "out_channels", "spatial_dims", "patch_size"))
    _check_divisible(name, patch_size, 32, "2^3 patch embedding then 4 patch mergings: 2**5")
    norm = kwargs.get("norm_name", "instance")
    if _norm_type(norm).startswith("instance") and math.prod(d // 32 for d in patch_size) == 1:
        raise ConfigError(
            "patch_size",
            patch_size,
            f"SwinUNETR with norm_name={norm!r} fails at this size: its deepest feature map "
            "(patch_size / 32) is 1x1x1 and instance norm needs more than one voxel, in training "
            "and in inference; use a dim >= 64 (e.g. 64 or 96) or set network_kwargs "
            "norm_name=['group', {'num_groups': 4}]",
        )
    return _construct(name, SwinUNETR, _tuples(kwargs), in_channels=in_channels, out_channels=out_channels, spatial_dims=3)


@register_network("unetr")
def build_unetr(in_channels: int, out_channels: int, patch_size: tuple[int, int, int], **kwargs) -> nn.Module:
    """MONAI ``UNETR`` (3D, ``img_size=patch_size``).

    Args:
        in_channels: image channels.
        out_channels: classes including background.
        patch_size: crop size and the ViT's ``img_size``; every dim divisible by 16.
        kwargs: ``UNETR`` arguments except ``in_channels``, ``out_channels``, ``img_size`` and
            ``spatial_dims`` (e.g. ``feature_size``, ``hidden_size``, ``mlp_dim``, ``num_heads``
            with ``hidden_size`` divisible by ``num_heads``).

    Returns:
        The network. It only accepts inputs of exactly ``patch_size`` (fixed position embedding),
        which sliding-window inference with ``roi_size=patch_size`` guarantees.

    Raises:
        ConfigError: on ``patch_size``, ``network_kwargs.<name>`` or ``network_kwargs``.
    """
    name = "unetr"
    check_kwargs(name, kwargs, UNETR, reserved=("in_channels", "out_channels", "img_size", "spatial_dims"))
    _check_divisible(name, patch_size, 16, "16^3 ViT patch embedding")
    return _construct(
        name, UNETR, _tuples(kwargs), in_channels=in_channels, out_channels=out_channels, img_size=patch_size, spatial_dims=3
    )


@register_network("segresnet")
def build_segresnet(in_channels: int, out_channels: int, patch_size: tuple[int, int, int], **kwargs) -> nn.Module:
    """MONAI ``SegResNet`` (3D), the CNN baseline.

    Args:
        in_channels: image channels.
        out_channels: classes including background.
        patch_size: crop size; every dim divisible by ``2 ** (len(blocks_down) - 1)``.
        kwargs: ``SegResNet`` arguments except ``in_channels``, ``out_channels`` and
            ``spatial_dims`` (e.g. ``init_filters`` divisible by the group-norm ``num_groups``,
            ``blocks_down``, ``blocks_up``, ``dropout_prob``).

    Returns:
        The network.

    Raises:
        ConfigError: on ``patch_size``, ``network_kwargs.<name>`` or ``network_kwargs``.
    """
    name = "segresnet"
    check_kwargs(name, kwargs, SegResNet, reserved=("in_channels", "out_channels", "spatial_dims"))
    kwargs = _tuples(kwargs)
    blocks_down = kwargs.get("blocks_down", (1, 2, 2, 4))
    try:
        levels = len(blocks_down)
    except TypeError:
        raise ConfigError("network_kwargs.blocks_down", blocks_down, "must be a sequence of ints") from None
    _check_divisible(name, patch_size, 2 ** max(levels - 1, 0), f"{levels - 1} stride-2 downsamplings")
    return _construct(name, SegResNet, kwargs, in_channels=in_channels, out_channels=out_channels, spatial_dims=3)
