"""FedSegNet: federated 3D medical image segmentation on NVIDIA FLARE.

The algorithm packages (``data``, ``networks``, ``training``, ``compression``, ``aggregation``) are
plain torch/numpy/MONAI; only ``fedsegnet.flare`` imports nvflare.
"""

__version__ = "0.1.0"
