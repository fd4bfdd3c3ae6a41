"""The site data contract: an MSD-style ``dataset.json`` read through a typed wrapper.

Each site keeps its cases in a folder with a ``dataset.json`` in the Medical Segmentation Decathlon
(MSD) format (Simpson et al., "A large annotated medical image dataset for the development and
evaluation of segmentation algorithms", 2019)::

    {
      "name": "...",
      "labels": {"0": "background", "1": "organ", "2": "lesion"},
      "modality": {"0": "MRI"},
      "training":   [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, ...],
      "validation": [...],                       # optional (FedSegNet extension), default []
      "test":       ["imagesTs/c.nii.gz", ...],  # optional; MSD lists unlabelled images here
      "label_kind": "voxel",                     # optional (FedSegNet extension)
      "annotated_classes": ["organ"]             # label_kind "partial" only
    }

With ``label_kind`` ``box`` a case carries ``"boxes"`` (a sidecar JSON path) instead of ``"label"``,
with ``tag`` it carries ``"tags"`` (the classes present); see :mod:`fedsegnet.data.weak`. Such
sites may still list voxel-labelled validation cases (``"label"``), which are then evaluated.

Paths are relative to the folder holding ``dataset.json`` (absolute paths are accepted). The
``image`` of a case is one file (3D, or 4D with channels last as in MSD) or a list of files, one per
channel. :func:`load_datalist` checks the structure of the file only and reports every problem in
one :class:`~fedsegnet.errors.DataError` (the way nnU-Net checks dataset integrity); whether the
files exist and agree with each other is checked by :func:`fedsegnet.data.preflight.preflight`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fedsegnet.data.nnunet import is_nnunet_spec, read_nnunet
from fedsegnet.data.weak import class_value
from fedsegnet.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
LABEL_KINDS = ("voxel", "box", "tag", "partial")
SPLITS = ("training", "validation", "test")


@dataclass(frozen=True)
class SiteDatalist:
    """A site's cases and label map, read from its ``dataset.json``.

    Args:
        root: folder holding ``dataset.json``.
        name: the site name (used in every error message about this site's data).
        labels: label value -> class name, as stored in the label files (0 is background; values
            need not be contiguous, e.g. BraTS 0, 1, 2, 4: see :mod:`fedsegnet.data.labels`).
        modality: channel index (as a string, MSD style) -> modality name, one per image channel.
        training: training cases, each ``{"image": str | list[str], "label": str}`` with absolute
            paths.
        validation: validation cases, same form. Defaults to [].
        test: labelled test cases, same form. Defaults to [].
        label_kind: how the site is annotated: ``voxel``, ``box``, ``tag`` or ``partial``.
            Defaults to ``"voxel"``.
        annotated_classes: label values the site annotates (``partial``: from dataset.json; every
            other kind: all foreground values). Defaults to () (all).
    """

    root: Path
    name: str
    labels: dict[int, str]
    modality: dict[str, str]
    training: list[dict] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    label_kind: str = "voxel"
    annotated_classes: tuple[int, ...] = ()

    @property
    def annotated(self) -> tuple[int, ...]:
        """Foreground label values the site annotates (all declared ones unless ``partial``)."""
        return tuple(self.annotated_classes) or tuple(v for v in sorted(self.labels) if v != 0)

    def evaluable(self, split: str) -> list[dict]:
        """The cases of ``split`` that carry a voxel label (weak-label sites may have none)."""
        return [c for c in self.cases(split) if "label" in c]

    @property
    def num_classes(self) -> int:
        """Number of classes including background (``len(labels)``)."""
        return len(self.labels)

    @property
    def in_channels(self) -> int:
        """Number of image channels (``len(modality)``)."""
        return len(self.modality)

    @property
    def json_path(self) -> Path:
        """Path of the site's ``dataset.json``."""
        return Path(self.root) / DATASET_JSON

    def cases(self, split: str) -> list[dict]:
        """Return a copy of the cases of one split.

        Args:
            split: ``training``, ``validation`` or ``test``.

        Returns:
            The cases as new dicts (safe to modify).

        Raises:
            ConfigError: for an unknown split name.
        """
        if split not in SPLITS:
            raise ConfigError("split", split, "unknown split", options=SPLITS)
        return [dict(c) for c in getattr(self, split)]


def _resolve(root: Path, path: str) -> str:
    return os.path.normpath(os.path.join(str(root), os.path.expanduser(path)))


WEAK_KEYS = {"box": "boxes", "tag": "tags"}
"""Label kind -> the case key that replaces ``label`` in its training cases."""


def _check_case(entry, where: str, problems: list[str], root: Path, need_label: bool = True, kind: str = "voxel"):
    """Validate one case entry; return the resolved case dict or None."""
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected an object with 'image' and 'label', got {type(entry).__name__}")
        return None
    weak_key = WEAK_KEYS.get(kind)
    if weak_key is not None and "label" not in entry:
        return _check_weak_case(entry, where, problems, root, weak_key)
    ok = _check_image(entry.get("image"), where, problems)
    label = entry.get("label")
    if label is None:
        if need_label:
            problems.append(f"{where}: missing 'label'")
        ok = False
    elif not isinstance(label, str) or not label:
        problems.append(f"{where}.label: expected a path, got {label!r}")
        ok = False
    if not ok:
        return None
    case = dict(entry)
    case["image"] = _resolve_image(root, entry["image"])
    case["label"] = _resolve(root, label)
    return case


def _resolve_image(root: Path, image: str | list[str]) -> str | list[str]:
    return _resolve(root, image) if isinstance(image, str) else [_resolve(root, p) for p in image]


def _check_image(image, where: str, problems: list[str]) -> bool:
    """Check a case's ``image`` entry (a path or a non-empty list of paths); False after a problem."""
    if image is None:
        problems.append(f"{where}: missing 'image'")
    elif isinstance(image, str):
        if image:
            return True
        problems.append(f"{where}.image: empty path")
    elif isinstance(image, list):
        if image and all(isinstance(p, str) and p for p in image):
            return True
        problems.append(f"{where}.image: expected a path or a non-empty list of paths, got {image!r}")
    else:
        problems.append(f"{where}.image: expected a path or a list of paths, got {type(image).__name__}")
    return False


def _check_weak_case(entry: dict, where: str, problems: list[str], root: Path, key: str):
    ok = _check_image(entry.get("image"), where, problems)
    value = entry.get(key)
    if key == "boxes" and (not isinstance(value, str) or not value):
        problems.append(f"{where}: a box site's case needs 'boxes' (path of its box JSON) or 'label', got {value!r}")
        ok = False
    if key == "tags" and (not isinstance(value, list) or not all(isinstance(t, (str, int)) and not isinstance(t, bool) for t in value)):
        problems.append(f"{where}: a tag site's case needs 'tags' (a list of class names or values) or 'label', got {value!r}")
        ok = False
    if not ok:
        return None
    case = {k: v for k, v in entry.items() if k != "label"}
    case["image"] = _resolve_image(root, entry["image"])
    if key == "boxes":
        case["boxes"] = _resolve(root, value)
    return case


def _check_index_map(value, key: str, where: str, problems: list[str], contiguous: bool = True) -> dict[int, str] | None:
    """Validate an MSD ``{"0": name, "1": name}`` map; keys must be contiguous ints from 0.

    With ``contiguous=False`` (label values) the keys need only be distinct values in 0..255 that
    include 0 (BraTS labels 0, 1, 2, 4).
    """
    if not isinstance(value, dict):
        problems.append(f"{where}: '{key}' must be an object like {{\"0\": \"...\"}}, got {type(value).__name__}")
        return None
    out: dict[int, str] = {}
    for k, v in value.items():
        try:
            idx = int(k)
        except (TypeError, ValueError):
            problems.append(f"{where}: '{key}' key {k!r} is not an integer")
            return None
        if not isinstance(v, str):
            problems.append(f"{where}: '{key}'[{k!r}] must be a name (string), got {v!r}")
            return None
        out[idx] = v
    if not out:
        problems.append(f"{where}: '{key}' is empty")
        return None
    if not contiguous:
        bad = sorted(k for k in out if not 0 <= k <= 255)
        if bad or 0 not in out:
            problems.append(
                f"{where}: '{key}' keys must be label values in 0..255 including 0 (background), got {sorted(out)}"
            )
            return None
    elif sorted(out) != list(range(len(out))):
        problems.append(
            f"{where}: '{key}' keys must be contiguous from 0, got {sorted(out)} (expected {list(range(len(out)))})"
        )
        return None
    return dict(sorted(out.items()))


def load_datalist(site_dir, site: str | None = None) -> SiteDatalist:
    """Read and validate ``<site_dir>/dataset.json``.

    Structure only: files are not opened (see :func:`fedsegnet.data.preflight.preflight`). A site
    folder in nnU-Net v2 layout (a ``dataset.json`` with ``channel_names`` and no ``training``,
    cases in ``imagesTr/`` and ``labelsTr/``) is read too: its cases, found from the file names by
    :func:`fedsegnet.data.nnunet.read_nnunet`, are all training cases.
    ``validation`` is optional (default ``[]``). ``test`` is optional; as in MSD it may list bare
    image paths without labels: those (and dict entries without a ``label``) are skipped with an
    INFO log, only labelled test cases are kept.

    Args:
        site_dir: folder holding ``dataset.json``.
        site: site name used in error messages and as :attr:`SiteDatalist.name`. Defaults to None
            (the folder name). The ``name`` key of the JSON is dataset metadata and not used here.

    Returns:
        The validated datalist with absolute paths.

    Raises:
        DataError: listing every problem found (missing file, invalid JSON, missing key, wrong
            type, label values without 0 or outside 0..255, a case without ``image``/``label``; in an
            nnU-Net v2 folder every problem :func:`~fedsegnet.data.nnunet.read_nnunet` names); each
            problem names the ``dataset.json`` path and the field, or the file.
    """
    root = Path(site_dir).expanduser().absolute()
    name = site if site else root.name
    json_path = root / DATASET_JSON
    if not json_path.is_file():
        what = "folder not found" if not root.exists() else "file not found"
        raise DataError(name, [f"{json_path}: {what}"])
    try:
        spec = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(name, [f"{json_path}: invalid JSON: {exc}"]) from None
    except OSError as exc:
        raise DataError(name, [f"{json_path}: cannot read: {exc}"]) from None
    if not isinstance(spec, dict):
        raise DataError(name, [f"{json_path}: top level must be an object, got {type(spec).__name__}"])
    if is_nnunet_spec(spec):
        spec = _nnunet_as_msd(root, name)

    problems: list[str] = []
    where = str(json_path)
    labels = modality = None
    for key in ("labels", "modality"):
        if key not in spec:
            problems.append(f"{where}: missing key '{key}'")
    if "labels" in spec:
        labels = _check_index_map(spec["labels"], "labels", where, problems, contiguous=False)
        if labels is not None and len(labels) < 2:
            problems.append(f"{where}: 'labels' must declare background (0) and at least one class, got {labels}")
    if "modality" in spec:
        modality = _check_index_map(spec["modality"], "modality", where, problems)
        if modality is not None:
            modality = {str(k): v for k, v in modality.items()}

    label_kind = spec.get("label_kind", "voxel")
    if label_kind not in LABEL_KINDS:
        problems.append(f"{where}: 'label_kind' is {label_kind!r}, valid: {', '.join(LABEL_KINDS)}")
        label_kind = "voxel"
    annotated: tuple[int, ...] = ()
    if label_kind == "partial" or "annotated_classes" in spec:
        annotated = _check_annotated(spec.get("annotated_classes"), labels, label_kind, where, problems)

    splits: dict[str, list[dict]] = {}
    for split in SPLITS:
        if split not in spec:
            if split == "training":
                problems.append(f"{where}: missing key 'training'")
            splits[split] = []
            continue
        entries = spec[split]
        if not isinstance(entries, list):
            problems.append(f"{where}: '{split}' must be a list of cases, got {type(entries).__name__}")
            splits[split] = []
            continue
        cases = []
        skipped = 0
        for i, entry in enumerate(entries):
            if split == "test" and (isinstance(entry, str) or (isinstance(entry, dict) and "label" not in entry)):
                skipped += 1  # MSD test images come without labels: nothing to evaluate against
                continue
            case = _check_case(entry, f"{where}: {split}[{i}]", problems, root, kind=label_kind)
            if case is not None and split == "training" and label_kind in WEAK_KEYS and "label" in case:
                problems.append(
                    f"{where}: {split}[{i}]: a {label_kind} site's training cases carry '{WEAK_KEYS[label_kind]}', "
                    f"not 'label' (voxel-labelled cases belong in 'validation' or at a voxel site)"
                )
                case = None
            if case is not None:
                cases.append(case)
        if skipped:
            logger.info("%s: skipped %d unlabelled test entr%s", where, skipped, "y" if skipped == 1 else "ies")
        splits[split] = cases

    train_labels = {c["label"] for c in splits["training"] if "label" in c}
    leaked = sorted(c["label"] for c in splits["validation"] if c.get("label") in train_labels)
    for path in leaked:
        problems.append(f"{where}: validation case {path} is also a training case")

    if problems:
        raise DataError(name, problems)
    return SiteDatalist(
        root=root,
        name=name,
        labels=labels,
        modality=modality,
        training=splits["training"],
        validation=splits["validation"],
        test=splits["test"],
        label_kind=label_kind,
        annotated_classes=annotated,
    )


def _nnunet_as_msd(root: Path, site: str) -> dict:
    """An nnU-Net v2 site folder's cases as an MSD spec (all of them training, absolute paths)."""
    ds = read_nnunet(root, site=site)
    return {
        "name": ds.name,
        "labels": {str(v): n for v, n in ds.labels.items()},
        "modality": {str(i): n for i, n in ds.modality.items()},
        "training": [{"image": list(c.images) if len(c.images) > 1 else c.images[0], "label": c.label} for c in ds.cases],
    }


def _check_annotated(value, labels, kind: str, where: str, problems: list[str]) -> tuple[int, ...]:
    """The label values of ``annotated_classes`` (names or values), checked against ``labels``."""
    if kind != "partial":
        problems.append(f"{where}: 'annotated_classes' is only for label_kind 'partial' (this site: {kind!r})")
        return ()
    if not isinstance(value, list) or not value:
        problems.append(f"{where}: label_kind 'partial' needs 'annotated_classes': a non-empty list of the classes it annotates")
        return ()
    if labels is None:
        return ()
    out = []
    for item in value:
        v = class_value(item, labels)
        if v is None or v == 0:
            problems.append(f"{where}: 'annotated_classes' entry {item!r} is not a declared foreground class {labels}")
        else:
            out.append(v)
    return tuple(sorted(set(out)))


def _relative(root: Path, path) -> str:
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def _relative_case(root: Path, case: dict) -> dict:
    out = dict(case)
    image = case["image"]
    if isinstance(image, (str, os.PathLike)):
        out["image"] = _relative(root, image)
    else:
        out["image"] = [_relative(root, p) for p in image]
    for key in ("label", "boxes"):
        if key in case:
            out[key] = _relative(root, case[key])
    return out


def write_datalist(
    site_dir,
    *,
    labels: dict,
    modality: dict,
    training: Sequence[dict],
    validation: Sequence[dict],
    test: Sequence[dict] = (),
    name: str = "",
    label_kind: str = "voxel",
    annotated_classes: Sequence = (),
) -> Path:
    """Write ``<site_dir>/dataset.json`` (MSD format, paths relative to ``site_dir``).

    Args:
        site_dir: the site folder (created if missing).
        labels: class id -> name, contiguous from 0 (int or str keys).
        modality: channel index -> modality name (int or str keys).
        training: training cases ``{"image": path | list[path], "label": path}``; absolute paths
            under ``site_dir`` are written relative to it, relative paths are written as given.
        validation: validation cases, same form.
        test: labelled test cases, same form. Defaults to ().
        name: dataset name stored as metadata. Defaults to "".
        label_kind: ``voxel``, ``box``, ``tag`` or ``partial``. Defaults to ``"voxel"``. Box and
            tag cases may carry ``boxes`` (a path) or ``tags`` (a list) instead of ``label``.
        annotated_classes: the classes a ``partial`` site annotates (names or values). Defaults to ().

    Returns:
        Path of the written ``dataset.json``.

    Raises:
        ConfigError: for an unknown ``label_kind`` or a case without ``image``/``label``.
    """
    if label_kind not in LABEL_KINDS:
        raise ConfigError("label_kind", label_kind, "unknown label kind", options=LABEL_KINDS)
    root = Path(site_dir).expanduser().absolute()
    weak = WEAK_KEYS.get(label_kind)
    for split, cases in (("training", training), ("validation", validation), ("test", test)):
        for i, case in enumerate(cases):
            if not isinstance(case, dict) or "image" not in case or ("label" not in case and weak not in case):
                need = "'label'" + (f" or '{weak}'" if weak else "")
                raise ConfigError(f"{split}[{i}]", case, f"a case needs 'image' and {need}")
    root.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": name,
        "description": "FedSegNet site datalist (MSD format)",
        "tensorImageSize": "4D" if len(modality) > 1 else "3D",
        "labels": {str(int(k)): str(v) for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))},
        "modality": {str(int(k)): str(v) for k, v in sorted(modality.items(), key=lambda kv: int(kv[0]))},
        "label_kind": label_kind,
        **({"annotated_classes": list(annotated_classes)} if annotated_classes else {}),
        "numTraining": len(training),
        "numValidation": len(validation),
        "numTest": len(test),
        "training": [_relative_case(root, c) for c in training],
        "validation": [_relative_case(root, c) for c in validation],
        "test": [_relative_case(root, c) for c in test],
    }
    path = root / DATASET_JSON
    path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    logger.debug("wrote %s (%d training, %d validation, %d test)", path, len(training), len(validation), len(test))
    return path


def split_training(datalist: SiteDatalist, val_fraction: float = 0.2, seed: int = 0) -> SiteDatalist:
    """Return a copy whose validation split is drawn from the training cases (MSD sites have none).

    Args:
        datalist: the site datalist (not modified).
        val_fraction: share of training cases moved to validation, in [0, 1). Defaults to 0.2.
        seed: seed of the random case order. Defaults to 0.

    Returns:
        A new :class:`SiteDatalist`; at least one case stays in training.

    Raises:
        ConfigError: when ``val_fraction`` is outside [0, 1).
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError("val_fraction", val_fraction, "must be in [0, 1)")
    cases = datalist.cases("training")
    n_val = min(int(round(len(cases) * val_fraction)), max(len(cases) - 1, 0))
    order = np.random.default_rng(seed).permutation(len(cases))
    val_idx = set(order[:n_val].tolist())
    train = [c for i, c in enumerate(cases) if i not in val_idx]
    val = datalist.cases("validation") + [c for i, c in enumerate(cases) if i in val_idx]
    return replace(datalist, training=train, validation=val)


def iter_cases(datalist: SiteDatalist, splits: Iterable[str] = ("training", "validation")):
    """Yield ``(split, index, case)`` for the given splits.

    Args:
        datalist: the site datalist.
        splits: split names to walk. Defaults to ("training", "validation").

    Yields:
        ``(split, index, case)`` with ``case`` a copy of the case dict.

    Raises:
        ConfigError: for an unknown split name.
    """
    for split in splits:
        for i, case in enumerate(datalist.cases(split)):
            yield split, i, case
