"""Site data: the MSD ``dataset.json`` contract, preflight checks, MONAI transforms, synthetic sites.

- :mod:`~fedsegnet.data.datalist`: :class:`SiteDatalist`, :func:`load_datalist`, :func:`write_datalist`.
- :mod:`~fedsegnet.data.preflight`: :func:`preflight` (every file problem of a site in one error).
- :mod:`~fedsegnet.data.transforms`: MONAI transforms, :func:`build_train_loader`,
  :func:`build_eval_dataset`, :func:`case_spacing`, :func:`infinite_batches` (imports torch/MONAI,
  loaded on first use).
- :mod:`~fedsegnet.data.synth`: :func:`synthesize` (the embedded synthetic multi-site dataset),
  :func:`parse_corrupt`, :func:`parse_site_style`.
- :mod:`~fedsegnet.data.orientation`: :func:`reorient_nifti` (voxel orientation of NIfTI files).
- :mod:`~fedsegnet.data.baseline`: :func:`threshold_baseline`.
"""

from fedsegnet.data.baseline import threshold_baseline
from fedsegnet.data.datalist import LABEL_KINDS, SiteDatalist, load_datalist, split_training, write_datalist
from fedsegnet.data.preflight import preflight
from fedsegnet.data.orientation import reorient_nifti
from fedsegnet.data.synth import CORRUPTION_KINDS, parse_corrupt, parse_site_style, synthesize

_TRANSFORMS = (
    "build_eval_dataset",
    "build_train_loader",
    "case_spacing",
    "eval_transforms",
    "infinite_batches",
    "train_transforms",
)

__all__ = [
    "CORRUPTION_KINDS",
    "LABEL_KINDS",
    "SiteDatalist",
    "load_datalist",
    "parse_corrupt",
    "parse_site_style",
    "preflight",
    "reorient_nifti",
    "split_training",
    "synthesize",
    "threshold_baseline",
    "write_datalist",
    *_TRANSFORMS,
]


def __getattr__(name):
    # torch/MONAI load only when a transform is asked for (the CLI's `data` commands stay fast)
    if name in _TRANSFORMS:
        from fedsegnet.data import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
