"""Third-party notices that say nothing about the task at hand, hidden where FedSegNet runs.

With pydicom installed (DICOM series input, ``fedsegnet.data.dicom``), MONAI builds its
nvImageCodec DICOM reader for every image loader, and each build logs and warns that the optional
GPU decoder is missing. :func:`quiet_gpu_codec_notice` hides exactly that notice; the data layer
calls it when it is imported (site logs, benchmarks), the command line before each command.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_gpu_codec_notice"]


def quiet_gpu_codec_notice() -> None:
    """Hide MONAI's "nvImageCodec is not available" log line and its UserWarning (idempotent)."""
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin", category=UserWarning)
