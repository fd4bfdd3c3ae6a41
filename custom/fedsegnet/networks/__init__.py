"""Segmentation networks, picked by name from job configs.

:data:`NETWORKS` maps a registry name to a constructor
``(in_channels, out_channels, patch_size, **kwargs) -> torch.nn.Module``; :func:`build_network`
validates the name, the patch size and the keyword arguments and builds the network. Registered:

- ``hybrid_unetr``: :class:`~fedsegnet.networks.hybrid.HybridTransformerUNet`, the compact
  hybrid Transformer U-Net for CPU runs (TransUNet-style, Chen et al. 2021; FedSegNet's
  Transformer U-Net family).
- ``swin_unetr``: MONAI ``SwinUNETR`` (Hatamizadeh et al. 2022), the GPU presets' Transformer U-Net.
  Every ``patch_size`` dim must be divisible by 32, and 32^3 with instance norm is rejected (its
  deepest feature map is 1x1x1, where instance norm fails in training and inference; see
  :mod:`fedsegnet.networks.monai_nets`).
- ``unetr``: MONAI ``UNETR`` (Hatamizadeh et al., WACV 2022), ``img_size = patch_size``.
- ``segresnet``: MONAI ``SegResNet`` (Myronenko 2019), a CNN baseline.

Every network maps ``(B, in_channels, X, Y, Z)`` float32 to logits ``(B, out_channels, X, Y, Z)``.
"""

from fedsegnet.networks.registry import NETWORKS, build_network, register_network
from fedsegnet.networks import monai_nets as _monai_nets  # noqa: F401  (registers MONAI networks)
from fedsegnet.networks.hybrid import HybridTransformerUNet

__all__ = ["NETWORKS", "build_network", "register_network", "HybridTransformerUNet"]
