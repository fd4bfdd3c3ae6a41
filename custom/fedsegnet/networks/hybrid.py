"""Compact hybrid Transformer U-Net: a convolutional U-Net with a transformer bottleneck.

The FedSegNet paper's network is a 3D Transformer U-Net (trained federated with its Adaptive
Aggregation Mechanism and compressed updates; evaluated on BraTS, LiTS and ACDC): convolutions
extract local features, a transformer models long-range context between them, and a U-Net decoder
with skip connections restores full resolution. This module is the CPU-sized member of that
family, in the style of TransUNet (a CNN encoder whose deepest feature map is read as a token
sequence by a transformer):

    Chen J. et al., "TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation",
    arXiv:2102.04306, 2021.

The GPU presets use MONAI's SwinUNETR instead (see :mod:`fedsegnet.networks.monai_nets`).

Positional information comes from a depthwise 3x3x3 convolution added to the bottleneck features
before they are flattened into tokens (a "positional encoding generator", Chu X. et al.,
"Conditional Positional Encodings for Vision Transformers", ICLR 2023, arXiv:2102.10882). It has no
fixed token count, so the network accepts any input size that the encoder can downsample, which
sliding-window inference and patch-size changes need.

Every block is a MONAI block (``Convolution``, ``UnetResBlock``, ``TransformerBlock``,
``UnetUpBlock``, ``UnetOutBlock``). The layout, for ``channels=(c0, c1, c2)`` and an input of
spatial size ``S``::

    image (C_in, S)  --Convolution 3^3------------------------> stem  (c0 // 2, S)     --skip--+
    stem             --UnetResBlock stride 2-------------------> e0    (c0, S/2)       --skip-+|
    e0               --UnetResBlock stride 2-------------------> e1    (c1, S/4)       --skip+||
    e1               --UnetResBlock stride 2-------------------> e2    (c2, S/8)            |||
    e2 + DWConv(e2)  --tokens--> TransformerBlock x num_layers --> LayerNorm --> (c2, S/8)  |||
    UnetUpBlock (c2 -> c1) with skip e1 -------------------------------------> (c1, S/4) <-+||
    UnetUpBlock (c1 -> c0) with skip e0 -------------------------------------> (c0, S/2) <--+|
    transposed conv 2^3 (c0 -> c0 // 2), norm, act; concat stem; UnetOutBlock --> (C_out, S) <-+

Why the full-resolution level is thin: on a CPU, one 3^3 convolution with 16 -> 16 channels at
32^3 and batch 4 costs about 90-170 ms forward + backward on one thread (about as much as this
whole network), and a standard U-Net with channels (16, 32, 64) starting at full resolution
measured about 0.7 s per step. So the widest levels start at half resolution (``channels[0]`` is the width at ``S/2``) and full resolution keeps only a
single stem convolution, a learned 2x upsampling and a 1x1 output projection. The input must
therefore be divisible by ``2 ** len(channels)`` (8 for three levels).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import (
    Convolution,
    TransformerBlock,
    UnetOutBlock,
    UnetResBlock,
    UnetUpBlock,
)
from monai.networks.blocks.dynunet_block import get_conv_layer

from fedsegnet.errors import ConfigError, check_int, check_number
from fedsegnet.networks.registry import check_kwargs, register_network

logger = logging.getLogger(__name__)

__all__ = ["HybridTransformerUNet", "NORMS", "build_hybrid_family", "build_hybrid_unetr"]

#: Normalisation layers the hybrid network accepts.
NORMS = ("instance", "batch", "group")

_ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


class HybridTransformerUNet(nn.Module):
    """Compact 3D hybrid Transformer U-Net (convolutional encoder/decoder, transformer bottleneck).

    Args:
        in_channels: image channels (modalities), >= 1.
        out_channels: output classes including background, >= 1.
        channels: feature widths of the encoder levels at 1/2, 1/4, ... of the input size; the last
            one is the transformer's hidden size. At least 2 entries. The full-resolution stem has
            ``max(channels[0] // 2, 1)`` channels. Defaults to ``(16, 32, 64)``.
        num_heads: attention heads; ``channels[-1]`` must be divisible by it. Defaults to 4.
        num_layers: transformer blocks in the bottleneck, >= 0 (0 gives a plain residual U-Net, for
            ablations). Defaults to 2.
        mlp_ratio: transformer MLP width as a multiple of ``channels[-1]``, > 0. Defaults to 2.0.
        dropout: dropout rate in the transformer blocks (attention output and MLP), in [0, 1).
            Defaults to 0.0.
        norm: normalisation of the convolutional blocks, one of :data:`NORMS`. ``"group"`` uses
            ``min(8, gcd(widths))`` groups. Instance norm needs more than one voxel in the deepest
            feature map (input larger than ``2 ** len(channels)`` in at least one dimension).
            Defaults to ``"instance"``.

    Shapes:
        input ``(B, in_channels, X, Y, Z)`` float32 with X, Y, Z divisible by
        :attr:`size_divisor` ``= 2 ** len(channels)``; output logits
        ``(B, out_channels, X, Y, Z)`` float32 (no softmax).

    Raises:
        ConfigError: for an invalid argument, naming it, its value and the valid options.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64),
        num_heads: int = 4,
        num_layers: int = 2,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, 1)
        out_channels = check_int("out_channels", out_channels, 1)
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or len(channels) < 2:
            raise ConfigError("channels", channels, "must be a sequence of at least 2 integers >= 1")
        channels = tuple(check_int("channels", c, 1) for c in channels)
        num_heads = check_int("num_heads", num_heads, 1)
        if channels[-1] % num_heads:
            raise ConfigError(
                "num_heads", num_heads, f"must divide the transformer width channels[-1]={channels[-1]}"
            )
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
            raise ConfigError("num_layers", num_layers, "must be an integer >= 0")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
            raise ConfigError("mlp_ratio", mlp_ratio, "must be a number > 0")
        check_number("dropout", dropout, 0.0, 1.0)
        if norm not in NORMS:
            raise ConfigError("norm", norm, "unknown normalisation", options=NORMS)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.mlp_ratio = float(mlp_ratio)
        self.dropout = float(dropout)
        self.norm = norm
        self.stem_channels = max(channels[0] // 2, 1)
        self.size_divisor = 2 ** len(channels)

        widths = (self.stem_channels, *channels)
        if norm == "group":
            norm_name: str | tuple = ("group", {"num_groups": min(8, math.gcd(*widths))})
        elif norm == "instance":
            norm_name = ("instance", {"affine": True})
        else:
            norm_name = norm

        self.stem = Convolution(3, in_channels, self.stem_channels, kernel_size=3, norm=norm_name, act=_ACT)
        self.encoder = nn.ModuleList(
            UnetResBlock(3, widths[i], widths[i + 1], kernel_size=3, stride=2, norm_name=norm_name, act_name=_ACT)
            for i in range(len(channels))
        )
        width = channels[-1]
        self.pos_embed = self.position_encoding(width) if num_layers else None
        # MONAI's fused attention applies its dropout in eval mode too, so fuse only without dropout.
        self.transformer = nn.ModuleList(
            TransformerBlock(
                hidden_size=width,
                mlp_dim=max(int(round(width * self.mlp_ratio)), 1),
                num_heads=num_heads,
                dropout_rate=self.dropout,
                qkv_bias=True,
                use_flash_attention=self.dropout == 0.0,
            )
            for _ in range(num_layers)
        )
        for block in self.transformer:
            # MONAI builds this LayerNorm even without cross-attention and never uses it; drop it so
            # it is not trained, exchanged or flagged as an unused parameter.
            block.norm_cross_attn = nn.Identity()
        self.transformer_norm = nn.LayerNorm(width) if num_layers else nn.Identity()
        self.decoder = nn.ModuleList(
            UnetUpBlock(
                3,
                channels[i + 1],
                channels[i],
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name=norm_name,
                act_name=_ACT,
            )
            for i in reversed(range(len(channels) - 1))
        )
        self.upsample = get_conv_layer(
            3,
            channels[0],
            self.stem_channels,
            kernel_size=2,
            stride=2,
            act=_ACT,
            norm=norm_name,
            bias=False,
            conv_only=False,
            is_transposed=True,
        )
        self.head = UnetOutBlock(3, 2 * self.stem_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch of volumes.

        Args:
            x: ``(B, in_channels, X, Y, Z)`` float tensor, X, Y, Z divisible by
                :attr:`size_divisor`.

        Returns:
            ``(B, out_channels, X, Y, Z)`` logits.

        Raises:
            ValueError: when ``x`` is not 5D, has the wrong channel count or an indivisible size.
        """
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, X, Y, Z), got shape {tuple(x.shape)}"
            )
        if any(s % self.size_divisor for s in x.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} must be divisible by {self.size_divisor} "
                f"(2 ** len(channels), channels={self.channels})"
            )
        stem = self.stem(x)
        skips = []
        h = stem
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        if self.pos_embed is not None:
            h = h + self.pos_embed(h)
            b, c, *spatial = h.shape
            tokens = h.flatten(2).transpose(1, 2)  # (B, N, C)
            tokens = self.transformer_norm(self.mix_tokens(tokens))
            h = tokens.transpose(1, 2).reshape(b, c, *spatial)
        for block, skip in zip(self.decoder, reversed(skips[:-1])):
            h = block(h, skip)
        h = torch.cat([self.upsample(self.refine(h)), stem], dim=1)
        return self.head(h)

    def refine(self, h: torch.Tensor) -> torch.Tensor:
        """Hook on the decoder's output at half resolution, before the last upsampling (identity here).

        Args:
            h: ``(B, channels[0], X / 2, Y / 2, Z / 2)``.

        Returns:
            The same shape.
        """
        return h

    @staticmethod
    def position_encoding(width: int) -> nn.Conv3d:
        """The depthwise 3x3x3 convolution whose output is added to the bottleneck features.

        Args:
            width: bottleneck channels ``channels[-1]``.

        Returns:
            ``nn.Conv3d(width, width, 3, padding=1, groups=width)``.
        """
        return nn.Conv3d(width, width, kernel_size=3, padding=1, groups=width)

    def mix_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the bottleneck tokens through the transformer blocks (before the final LayerNorm).

        Subclasses extend the bottleneck here (e.g. :class:`~fedsegnet.networks.dca.DCATransformerUNet`
        appends its cross-attention blocks).

        Args:
            tokens: ``(B, N, channels[-1])``, N the voxel count of the deepest feature map.

        Returns:
            ``(B, N, channels[-1])``.
        """
        for block in self.transformer:
            tokens = block(tokens)
        return tokens


@register_network("hybrid_unetr")
def build_hybrid_unetr(
    in_channels: int, out_channels: int, patch_size: tuple[int, int, int], **kwargs
) -> HybridTransformerUNet:
    """:class:`HybridTransformerUNet` for ``patch_size`` crops.

    Args:
        in_channels: image channels.
        out_channels: classes including background.
        patch_size: crop size; every dim divisible by ``2 ** len(channels)``, and with instance
            norm at least one dim larger than that (the deepest map needs more than one voxel).
        kwargs: :class:`HybridTransformerUNet` arguments except ``in_channels`` and
            ``out_channels``; lists (from JSON) are accepted for ``channels``.

    Returns:
        The network.

    Raises:
        ConfigError: on ``patch_size``, ``network_kwargs.<name>`` or the argument at fault.
    """
    return build_hybrid_family(
        "hybrid_unetr", HybridTransformerUNet, in_channels, out_channels, patch_size, **kwargs
    )


def build_hybrid_family(
    name: str,
    cls: type[HybridTransformerUNet],
    in_channels: int,
    out_channels: int,
    patch_size: tuple[int, int, int],
    /,
    **kwargs,
) -> HybridTransformerUNet:
    """Build ``cls`` (:class:`HybridTransformerUNet` or a subclass) with the registry's checks.

    The one place the checks of the hybrid family's registry builders live: keyword arguments
    against ``cls``'s signature, JSON lists for ``channels``, and ``patch_size`` against the
    encoder's downsampling.

    Args:
        name: registry name, used in messages (e.g. ``"hybrid_unetr"``).
        cls: the class to build.
        in_channels: image channels.
        out_channels: classes including background.
        patch_size: crop size; every dim divisible by ``2 ** len(channels)``, and with instance
            norm at least one dim larger than that (the deepest map needs more than one voxel).
        kwargs: ``cls`` arguments except ``in_channels`` and ``out_channels``; lists (from JSON)
            are accepted for ``channels``.

    Returns:
        The network.

    Raises:
        ConfigError: on ``patch_size``, ``network_kwargs.<name>`` or the argument at fault.
    """
    check_kwargs(name, kwargs, cls, reserved=("in_channels", "out_channels"))
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("channels"), list):
        kwargs["channels"] = tuple(kwargs["channels"])
    net = cls(in_channels, out_channels, **kwargs)
    divisor = net.size_divisor
    if any(d % divisor for d in patch_size):
        raise ConfigError(
            "patch_size",
            patch_size,
            f"{name} needs every dim divisible by {divisor} (2 ** len(channels), channels={net.channels})",
        )
    if net.norm == "instance" and math.prod(d // divisor for d in patch_size) == 1:
        raise ConfigError(
            "patch_size",
            patch_size,
            f"{name} with instance norm needs a deepest feature map (patch_size / {divisor}) of more "
            "than one voxel; use a larger patch_size or fewer channels levels",
        )
    return net
