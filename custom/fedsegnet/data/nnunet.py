"""Read an nnU-Net v2 raw dataset folder: its cases from the file names, its labels inverted.

nnU-Net v2 (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
image segmentation", Nature Methods 2021; the v2 dataset format of its ``dataset_format.md``) keeps a
dataset in ``DatasetXXX_Name/``::

    dataset.json   {"channel_names": {"0": "T2", "1": "ADC"},
                    "labels": {"background": 0, "PZ": 1, "TZ": 2},
                    "numTraining": 32, "file_ending": ".nii.gz"}
    imagesTr/      <case>_0000.nii.gz, <case>_0001.nii.gz, ...   one file per channel, 4-digit number
    labelsTr/      <case>.nii.gz
    imagesTs/      optional, unlabelled (not read: nothing to train or score on)

Unlike the Medical Segmentation Decathlon's ``dataset.json`` it lists no case: the cases are the
label files of ``labelsTr/`` with their channel files in ``imagesTr/`` (or, when dataset.json has
nnU-Net's optional ``dataset`` field, ``{case: {"images": [...], "label": ...}}``, the cases it lists). ``labels`` maps a name to a
value (the inverse of MSD's); region-based datasets map a name to a list of values (a region, with
``regions_class_order``), which a FedSegNet site cannot declare: a site names each value its label
files hold once, and regions are scored from those classes by the job's preset
(:mod:`fedsegnet.data.labels`). Such a dataset is read when the names of the values are given
(``fedsegnet data split --labels``) and refused otherwise, naming the entry.

:func:`read_nnunet` checks the dataset like nnU-Net's ``verify_dataset_integrity`` does for the
file names (every channel of every case, a label for every image, an image for every label,
``numTraining``) and collects every problem into one :class:`~fedsegnet.errors.DataError`; the
files' contents (shapes, affines, label values) are checked by
:func:`fedsegnet.data.preflight.preflight` like any site's. No file is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedsegnet.errors import DataError

__all__ = ["FILE_ENDINGS", "NnUNetCase", "NnUNetDataset", "is_nnunet_spec", "read_nnunet"]

FILE_ENDINGS = (".nii.gz", ".nii")
"""nnU-Net ``file_ending`` values FedSegNet reads (NIfTI, through nibabel)."""

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class NnUNetCase:
    """One training case of an nnU-Net v2 dataset.

    Args:
        case: the case identifier (file name without channel suffix and ending).
        images: absolute paths of the channel files, in channel order (``_0000`` first).
        label: absolute path of the label file.
    """

    case: str
    images: tuple[str, ...]
    label: str


@dataclass(frozen=True)
class NnUNetDataset:
    """An nnU-Net v2 dataset read from its folder.

    Args:
        root: the dataset folder.
        name: the dataset name (``name`` of dataset.json, else the folder name).
        labels: label value -> name (inverted from nnU-Net's name -> value).
        modality: channel index -> channel name (``channel_names``).
        cases: the training cases, sorted by case identifier.
    """

    root: Path
    name: str
    labels: dict[int, str]
    modality: dict[int, str]
    cases: tuple[NnUNetCase, ...]


def is_nnunet_spec(spec) -> bool:
    """True when a parsed ``dataset.json`` is nnU-Net v2's (``channel_names``, no ``training`` list).

    Args:
        spec: the parsed JSON.

    Returns:
        Whether the folder is to be read as an nnU-Net v2 dataset.
    """
    return isinstance(spec, dict) and "channel_names" in spec and "training" not in spec


def _channels(spec: dict, where: str, problems: list[str]) -> dict[int, str] | None:
    value = spec.get("channel_names")
    if not isinstance(value, dict) or not value:
        problems.append(f"{where}: field 'channel_names' must be a non-empty object like {{\"0\": \"T2\"}}, got {value!r}")
        return None
    out = {}
    for k, v in value.items():
        if not str(k).isdigit() or not isinstance(v, str):
            problems.append(f"{where}: field 'channel_names' entry {k!r}: {v!r} must map a channel number to a name")
            return None
        out[int(k)] = v
    if sorted(out) != list(range(len(out))):
        problems.append(f"{where}: field 'channel_names' keys must be 0, 1, ... without gaps, got {sorted(out)}")
        return None
    return dict(sorted(out.items()))


def _labels(spec: dict, where: str, problems: list[str], names: Mapping[int, str] | None) -> dict[int, str] | None:
    value = spec.get("labels")
    if not isinstance(value, dict) or not value:
        problems.append(f"{where}: field 'labels' must be a non-empty object like {{\"background\": 0, \"tumor\": 1}}, got {value!r}")
        return None
    out: dict[int, str] = {}
    regions = []
    for name, v in value.items():
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            regions.append((name, list(v)))
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255:
            if v in out:
                problems.append(f"{where}: field 'labels' entries {out[v]!r} and {name!r} both have value {v}")
                return None
            out[v] = str(name)
        else:
            problems.append(f"{where}: field 'labels' entry {name!r}: {v!r} must be a label value in 0..255 (or a region: a list of values)")
            return None
    if regions:
        values = sorted({x for _, members in regions for x in members} | (set(out) - {0}))
        if names is None:
            name, members = regions[0]
            example = ",".join(["0:background"] + [f"{x}:NAME" for x in values])
            problems.append(
                f"{where}: field 'labels' entry {name!r}: {members} is a region (nnU-Net region-based training, "
                f"{len(regions)} region entr{'y' if len(regions) == 1 else 'ies'}); a FedSegNet site names each label "
                f"value once (the job's preset scores regions): give the names of the values in the label files, "
                f"`fedsegnet data split --labels {example}` writes site datalists that hold them"
            )
            return None
        missing = [x for x in [0, *values] if x not in names]
        if missing:
            problems.append(
                f"{where}: field 'labels' has region entries over the values {values}; --labels names no value {missing}"
            )
            return None
        return dict(sorted((int(k), str(v)) for k, v in names.items()))
    if names is not None:
        return dict(sorted((int(k), str(v)) for k, v in names.items()))
    if 0 not in out:
        problems.append(f"{where}: field 'labels' has no background entry with value 0 (e.g. \"background\": 0)")
        return None
    if len(out) < 2:
        problems.append(f"{where}: field 'labels' must name background (0) and at least one class, got {value}")
        return None
    return dict(sorted(out.items()))


def _file_ending(spec: dict, where: str, problems: list[str]) -> str | None:
    if "file_ending" not in spec:
        problems.append(f"{where}: missing field 'file_ending' (nnU-Net v2 names the files' ending there, e.g. \".nii.gz\")")
        return None
    ending = spec["file_ending"]
    if ending not in FILE_ENDINGS:
        problems.append(
            f"{where}: field 'file_ending' is {ending!r}; FedSegNet reads NIfTI ({', '.join(FILE_ENDINGS)}): "
            "convert the images and labels to NIfTI and set file_ending in a copy of the dataset"
        )
        return None
    return ending


def _files(folder: Path, ending: str) -> tuple[list[Path], list[Path]]:
    """The files of ``folder`` with ``ending`` and the other NIfTI files (another ending)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    hits = [p for p in files if p.name.endswith(ending) and not (ending == ".nii" and p.name.endswith(".nii.gz"))]
    others = [p for p in files if p not in hits and p.name.endswith(FILE_ENDINGS)]
    return hits, others


def _read_listed(root: Path, spec: dict, name: str, channels: dict, labels: dict, where: str) -> NnUNetDataset:
    """The cases of nnU-Net v2's explicit ``dataset`` field: ``{case: {"images": [...], "label": ...}}``."""
    listed = spec["dataset"]
    problems: list[str] = []
    if not isinstance(listed, dict) or not listed:
        raise DataError(name, [f"{where}: field 'dataset' must be a non-empty object {{case: {{\"images\": [...], \"label\": ...}}}}"])
    cases = []
    for case, entry in sorted(listed.items()):
        images = entry.get("images") if isinstance(entry, dict) else None
        label = entry.get("label") if isinstance(entry, dict) else None
        if not isinstance(images, list) or not all(isinstance(x, str) and x for x in images) or not isinstance(label, str) or not label:
            problems.append(f"{where}: field 'dataset' entry {case!r} needs \"images\" (a list of paths) and \"label\" (a path)")
            continue
        if len(images) != len(channels):
            problems.append(f"{where}: field 'dataset' entry {case!r} lists {len(images)} image(s); field 'channel_names' declares {len(channels)}")
            continue
        paths = [(root / x).resolve() for x in images] + [(root / label).resolve()]
        absent = [p for p in paths if not p.is_file()]
        for p in absent:
            problems.append(f"{p}: missing (listed in {where} field 'dataset' entry {case!r})")
        if not absent:
            cases.append(NnUNetCase(str(case), tuple(str(p) for p in paths[:-1]), str(paths[-1])))
    if problems:
        raise DataError(name, problems)
    return NnUNetDataset(root, str(spec.get("name") or root.name), labels, channels, tuple(cases))


def read_nnunet(root: str | Path, labels: Mapping[int, str] | None = None, *, site: str | None = None) -> NnUNetDataset:
    """Read an nnU-Net v2 raw dataset folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``).

    Args:
        root: the dataset folder (``DatasetXXX_Name/``).
        labels: names of the label values, value -> name, used instead of dataset.json's ``labels``
            (needed for a region-based dataset). Defaults to None (dataset.json's ``labels``).
        site: name used in the error (a site, or the dataset). Defaults to None (the folder name).

    Returns:
        The :class:`NnUNetDataset`; a case's ``images`` are its channel files in channel order.

    Raises:
        DataError: listing every problem, each naming ``dataset.json`` and the field, or the file:
            dataset.json unreadable; ``channel_names``, ``labels`` or ``file_ending`` missing or
            bad (a region entry without ``labels``; an ending other than NIfTI); ``imagesTr/`` or
            ``labelsTr/`` missing; an image file not named ``<case>_XXXX<ending>``; a channel not
            in ``channel_names``; a case missing a channel file; an image without a label or a
            label without images; no case; ``numTraining`` not the number of cases found.
    """
    root = Path(root).expanduser().absolute()
    name = site or root.name
    json_path = root / "dataset.json"
    where = str(json_path)
    try:
        spec = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(name, [f"{where}: file not found"]) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(name, [f"{where}: cannot read the nnU-Net dataset.json: {e}"]) from None
    if not isinstance(spec, dict):
        raise DataError(name, [f"{where}: top level must be an object, got {type(spec).__name__}"])
    problems: list[str] = []
    channels = _channels(spec, where, problems)
    label_names = _labels(spec, where, problems, labels)
    ending = _file_ending(spec, where, problems)
    listed = "dataset" in spec  # nnU-Net's optional explicit case list, used instead of the folders
    for folder in () if listed else ("imagesTr", "labelsTr"):
        if not (root / folder).is_dir():
            problems.append(f"{root / folder}: missing (an nnU-Net v2 dataset keeps its training cases in imagesTr/ and labelsTr/)")
    if problems or channels is None or label_names is None or ending is None:
        raise DataError(name, problems)
    if listed:
        return _read_listed(root, spec, name, channels, label_names, where)

    image_files, other_images = _files(root / "imagesTr", ending)
    label_files, other_labels = _files(root / "labelsTr", ending)
    for folder, hits, others in (("imagesTr", image_files, other_images), ("labelsTr", label_files, other_labels)):
        if not hits and others:
            problems.append(
                f"{where}: field 'file_ending' is {ending!r} but {folder}/ holds {others[0].name} "
                f"({len(others)} file(s) with another ending); set file_ending to their ending"
            )
    by_case: dict[str, dict[int, Path]] = {}
    extra: dict[int, list[Path]] = {}
    for path in image_files:
        m = _CHANNEL.match(path.name[: -len(ending)])
        if m is None:
            problems.append(f"{path}: not named <case>_XXXX{ending} (XXXX: the 4-digit channel number, e.g. _0000)")
            continue
        channel = int(m["channel"])
        if channel not in channels:
            extra.setdefault(channel, []).append(path)
            continue
        by_case.setdefault(m["case"], {})[channel] = path
    for channel, paths in sorted(extra.items()):
        problems.append(
            f"{paths[0]}: channel {channel} is not in {json_path.name} field 'channel_names' "
            f"(it declares {len(channels)}: {channels})" + (f"; {len(paths) - 1} more such file(s)" if len(paths) > 1 else "")
        )
    label_of = {p.name[: -len(ending)]: p for p in label_files}

    missing: dict[int, list[str]] = {}
    cases = []
    for case in sorted(by_case):
        found = by_case[case]
        absent = [c for c in channels if c not in found]
        for c in absent:
            missing.setdefault(c, []).append(case)
        label = label_of.get(case)
        if label is None:
            problems.append(f"{found[min(found)]}: no label {root / 'labelsTr' / (case + ending)}")
        if absent or label is None:
            continue
        cases.append(NnUNetCase(case, tuple(str(found[c]) for c in channels), str(label)))
    for c, names in sorted(missing.items()):
        if len(names) == len(by_case) > 1:
            problems.append(
                f"{where}: field 'channel_names' declares channel {c} ({channels[c]!r}) but no case has a "
                f"<case>_{c:04d}{ending} file in imagesTr/ (channels found: {sorted({k for f in by_case.values() for k in f})})"
            )
            continue
        for case in names:
            problems.append(
                f"{root / 'imagesTr' / f'{case}_{c:04d}{ending}'}: missing (case {case!r}, channel {c} "
                f"{channels[c]!r} of field 'channel_names')"
            )
    for case in sorted(set(label_of) - set(by_case)):
        problems.append(f"{label_of[case]}: a label without images (no imagesTr/{case}_0000{ending})")
    if not by_case and not label_of and not problems:
        problems.append(f"{root}: imagesTr/ and labelsTr/ hold no {ending} file")
    n_training = spec.get("numTraining")
    if n_training is not None and not problems and n_training != len(cases):
        problems.append(f"{where}: field 'numTraining' is {n_training!r} but imagesTr/ and labelsTr/ hold {len(cases)} case(s)")
    if problems:
        raise DataError(name, problems)
    return NnUNetDataset(root, str(spec.get("name") or root.name), label_names, channels, tuple(cases))
