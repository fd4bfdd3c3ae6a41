"""Decoupled cross-attention (DCA): personal queries over a globally shared key/value space.

FedOAP personalises a federated segmentation network by *decoupling* attention: each site keeps
its own query projection, while the key/value side is aggregated across all sites, so every site
asks its own questions of one shared representation that all sites (all organs) built together:

    Tashdeed I., Rahman M. A., Islam S., Hossain M. A., "FedOAP: Organ Agnostic Tumor Segmentation
    Using Personalized Federated Learning", arXiv:2511.18847, 2025.

:class:`DecoupledCrossAttention` is one such block and :class:`DCATransformerUNet` appends
``dca_layers`` of them to the bottleneck of :class:`~fedsegnet.networks.hybrid.HybridTransformerUNet`
(after its transformer blocks, before its final LayerNorm), plus FedOAP's other personal part, a
site-specific *spatial adapter* (a small residual convolution block on the decoder's output,
zero-initialised); registered as ``dca_unetr``.

Where keys and values come from. Sites cannot exchange features, only parameters, so "key/value
pairs aggregated from all sites" are realised as parameters the server averages: ``num_memory``
learned *memory tokens* (global prototypes, shared) are concatenated with the site's own
bottleneck tokens, and both go through the shared ``k_proj``/``v_proj``. The prototypes carry what
other sites taught the model (the cross-site, cross-organ context no local crop holds); the local
tokens keep the within-volume long-range context, so a site whose prototypes do not help can attend
to its own features and the block degrades to self-attention with personal queries rather than to
noise. Because ``k_proj``/``v_proj`` are shared, a site's tokens and the prototypes are embedded in
the one key/value space every site trains. ``num_memory=0`` gives tokens-only keys/values.

What is personal, and why (:data:`DecoupledCrossAttention.PERSONAL`):

- ``q_proj`` (personal): the question a site asks; the FedOAP split.
- ``norm_q`` (personal): the pre-norm of the query path; its affine scale acts as a per-site,
  per-channel attention temperature, and site feature statistics are what FedBN keeps local.
- ``norm_kv`` (personal): the pre-norm of the site's tokens before the *shared* projections; a
  site-specific affine maps its scanner's feature statistics into the shared key/value space
  (FedBN's argument: local norms, shared weights). The memory tokens bypass it, so the global
  prototypes stay global.
- ``k_proj``, ``v_proj``, ``memory`` (shared): the key/value space itself.
- ``out_proj`` (shared): it writes the attended values back into the residual stream that the shared
  decoder reads; keeping it shared keeps that write in the global coordinate system, and the
  personal part small (``2 * C`` norm parameters + ``C * C + C`` query parameters per block), which
  matters for sites with few cases.

The whole personal part of the ``dca`` personalisation (:meth:`DCATransformerUNet.personal_keys`)
adds the spatial adapter and every normalisation layer: with queries alone (a first version) the
network served sites whose organs look opposite (a host darker than the body at one site, brighter
at the others) no better than FedAvg's global model on the ``organs`` benchmark
(``docs/personalization.md``), because nothing that sees intensities was the site's own.

Cost: at a 32^3 crop and ``channels[-1] = 64`` the bottleneck holds 64 tokens and attends over
64 + 16 keys, negligible next to the convolutions. The adapter works at half resolution: PyTorch's
depthwise 3D convolution is slow on CPUs, and at full resolution it made a training step of the
``tiny`` preset much slower. A second DCA level in the decoder was left out: its 512
tokens of width 32 would add personal parameters where features are local (texture, edges) rather
than organ-level, for cost and no argued benefit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fedsegnet.errors import ConfigError, check_int, check_number
from fedsegnet.networks.hybrid import HybridTransformerUNet, build_hybrid_family
from fedsegnet.networks.personal import norm_keys, split_personal
from fedsegnet.networks.registry import register_network

logger = logging.getLogger(__name__)

__all__ = ["DecoupledCrossAttention", "DCATransformerUNet", "build_dca_unetr"]


class DecoupledCrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention with personal queries and shared keys/values, residual.

    ``out = x + out_proj(MHA(q_proj(norm_q(x)), k_proj(ctx), v_proj(ctx)))`` with
    ``ctx = concat(memory, norm_kv(x))`` along the token axis (``memory`` expanded over the batch;
    ``ctx = norm_kv(x)`` when ``num_memory == 0``). Attention is
    :func:`torch.nn.functional.scaled_dot_product_attention`. See the module docstring for which
    parts are personal and why.

    Args:
        dim: token width C, >= 1.
        num_heads: attention heads; must divide ``dim``. Defaults to 4.
        num_memory: shared learned memory tokens (global prototypes) added to the keys/values, >= 0.
            Defaults to 16.
        dropout: dropout on the attention weights and the output, training only, in [0, 1).
            Defaults to 0.0.
        qkv_bias: bias in the query/key/value projections. Defaults to True.

    Shapes:
        input ``(B, N, dim)`` float; output ``(B, N, dim)``.

    Raises:
        ConfigError: for an invalid argument, naming it and its value.
    """

    #: Submodule names whose parameters stay at the site.
    PERSONAL: tuple[str, ...] = ("q_proj", "norm_q", "norm_kv")
    #: Submodule / parameter names that are aggregated across sites.
    SHARED: tuple[str, ...] = ("k_proj", "v_proj", "out_proj", "memory")

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        num_memory: int = 16,
        dropout: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        dim = check_int("dim", dim, 1)
        num_heads = check_int("num_heads", num_heads, 1)
        if dim % num_heads:
            raise ConfigError("num_heads", num_heads, f"must divide the token width dim={dim}")
        num_memory = check_int("num_memory", num_memory, 0)
        check_number("dropout", dropout, 0.0, 1.0)
        if not isinstance(qkv_bias, bool):
            raise ConfigError("qkv_bias", qkv_bias, "must be True or False")
        self.dim = dim
        self.num_heads = num_heads
        self.num_memory = num_memory
        self.dropout = float(dropout)
        self.qkv_bias = qkv_bias

        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim)
        # Unit scale, like the LayerNorm-ed tokens they are compared with in the shared K/V input.
        self.memory = nn.Parameter(torch.randn(num_memory, dim)) if num_memory else None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend from the site's tokens to the shared key/value space.

        Args:
            x: ``(B, N, dim)`` tokens.

        Returns:
            ``(B, N, dim)``: ``x`` plus the attended values.

        Raises:
            ValueError: when ``x`` is not ``(B, N, dim)``.
        """
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected tokens (B, N, {self.dim}), got shape {tuple(x.shape)}")
        b, n, c = x.shape
        context = self.norm_kv(x)
        if self.memory is not None:
            memory = self.memory.to(context.dtype).unsqueeze(0).expand(b, -1, -1)
            context = torch.cat([memory, context], dim=1)
        q = self._heads(self.q_proj(self.norm_q(x)))
        k = self._heads(self.k_proj(context))
        v = self._heads(self.v_proj(context))
        p = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, heads, N, C / heads)
        out = self.out_proj(attended.transpose(1, 2).reshape(b, n, c))
        return x + F.dropout(out, p=p, training=self.training)


class DCATransformerUNet(HybridTransformerUNet):
    """:class:`~fedsegnet.networks.hybrid.HybridTransformerUNet` with decoupled cross-attention.

    ``dca_layers`` :class:`DecoupledCrossAttention` blocks (``self.dca``) follow the transformer
    blocks in the bottleneck, before its final LayerNorm. Every other layer, its name and (for the
    same seed) its initial weights are the parent's, so a ``hybrid_unetr`` checkpoint loads with
    ``strict=False`` and ``dca_layers=0, adapter=False`` is exactly ``hybrid_unetr``.

    Parameter overhead per block: ``4 * C**2 + 8 * C + num_memory * C`` for ``C = channels[-1]``
    (with ``qkv_bias``); at ``channels=(16, 32, 64)`` and 16 memory tokens that is 17,920, of which
    4,416 personal (``q_proj`` and the two norms).

    Args:
        in_channels: image channels (modalities), >= 1.
        out_channels: output classes including background, >= 1.
        channels: encoder widths, see the parent. Defaults to ``(16, 32, 64)``.
        num_heads: heads of the transformer and DCA blocks; must divide ``channels[-1]``.
            Defaults to 4.
        num_layers: transformer (self-attention) blocks before the DCA blocks, >= 0. Defaults to 2.
        mlp_ratio: transformer MLP width as a multiple of ``channels[-1]``, > 0. Defaults to 2.0.
        dropout: dropout of the transformer and DCA blocks, in [0, 1). Defaults to 0.0.
        norm: normalisation of the convolutional blocks, one of
            :data:`~fedsegnet.networks.hybrid.NORMS`. Defaults to ``"instance"``.
        dca_layers: DCA blocks, >= 0 (0 gives the parent network). Defaults to 1.
        dca_memory: shared memory tokens per DCA block, >= 0 (0: keys/values from the site's
            tokens only). Defaults to 16.
        adapter: add the site's spatial adapter before the output block (personal, starts as the
            identity). Defaults to True.

    Shapes:
        input ``(B, in_channels, X, Y, Z)`` float32 with X, Y, Z divisible by
        :attr:`size_divisor`; output logits ``(B, out_channels, X, Y, Z)``.

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
        dca_layers: int = 1,
        dca_memory: int = 16,
        adapter: bool = True,
    ) -> None:
        if not isinstance(adapter, bool):
            raise ConfigError("adapter", adapter, "must be true or false")
        dca_layers = check_int("dca_layers", dca_layers, 0)
        dca_memory = check_int("dca_memory", dca_memory, 0)
        super().__init__(
            in_channels,
            out_channels,
            channels=channels,
            num_heads=num_heads,
            num_layers=num_layers,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            norm=norm,
        )
        self.dca_layers = dca_layers
        self.dca_memory = dca_memory
        width = self.channels[-1]
        if dca_layers and self.pos_embed is None:  # num_layers=0: the parent built no token path
            self.pos_embed = self.position_encoding(width)
            self.transformer_norm = nn.LayerNorm(width)
        self.dca = nn.ModuleList(
            DecoupledCrossAttention(width, self.num_heads, num_memory=dca_memory, dropout=self.dropout)
            for _ in range(dca_layers)
        )
        self.adapter = None
        if adapter:
            # the site's spatial adapter: a residual depthwise 3^3 + pointwise block on the decoder's
            # half-resolution output (at full resolution it tripled a CPU step), its last layer
            # zero-initialised so it starts as the identity
            c = self.channels[0]
            self.adapter = nn.Sequential(
                nn.Conv3d(c, c, kernel_size=3, padding=1, groups=c), nn.LeakyReLU(0.01), nn.Conv3d(c, c, kernel_size=1)
            )
            nn.init.zeros_(self.adapter[2].weight)
            nn.init.zeros_(self.adapter[2].bias)

    def refine(self, h: torch.Tensor) -> torch.Tensor:
        """The site's spatial adapter, ``h + adapter(h)`` (identity without it)."""
        return h if self.adapter is None else h + self.adapter(h)

    def mix_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Transformer blocks, then the DCA blocks.

        Args:
            tokens: ``(B, N, channels[-1])``.

        Returns:
            ``(B, N, channels[-1])``.
        """
        tokens = super().mix_tokens(tokens)
        for block in self.dca:
            tokens = block(tokens)
        return tokens

    def personal_patterns(self) -> tuple[str, ...]:
        """fnmatch-style patterns of the parameter names that stay at the site.

        For :func:`fedsegnet.networks.personal.split_personal`; each matches at least one key of
        :meth:`state_dict` (none are returned when ``dca_layers == 0``).

        Returns:
            e.g. ``("dca.*.q_proj.*", "dca.*.norm_q.*", "dca.*.norm_kv.*")``.
        """
        if not self.dca_layers:
            return ()
        patterns = tuple(f"dca.*.{name}.*" for name in DecoupledCrossAttention.PERSONAL)
        return patterns + (("adapter.*",) if self.adapter is not None else ())

    def personal_keys(self) -> list[str]:
        """Every state-dict key that stays at the site under the ``dca`` personalisation.

        The DCA blocks' queries and norms and the spatial adapter (:meth:`personal_patterns`), and
        every normalisation layer of the network (found by type: FedBN's finding that a site's
        feature statistics are what differs between scanners holds for organs too; FedOAP's
        personal part is the queries plus a site-specific spatial adapter).

        Returns:
            Sorted keys; empty when ``dca_layers == 0``.
        """
        patterns = self.personal_patterns()
        if not patterns:
            return []
        keys = list(self.state_dict())
        return sorted(set(split_personal(keys, patterns)[1]) | set(norm_keys(self)))


@register_network("dca_unetr", extends="hybrid_unetr")
def build_dca_unetr(
    in_channels: int, out_channels: int, patch_size: tuple[int, int, int], **kwargs
) -> DCATransformerUNet:
    """:class:`DCATransformerUNet` for ``patch_size`` crops, with ``hybrid_unetr``'s checks.

    Args:
        in_channels: image channels.
        out_channels: classes including background.
        patch_size: crop size; every dim divisible by ``2 ** len(channels)``, and with instance
            norm at least one dim larger than that.
        kwargs: :class:`DCATransformerUNet` arguments except ``in_channels`` and
            ``out_channels``; lists (from JSON) are accepted for ``channels``.

    Returns:
        The network.

    Raises:
        ConfigError: on ``patch_size``, ``network_kwargs.<name>`` or the argument at fault.
    """
    return build_hybrid_family("dca_unetr", DCATransformerUNet, in_channels, out_channels, patch_size, **kwargs)
