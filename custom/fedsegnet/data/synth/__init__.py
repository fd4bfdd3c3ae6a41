"""Synthetic multi-site 3D segmentation data: the project's embedded default dataset.

Every command, test and demo of FedSegNet runs on data made here, so it is built to behave like a
real (noisy, low-dose CT or fast MRI) organ-and-lesion segmentation task in the ways that matter for
federated learning research: a body holding an organ (class 1) and lesions (class 2), confounders
that no intensity window separates from the classes, and a noisy acquisition
(:mod:`~fedsegnet.data.synth.phantom`).

Difficulty, measured (2 sites x 12 cases + 8 test cases at 48^3, seeds 0-2): the per-class
intensity-window baseline (:func:`fedsegnet.data.baseline.threshold_baseline`) reaches a mean
foreground Dice of 0.39-0.42, while a MONAI ``UNet(channels=(16, 32, 64), strides=(2, 2))`` trained
with DiceCE for 300 steps of 4 crops of 32^3 (one CPU thread, about a minute) reaches 0.81-0.86.

Non-IID sites (FedMix, Wicaksana et al. 2022; FedOAP; the FL-for-segmentation review) come from
per-site *styles* (scanner intensity scale/shift, noise, bias field, structure size, lesion load;
see :data:`STYLE_DEFAULTS`), per-site *label corruption* (noisy, eroded/dilated or shifted
annotations, a missing class; see :func:`corrupt_label`) and per-site *label kinds* (boxes, tags,
partial label maps; see :func:`weak_label_entry`). The shared test set always uses the neutral
style and clean labels. In the **organs scenario** (``scenario="organs"``; personalised FL,
FedOAP) sites scan *different organs* (:data:`HOSTS`) and each keeps its own labelled held-out
test cases.

Modules, one job each:

- :mod:`~fedsegnet.data.synth.dataset`: :func:`synthesize` (site folders, test set, ``dataset.json``)
  and :data:`SCENARIOS`.
- :mod:`~fedsegnet.data.synth.options`: :func:`parse_site_style`, :func:`parse_corrupt`,
  :func:`parse_label_kinds` (the command line's ``SITE:...`` specs).
- :mod:`~fedsegnet.data.synth.styles`: :data:`STYLE_DEFAULTS`, :data:`SITE_VARIATION`, :func:`site_style`.
- :mod:`~fedsegnet.data.synth.geometry`: shape primitives (coordinate grid, smooth fields, ellipsoids, tubes).
- :mod:`~fedsegnet.data.synth.phantom`: one case of the default scenario; :data:`LABELS`.
- :mod:`~fedsegnet.data.synth.organs`: the ``organs`` scenario's host types (:data:`HOSTS`).
- :mod:`~fedsegnet.data.synth.corrupt`: :data:`CORRUPTION_KINDS`, :func:`corrupt_label`.
- :mod:`~fedsegnet.data.synth.annotations`: :func:`weak_label_entry` (boxes, tags, partial maps).
- :mod:`~fedsegnet.data.synth.writer`: NIfTI files, box sidecars and affines in the MSD layout.

Reorienting the stored volumes (``orientation=``) uses :mod:`fedsegnet.data.orientation`.
"""

from fedsegnet.data.synth.annotations import weak_label_entry
from fedsegnet.data.synth.corrupt import CORRUPTION_KINDS, corrupt_label
from fedsegnet.data.synth.dataset import SCENARIOS, synthesize
from fedsegnet.data.synth.options import parse_corrupt, parse_label_kinds, parse_site_style
from fedsegnet.data.synth.organs import HOSTS
from fedsegnet.data.synth.phantom import LABELS
from fedsegnet.data.synth.styles import SITE_VARIATION, STYLE_DEFAULTS, site_style

__all__ = [
    "CORRUPTION_KINDS",
    "HOSTS",
    "LABELS",
    "SCENARIOS",
    "SITE_VARIATION",
    "STYLE_DEFAULTS",
    "corrupt_label",
    "parse_corrupt",
    "parse_label_kinds",
    "parse_site_style",
    "site_style",
    "synthesize",
    "weak_label_entry",
]
