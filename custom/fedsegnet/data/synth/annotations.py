"""The weaker annotation a synthetic site keeps of a true label map: boxes, tags or a partial map.

Mixed supervision (FedMix, Wicaksana et al. 2022): a ``box``, ``tag`` or ``partial`` site keeps only
what its annotators would draw, derived here from the true mask, in the sidecar and
``dataset.json`` forms :mod:`fedsegnet.data.weak` reads.
"""

from __future__ import annotations

import numpy as np

from fedsegnet.data.synth.phantom import LABELS

__all__ = ["weak_label_entry"]


def weak_label_entry(kind: str, label: np.ndarray, affine: np.ndarray, annotated=()) -> dict:
    """The weaker label a ``kind`` site keeps of a true label map (stored grid and affine).

    ``box``: ``{"boxes": {"coordinates": "world", "boxes": [...]}}``, one world-coordinate box per
    connected component (26-neighbourhood) of each class, with corners on the voxel edges;
    ``tag``: ``{"tags": [class names present]}``; ``partial``: ``{"label": label map}`` with the
    classes outside ``annotated`` set to 0; ``voxel``: ``{"label": label}``.

    Args:
        kind: the site's label kind: ``voxel``, ``partial``, ``box`` or ``tag``.
        label: (X, Y, Z) integer label map of :data:`~fedsegnet.data.synth.phantom.LABELS`.
        affine: (4, 4) voxel-to-world affine of ``label``'s grid (boxes are in world coordinates).
        annotated: the class ids a ``partial`` site annotates. Defaults to ().

    Returns:
        One of the dicts above; ``label`` is not modified (``voxel`` returns it as it is).
    """
    from scipy import ndimage

    if kind == "voxel":
        return {"label": label}
    if kind == "partial":
        keep = np.isin(label, [0, *annotated])
        return {"label": np.where(keep, label, 0).astype(label.dtype)}
    if kind == "tag":
        return {"tags": [LABELS[int(v)] for v in np.unique(label) if v]}
    affine = np.asarray(affine, dtype=np.float64)
    boxes = []
    for value in (int(v) for v in np.unique(label) if v):
        components, _ = ndimage.label(label == value, structure=np.ones((3, 3, 3)))
        for sl in ndimage.find_objects(components):
            lo = np.array([s.start for s in sl], dtype=np.float64) - 0.5
            hi = np.array([s.stop for s in sl], dtype=np.float64) - 0.5
            corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            world = (affine @ corners.T)[:3]
            boxes.append({"class": LABELS[value], "min": world.min(axis=1).round(4).tolist(), "max": world.max(axis=1).round(4).tolist()})
    return {"boxes": {"coordinates": "world", "boxes": boxes}}
