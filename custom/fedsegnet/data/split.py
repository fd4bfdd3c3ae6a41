"""Turn a dataset on disk into per-site datalists (no image is copied) plus a held-out test split.

Layouts read (``layout="auto"`` picks by what the folder holds):

- ``msd``: a Medical Segmentation Decathlon task folder (``dataset.json`` with ``labels``,
  ``modality``, ``training`` pairs; ``imagesTr/``, ``labelsTr/``), e.g. Task01_BrainTumour, Task03_Liver.
  MSD's ``test`` images carry no labels and are not used.
- ``nnunet``: an nnU-Net v2 raw dataset (``dataset.json`` with ``channel_names``, ``labels`` as
  name -> value, ``file_ending``; ``imagesTr/<case>_0000.nii.gz``, ... one file per channel,
  ``labelsTr/<case>.nii.gz``), e.g. Dataset004_Hippocampus: the cases are found from the file names
  (:mod:`fedsegnet.data.nnunet`), a case's image is the list of its channel files in channel order,
  ``channel_names`` become the modality. A region-based dataset (``labels`` entries that are lists
  of values) needs the names of its values (``labels``). ``imagesTs/`` carries no labels, not used.
- ``acdc``: the ACDC challenge layout: one folder per patient with ``Info.cfg`` (``ED``, ``ES``,
  ``Group``, ...) and ``<patient>_frameNN.nii.gz`` / ``<patient>_frameNN_gt.nii.gz``; each patient
  gives two cases (ED and ES frames) that always stay together in one split; labels 0 background,
  1 right ventricle, 2 myocardium, 3 left ventricle; ``Group`` (the pathology) is a metadata column.
- ``brats``: the BraTS challenge layout: one folder per case with four sequences and a
  segmentation, ``<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` (BraTS 2020/2021: labels 1 necrotic core,
  2 edema, 4 enhancing) or ``<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz`` (BraTS 2023: enhancing is 3).
  The image of a case is the list of its four files in MSD's channel order (FLAIR, T1w, T1gd, T2w),
  so BraTS and MSD Task01 sites feed one model alike; the ``brats`` preset maps both label sets.
- ``pairs``: any folder of image/label NIfTI pairs: ``images*/X.nii.gz`` with ``labels*/X.nii.gz``,
  or ``X.nii.gz`` beside ``X_seg``/``X_label``/``X_gt``/``X_mask.nii.gz``. The label values found
  (read with a progress bar) are named ``class_<value>`` unless names are given.

Schemes: ``iid`` (shuffled, sizes as equal as possible), ``dirichlet`` (site sizes drawn from a
Dirichlet(``alpha``) distribution: smaller alpha, more unequal; each site keeps at least
``min_cases``), ``by`` (one site per value of a metadata column, e.g. ACDC's ``Group``, or of the
named group ``site`` of a filename pattern, e.g. ``^(?P<site>[A-Z]+)_``: institution codes). The
held-out test split is drawn first (``test_fraction`` of the groups) and never reaches a site.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedsegnet.data.datalist import DATASET_JSON, write_datalist
from fedsegnet.data.nnunet import is_nnunet_spec, read_nnunet
from fedsegnet.errors import ConfigError, DataError, FedSegNetError

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "msd", "nnunet", "acdc", "brats", "pairs")
SCHEMES = ("iid", "dirichlet", "by")
ACDC_LABELS = {0: "background", 1: "right_ventricle", 2: "myocardium", 3: "left_ventricle"}
_LABEL_SUFFIXES = ("_seg", "_label", "_labels", "_gt", "_mask")
# BraTS sequence file suffixes in MSD Task01's channel order (FLAIR, T1w, T1gd, T2w), per naming.
BRATS_NAMINGS = {
    "_seg": (("_flair", "_t1", "_t1ce", "_t2"), {0: "background", 1: "necrotic_tumour_core", 2: "peritumoral_edema", 4: "enhancing_tumour"}),
    "-seg": (("-t2f", "-t1n", "-t1c", "-t2w"), {0: "background", 1: "necrotic_tumour_core", 2: "peritumoral_edema", 3: "enhancing_tumour"}),
}
_NII = (".nii.gz", ".nii")


@dataclass
class Case:
    """One image/label pair; ``group`` keeps cases of one patient in one split."""

    image: str | list[str]
    label: str
    group: str
    meta: dict = field(default_factory=dict)


@dataclass
class DatasetSource:
    name: str
    layout: str
    labels: dict[int, str]
    modality: dict[int, str]
    cases: list[Case]


def _stem(name: str) -> str:
    for suffix in _NII:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_nifti(p: Path) -> bool:
    return p.is_file() and p.name.endswith(_NII)


# ------------------------------------------------------------------------------------------ readers
def read_msd(root: Path) -> DatasetSource:
    spec_path = root / DATASET_JSON
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FedSegNetError(f"{spec_path}: cannot read the MSD dataset.json: {e}") from None
    problems, cases = [], []
    for i, entry in enumerate(spec.get("training", [])):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            problems.append(f"{spec_path}: training[{i}] needs 'image' and 'label'")
            continue
        image, label = (root / entry["image"]).resolve(), (root / entry["label"]).resolve()
        for p in (image, label):
            if not p.is_file():
                problems.append(f"{p}: listed in {spec_path} training[{i}] but missing")
        cases.append(Case(str(image), str(label), group=_stem(image.name), meta={"file": image.name}))
    if problems:
        raise FedSegNetError(f"{root}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    if not cases:
        hint = " (an nnU-Net v2 dataset.json: read it with --layout nnunet or auto)" if is_nnunet_spec(spec) else ""
        raise FedSegNetError(f"{spec_path}: 'training' lists no case{hint}")
    labels = {int(k): str(v) for k, v in spec.get("labels", {}).items()}
    modality = {int(k): str(v) for k, v in spec.get("modality", {"0": "image"}).items()}
    return DatasetSource(spec.get("name", root.name), "msd", labels, modality, cases)


def read_nnunet_source(root: Path, labels: dict[int, str] | None = None) -> DatasetSource:
    """An nnU-Net v2 dataset as a :class:`DatasetSource` (see :func:`fedsegnet.data.nnunet.read_nnunet`).

    Args:
        root: the dataset folder.
        labels: names of the label values, used instead of dataset.json's ``labels`` (a
            region-based dataset needs them). Defaults to None.

    Returns:
        The source; a single-channel case's image is one path, a multi-channel case's the list of
        its channel files in channel order.

    Raises:
        FedSegNetError: every problem of the dataset (as the other layouts list them), each naming
            dataset.json and the field, or the file.
    """
    try:
        ds = read_nnunet(root, labels)
    except DataError as e:
        raise FedSegNetError(f"{root}: {len(e.problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in e.problems)) from None
    cases = [
        Case(list(c.images) if len(c.images) > 1 else c.images[0], c.label, group=c.case,
             meta={"file": Path(c.images[0]).name, "case": c.case})
        for c in ds.cases
    ]  # fmt: skip
    return DatasetSource(ds.name, "nnunet", dict(ds.labels), dict(ds.modality), cases)


def _read_cfg(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def read_acdc(root: Path) -> DatasetSource:
    problems, cases = [], []
    patients = sorted(p for p in root.rglob("Info.cfg"))
    for cfg_path in patients:
        folder = cfg_path.parent
        patient = folder.name
        cfg = _read_cfg(cfg_path)
        for phase in ("ED", "ES"):
            if phase not in cfg:
                problems.append(f"{cfg_path}: no '{phase}' frame number")
                continue
            try:
                frame = int(cfg[phase])
            except ValueError:
                problems.append(f"{cfg_path}: {phase} = {cfg[phase]!r} is not a frame number")
                continue
            image = folder / f"{patient}_frame{frame:02d}.nii.gz"
            label = folder / f"{patient}_frame{frame:02d}_gt.nii.gz"
            missing = [str(p) for p in (image, label) if not p.is_file()]
            if missing:
                problems.append(f"{patient} {phase}: missing {', '.join(missing)}")
                continue
            meta = {k: v for k, v in cfg.items() if k not in ("ED", "ES")}
            meta.update({"patient": patient, "phase": phase, "file": image.name})
            cases.append(Case(str(image.resolve()), str(label.resolve()), group=patient, meta=meta))
    if problems:
        raise FedSegNetError(f"{root}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    if not cases:
        raise FedSegNetError(f"{root}: no ACDC patient folder (with Info.cfg) found")
    return DatasetSource(root.name, "acdc", dict(ACDC_LABELS), {0: "cine-MRI"}, cases)


def _brats_segs(root: Path) -> list[tuple[Path, str]]:
    found = []
    for seg_suffix, (channels, _) in BRATS_NAMINGS.items():
        for seg in root.rglob(f"*{seg_suffix}.nii*"):
            case = _stem(seg.name)[: -len(seg_suffix)]
            if any(seg.with_name(case + channels[0] + ext).is_file() for ext in _NII):
                found.append((seg, seg_suffix))
    return sorted(found)


def read_brats(root: Path) -> DatasetSource:
    problems, cases, namings = [], [], set()
    for seg, seg_suffix in _brats_segs(root):
        channels, _ = BRATS_NAMINGS[seg_suffix]
        case = _stem(seg.name)[: -len(seg_suffix)]
        files = []
        for suffix in channels:
            hit = next((seg.with_name(case + suffix + ext) for ext in _NII if seg.with_name(case + suffix + ext).is_file()), None)
            if hit is None:
                problems.append(f"{seg.parent}: case {case!r} has no {case}{suffix}.nii.gz")
            files.append(hit)
        if None in files:
            continue
        namings.add(seg_suffix)
        cases.append(Case([str(f.resolve()) for f in files], str(seg.resolve()), group=case, meta={"file": seg.name}))
    if len(namings) > 1:
        problems.append(f"{root}: mixes BraTS 2020/2021 (_seg) and BraTS 2023 (-seg) cases, whose label values differ; split them apart")
    if problems:
        raise FedSegNetError(f"{root}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    if not cases:
        raise FedSegNetError(f"{root}: no BraTS case folder (<case>_seg.nii.gz beside <case>_flair.nii.gz, or -seg/-t2f) found")
    labels = BRATS_NAMINGS[namings.pop()][1]
    return DatasetSource(root.name, "brats", dict(labels), {0: "FLAIR", 1: "T1w", 2: "T1gd", 3: "T2w"}, cases)


def _label_for(image: Path) -> Path | None:
    stem = _stem(image.name)
    for suffix in _LABEL_SUFFIXES:
        for ext in _NII:
            candidate = image.with_name(stem + suffix + ext)
            if candidate.is_file():
                return candidate
    return None


def read_pairs(root: Path, labels: dict[int, str] | None = None, progress: Callable | None = None) -> DatasetSource:
    pairs = []
    image_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("images"))
    if image_dirs:
        for image_dir in image_dirs:
            label_dir = root / ("labels" + image_dir.name[len("images"):])
            if not label_dir.is_dir():
                raise FedSegNetError(f"{image_dir}: no matching label folder {label_dir}")
            for image in sorted(filter(_is_nifti, image_dir.iterdir())):
                label = label_dir / image.name
                if not label.is_file():
                    raise FedSegNetError(f"{image}: no label {label}")
                pairs.append((image, label))
    else:
        files = sorted(filter(_is_nifti, root.iterdir()))
        label_files = {f for f in files if _stem(f.name).endswith(_LABEL_SUFFIXES)}
        for image in files:
            if image in label_files:
                continue
            label = _label_for(image)
            if label is None:
                raise FedSegNetError(f"{image}: no label beside it (<name>{'|'.join(_LABEL_SUFFIXES)}.nii.gz)")
            pairs.append((image, label))
    if not pairs:
        raise FedSegNetError(f"{root}: no image/label NIfTI pairs found")
    if labels is None:
        import nibabel as nib

        values = {0}
        iterable = progress(pairs) if progress else pairs
        for _, label in iterable:
            values |= {int(v) for v in np.unique(np.asarray(nib.load(str(label)).dataobj))}
        labels = {0: "background", **{v: f"class_{v}" for v in sorted(values - {0})}}
    cases = [Case(str(i.resolve()), str(lab.resolve()), group=_stem(i.name), meta={"file": i.name}) for i, lab in pairs]
    return DatasetSource(root.name, "pairs", dict(labels), {0: "image"}, cases)


def read_dataset(root: str | Path, layout: str = "auto", labels: dict[int, str] | None = None, progress=None) -> DatasetSource:
    """Read a dataset folder in one of :data:`LAYOUTS` (``auto``: an nnU-Net v2 ``dataset.json``
    (``channel_names``, no ``training``) -> nnunet, another ``dataset.json`` -> msd, ``Info.cfg``
    below -> acdc, BraTS case files below -> brats, else pairs).

    Args:
        root: the dataset folder.
        layout: one of :data:`LAYOUTS`. Defaults to ``"auto"``.
        labels: label value -> name for the ``pairs`` layout (default: the values found) and the
            ``nnunet`` layout (default: dataset.json's ``labels``). Defaults to None.
        progress: wraps the label files read by ``pairs`` (e.g. tqdm). Defaults to None.

    Returns:
        The :class:`DatasetSource`.

    Raises:
        ConfigError: an unknown ``layout``.
        FedSegNetError: the folder is missing or does not hold a readable dataset of the layout;
            names the file and the field.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ConfigError("layout", layout, "unknown dataset layout", options=LAYOUTS)
    if not root.is_dir():
        raise FedSegNetError(f"{root}: not a folder")
    if layout == "auto":
        if (root / DATASET_JSON).is_file():
            try:
                spec = json.loads((root / DATASET_JSON).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                spec = None  # read_msd names the problem
            layout = "nnunet" if is_nnunet_spec(spec) else "msd"
        elif next(root.rglob("Info.cfg"), None):
            layout = "acdc"
        else:
            layout = "brats" if _brats_segs(root) else "pairs"
    if layout == "msd":
        return read_msd(root)
    if layout == "nnunet":
        return read_nnunet_source(root, labels)
    if layout == "acdc":
        return read_acdc(root)
    if layout == "brats":
        return read_brats(root)
    return read_pairs(root, labels, progress)


# ------------------------------------------------------------------------------------------ splitting
def _groups(cases: Sequence[Case]) -> dict[str, list[Case]]:
    out: dict[str, list[Case]] = {}
    for c in cases:
        out.setdefault(c.group, []).append(c)
    return out


def _value_of(case: Case, by_column: str | None, by_pattern: re.Pattern | None) -> str | None:
    if by_column is not None:
        return case.meta.get(by_column)
    m = by_pattern.search(case.meta.get("file", Path(str(case.image)).name))
    return m.group("site") if m else None


def split_cases(
    cases: Sequence[Case],
    *,
    sites: int | Sequence[str] = 2,
    scheme: str = "iid",
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    alpha: float = 0.5,
    by_column: str | None = None,
    by_pattern: str | None = None,
    min_cases: int = 2,
    seed: int = 0,
) -> tuple[dict[str, dict[str, list[Case]]], list[Case]]:
    """Split cases into sites (training/validation each) and a held-out test list.

    Args:
        cases: all cases; cases with the same ``group`` always land in the same split.
        sites: number of sites (``site-1``..) or their names; ignored by ``by`` (one site per value).
            Defaults to 2.
        scheme: ``iid``, ``dirichlet`` or ``by``. Defaults to ``"iid"``.
        test_fraction: share of groups held out for testing, in [0, 1). Defaults to 0.2.
        val_fraction: share of each site's groups used for validation, in [0, 1). Defaults to 0.2.
        alpha: Dirichlet concentration (``dirichlet``), > 0. Defaults to 0.5.
        by_column: metadata column whose values make the sites (``by``). Defaults to None.
        by_pattern: regular expression with a named group ``site`` matched on file names (``by``).
            Defaults to None.
        min_cases: least groups per site (``dirichlet``), >= 1. Defaults to 2.
        seed: seed of every random choice. Defaults to 0.

    Returns:
        ``({site: {"training": [...], "validation": [...]}}, test cases)``.

    Raises:
        ConfigError: a bad argument (named), too few cases for the sites asked, or cases whose
            column/pattern value is missing (the first few named).
    """
    if scheme not in SCHEMES:
        raise ConfigError("scheme", scheme, "unknown split scheme", options=SCHEMES)
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ConfigError("test_fraction", test_fraction, "must be in [0, 1)")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError("val_fraction", val_fraction, "must be in [0, 1)")
    if scheme == "dirichlet" and not float(alpha) > 0:
        raise ConfigError("alpha", alpha, "must be > 0")
    if scheme == "by" and (by_column is None) == (by_pattern is None):
        raise ConfigError("by", (by_column, by_pattern), "the 'by' scheme needs exactly one of by_column / by_pattern")
    pattern = None
    if by_pattern is not None:
        try:
            pattern = re.compile(by_pattern)
        except re.error as e:
            raise ConfigError("by_pattern", by_pattern, f"not a regular expression: {e}") from None
        if "site" not in pattern.groupindex:
            raise ConfigError("by_pattern", by_pattern, "needs a named group (?P<site>...)")
    rng = np.random.default_rng(int(seed))
    groups = _groups(cases)
    names = sorted(groups)
    order = [names[i] for i in rng.permutation(len(names))]
    n_test = int(round(float(test_fraction) * len(order)))
    test_groups, rest = order[:n_test], order[n_test:]

    if scheme == "by":
        values = {}
        missing = []
        for g in rest:
            v = _value_of(groups[g][0], by_column, pattern)
            if v is None:
                missing.append(groups[g][0].meta.get("file", g))
            values[g] = v
        if missing:
            what = f"column {by_column!r}" if by_column else f"pattern {by_pattern!r}"
            raise ConfigError("by", by_column or by_pattern, f"{len(missing)} case(s) have no value for {what}, e.g. {missing[:3]}")
        site_names = sorted({str(v) for v in values.values()})
        assignment = {s: [g for g in rest if str(values[g]) == s] for s in site_names}
    else:
        site_names = [f"site-{i + 1}" for i in range(int(sites))] if isinstance(sites, int) else list(sites)
        if not site_names:
            raise ConfigError("sites", sites, "at least one site")
        need = len(site_names) * (int(min_cases) if scheme == "dirichlet" else 1)
        if len(rest) < need:
            raise ConfigError("sites", sites, f"{len(rest)} case group(s) left after the test split, {need} needed")
        if scheme == "iid":
            assignment = {s: rest[i :: len(site_names)] for i, s in enumerate(site_names)}
        else:
            props = rng.dirichlet([float(alpha)] * len(site_names))
            extra = len(rest) - need
            counts = np.full(len(site_names), int(min_cases)) + np.floor(props * extra).astype(int)
            for i in np.argsort(-(props * extra - np.floor(props * extra)))[: len(rest) - int(counts.sum())]:
                counts[i] += 1
            bounds = np.concatenate([[0], np.cumsum(counts)])
            assignment = {s: rest[bounds[i] : bounds[i + 1]] for i, s in enumerate(site_names)}

    out = {}
    for site, site_groups in assignment.items():
        n_val = int(round(float(val_fraction) * len(site_groups))) if len(site_groups) > 1 else 0
        n_val = min(n_val, len(site_groups) - 1)
        out[site] = {
            "training": [c for g in site_groups[n_val:] for c in groups[g]],
            "validation": [c for g in site_groups[:n_val] for c in groups[g]],
        }
    return out, [c for g in test_groups for c in groups[g]]


def _case_entry(case: Case, site_dir: Path) -> dict:
    def rel(p):
        return os.path.relpath(p, site_dir)

    image = [rel(p) for p in case.image] if isinstance(case.image, list) else rel(case.image)
    return {"image": image, "label": rel(case.label)}


def write_split(source: DatasetSource, assignment: dict, test: list[Case], out: str | Path) -> dict:
    """Write ``<out>/<site>/dataset.json`` per site and ``<out>/test/dataset.json`` (paths relative
    to each folder, pointing at the original files) and ``<out>/split.json`` (what went where).

    Returns:
        The summary written to ``split.json``.
    """
    out = Path(out).absolute()
    summary = {"dataset": source.name, "layout": source.layout, "sites": {}, "test": len(test)}
    for site, parts in list(assignment.items()) + [("test", {"training": [], "validation": [], "test": test})]:
        site_dir = out / site
        site_dir.mkdir(parents=True, exist_ok=True)
        write_datalist(
            site_dir, labels=source.labels, modality=source.modality, name=f"{source.name} {site}",
            training=[_case_entry(c, site_dir) for c in parts["training"]],
            validation=[_case_entry(c, site_dir) for c in parts["validation"]],
            test=[_case_entry(c, site_dir) for c in parts.get("test", [])],
        )  # fmt: skip
        if site != "test":
            summary["sites"][site] = {
                "training": len(parts["training"]), "validation": len(parts["validation"]),
                "groups": sorted({c.group for c in parts["training"] + parts["validation"]}),
            }  # fmt: skip
    summary["test_groups"] = sorted({c.group for c in test})
    (out / "split.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
