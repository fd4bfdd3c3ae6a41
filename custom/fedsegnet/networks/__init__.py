"""Segmentation networks, picked by name from job configs.

:data:`NETWORKS` maps a registry name to a constructor
``(in_channels, out_channels, patch_size, **kwargs) -> torch.nn.Module``; :func:`build_network`
validates the name, the patch size and the keyword arguments and builds the network. Registered:

- ``hybrid_unetr``: :class:`~fedsegnet.networks.hybrid.HybridTransformerUNet`, the compact
  hybrid Transformer U-Net for CPU runs (TransUNet-style, Chen et al. 2021; FedSegNet's
  Transformer U-Net family).
- ``dca_unetr``: :class:`~fedsegnet.networks.dca.DCATransformerUNet`, ``hybrid_unetr`` with
  FedOAP's decoupled cross-attention in the bottleneck (personal queries, shared keys/values;
  Tashdeed et al. 2025); :meth:`~fedsegnet.networks.dca.DCATransformerUNet.personal_patterns`
  names the parameters a site keeps.
- ``swin_unetr``: MONAI ``SwinUNETR`` (Hatamizadeh et al. 2022), the GPU presets' Transformer U-Net.
  Every ``patch_size`` dim must be divisible by 32, and 32^3 with instance norm is rejected (its
  deepest feature map is 1x1x1, where instance norm fails in training and inference; see
  :mod:`fedsegnet.networks.monai_nets`).
- ``unetr``: MONAI ``UNETR`` (Hatamizadeh et al., WACV 2022), ``img_size = patch_size``.
- ``segresnet``: MONAI ``SegResNet`` (Myronenko 2019), a CNN baseline.

Every network maps ``(B, in_channels, X, Y, Z)`` float32 to logits ``(B, out_channels, X, Y, Z)``.

:mod:`~fedsegnet.networks.personal` splits any network's state-dict keys into shared and personal
ones: :func:`split_personal` by name patterns, :func:`norm_keys` (FedBN) by layer type.
"""

from fedsegnet.networks.registry import NETWORKS, build_network, register_network
from fedsegnet.networks import monai_nets as _monai_nets  # noqa: F401  (registers MONAI networks)
from fedsegnet.networks.hybrid import HybridTransformerUNet
from fedsegnet.networks.dca import DCATransformerUNet, DecoupledCrossAttention
from fedsegnet.networks.personal import NORM_PATTERNS, norm_keys, split_personal

__all__ = [
    "NETWORKS",
    "NORM_PATTERNS",
    "build_network",
    "register_network",
    "HybridTransformerUNet",
    "DCATransformerUNet",
    "DecoupledCrossAttention",
    "norm_keys",
    "split_personal",
]
