"""`fedsegnet data split`: tiny fake copies of the MSD, ACDC and image/label-pair layouts, every scheme."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedsegnet.cli import main
from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.split import read_dataset, split_cases, write_split
from fedsegnet.errors import ConfigError, FedSegNetError


def _nii(path: Path, label=False, value=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((8, 8, 8), dtype=np.uint8 if label else np.float32)
    data[2:5, 2:5, 2:5] = value if label else 1.0
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def make_msd(root: Path, n=10) -> Path:
    training = []
    for i in range(n):
        _nii(root / "imagesTr" / f"liver_{i}.nii.gz")
        _nii(root / "labelsTr" / f"liver_{i}.nii.gz", label=True, value=1 + i % 2)
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"})
    spec = {"name": "Liver", "labels": {"0": "background", "1": "liver", "2": "cancer"}, "modality": {"0": "CT"},
            "training": training, "test": ["./imagesTs/liver_99.nii.gz"]}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def make_acdc(root: Path, n=8) -> Path:
    groups = ["DCM", "HCM", "NOR", "MINF"]
    for i in range(1, n + 1):
        patient = f"patient{i:03d}"
        folder = root / "training" / patient
        ed, es = 1, 10 + i
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: {groups[i % 4]}\nHeight: 170\nNbFrame: 30\n")
        for frame in (ed, es):
            _nii(folder / f"{patient}_frame{frame:02d}.nii.gz")
            _nii(folder / f"{patient}_frame{frame:02d}_gt.nii.gz", label=True, value=3)
    return root


def make_pairs(root: Path, n=8) -> Path:
    for i in range(n):
        inst = "AMC" if i % 2 else "UCL"
        _nii(root / f"{inst}_{i:03d}.nii.gz")
        _nii(root / f"{inst}_{i:03d}_seg.nii.gz", label=True, value=2)
    return root


def _all_entries(out: Path, site: str) -> list:
    spec = json.loads((out / site / "dataset.json").read_text())
    return [c["label"] for split in ("training", "validation", "test") for c in spec.get(split, []) if isinstance(c, dict)]


@pytest.mark.parametrize("maker, layout, n_cases", [(make_msd, "msd", 10), (make_acdc, "acdc", 16), (make_pairs, "pairs", 8)])
def test_each_layout_splits_into_loadable_site_datalists(tmp_path, maker, layout, n_cases):
    source = read_dataset(maker(tmp_path / "ds"))
    assert source.layout == layout and len(source.cases) == n_cases
    assignment, test = split_cases(source.cases, sites=2, scheme="iid", test_fraction=0.25, seed=1)
    write_split(source, assignment, test, tmp_path / "out")
    seen = []
    for site in ("site-1", "site-2"):
        datalist = load_datalist(tmp_path / "out" / site)  # every listed file exists and loads
        assert datalist.training and datalist.labels == source.labels
        seen += _all_entries(tmp_path / "out", site)
    assert len(load_datalist(tmp_path / "out" / "test").test) == len(test)  # evaluable held-out set
    held_out = _all_entries(tmp_path / "out", "test")
    assert held_out and not set(held_out) & set(seen), "a test case reached a site"
    resolved = {str((tmp_path / "out" / "test" / p).resolve()) for p in held_out}
    resolved |= {str((tmp_path / "out" / "site-1" / p).resolve()) for p in _all_entries(tmp_path / "out", "site-1")}
    resolved |= {str((tmp_path / "out" / "site-2" / p).resolve()) for p in _all_entries(tmp_path / "out", "site-2")}
    assert len(resolved) == n_cases  # every case used once, no image copied
    assert not list((tmp_path / "out").rglob("*.nii.gz"))


def test_acdc_patient_frames_stay_together_and_group_is_a_column(tmp_path):
    source = read_dataset(make_acdc(tmp_path / "acdc"))
    assert {c.meta["phase"] for c in source.cases} == {"ED", "ES"} and source.labels[3] == "left_ventricle"
    assignment, test = split_cases(source.cases, scheme="by", by_column="Group", test_fraction=0.25, seed=0)
    assert set(assignment) <= {"DCM", "HCM", "NOR", "MINF"}
    for site, parts in assignment.items():
        cases = parts["training"] + parts["validation"]
        assert all(c.meta["Group"] == site for c in cases)
        for c in cases:  # both frames of a patient in the same site and split
            same = [d for d in source.cases if d.group == c.group]
            assert all(d in parts["training"] for d in same) or all(d in parts["validation"] for d in same)
    assert len(test) % 2 == 0


def test_dirichlet_sizes_are_unequal_deterministic_and_bounded(tmp_path):
    source = read_dataset(make_pairs(tmp_path / "p", n=40))
    a, _ = split_cases(source.cases, sites=4, scheme="dirichlet", alpha=0.3, test_fraction=0.0, val_fraction=0.0, seed=3)
    b, _ = split_cases(source.cases, sites=4, scheme="dirichlet", alpha=0.3, test_fraction=0.0, val_fraction=0.0, seed=3)
    sizes = [len(a[s]["training"]) for s in sorted(a)]
    assert sizes == [len(b[s]["training"]) for s in sorted(b)] and sum(sizes) == 40
    assert min(sizes) >= 2 and max(sizes) - min(sizes) >= 4


def test_by_pattern_makes_one_site_per_institution(tmp_path):
    source = read_dataset(make_pairs(tmp_path / "p"))
    assignment, test = split_cases(source.cases, scheme="by", by_pattern=r"^(?P<site>[A-Z]+)_", test_fraction=0.0)
    assert sorted(assignment) == ["AMC", "UCL"] and not test
    assert all(Path(c.image).name.startswith("AMC") for c in assignment["AMC"]["training"] + assignment["AMC"]["validation"])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(scheme="random"), "scheme"), (dict(test_fraction=1.0), "test_fraction"),
        (dict(scheme="dirichlet", alpha=0), "alpha"), (dict(scheme="by"), "by"),
        (dict(scheme="by", by_pattern="(unclosed"), "by_pattern"), (dict(scheme="by", by_pattern="[A-Z]+"), "by_pattern"),
        (dict(sites=50), "sites"), (dict(scheme="by", by_column="Vendor"), "by"),
    ],
)  # fmt: skip
def test_bad_split_arguments_are_named(tmp_path, kwargs, field):
    source = read_dataset(make_pairs(tmp_path / "p"))
    with pytest.raises(ConfigError, match=field):
        split_cases(source.cases, **kwargs)


def test_broken_datasets_name_the_file(tmp_path):
    msd = make_msd(tmp_path / "msd", n=3)
    (msd / "labelsTr" / "liver_1.nii.gz").unlink()
    with pytest.raises(FedSegNetError, match="liver_1.nii.gz: listed in .* but missing"):
        read_dataset(msd)
    acdc = make_acdc(tmp_path / "acdc", n=2)
    (acdc / "training" / "patient002" / "patient002_frame01_gt.nii.gz").unlink()
    with pytest.raises(FedSegNetError, match="patient002 ED: missing .*patient002_frame01_gt.nii.gz"):
        read_dataset(acdc)
    pairs = make_pairs(tmp_path / "pairs", n=2)
    (pairs / "UCL_000_seg.nii.gz").unlink()
    with pytest.raises(FedSegNetError, match="UCL_000.nii.gz: no label beside it"):
        read_dataset(pairs)
    with pytest.raises(ConfigError, match="layout"):
        read_dataset(pairs, layout="no-such-layout")


def test_cli_split(tmp_path, capsys):
    ds = make_msd(tmp_path / "Task03_Liver")
    assert main(["data", "split", str(ds), "--out", str(tmp_path / "sites"), "--scheme", "dirichlet", "--sites", "3",
                 "--alpha", "1.0", "--test-fraction", "0.2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "site-3" in out and "held out" in out
    summary = json.loads((tmp_path / "sites" / "split.json").read_text())
    assert summary["layout"] == "msd" and summary["test"] == 2
    assert sum(s["training"] + s["validation"] for s in summary["sites"].values()) == 8


def make_brats(root: Path, n=6, naming="2021", size=8) -> Path:
    """BraTS case folders: four sequences and a segmentation with necrotic core, edema, enhancing."""
    seqs, seg, et = (("_flair", "_t1", "_t1ce", "_t2"), "_seg", 4) if naming == "2021" else (("-t2f", "-t1n", "-t1c", "-t2w"), "-seg", 3)
    rng = np.random.default_rng(0)
    for i in range(n):
        case = f"BraTS2021_{i:05d}" if naming == "2021" else f"BraTS-GLI-{i:05d}-000"
        folder = root / case
        folder.mkdir(parents=True)
        lab = np.zeros((size,) * 3, dtype=np.uint8)
        c, r = size // 2, size // 4
        lab[c - r : c + r, c - r : c + r, c - r : c + r] = 2
        lab[c - r // 2 - 1 : c + r // 2 + 1, c - r // 2 - 1 : c + r // 2 + 1, c - r // 2 - 1 : c + r // 2 + 1] = et
        lab[c - 1 : c + 1, c - 1 : c + 1, c - 1 : c + 1] = 1
        for k, s in enumerate(seqs):
            img = rng.normal(size=lab.shape).astype(np.float32) * 0.2 + 1.0 + (lab > 0) * (1 + k) + (lab == et) * 2
            nib.save(nib.Nifti1Image(img, np.eye(4)), str(folder / f"{case}{s}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(folder / f"{case}{seg}.nii.gz"))
    return root


@pytest.mark.parametrize("naming, et", [("2021", 4), ("2023", 3)])
def test_brats_layout_lists_four_sequences_in_msd_order(tmp_path, naming, et):
    source = read_dataset(make_brats(tmp_path / "brats", naming=naming))
    assert source.layout == "brats" and len(source.cases) == 6
    assert source.labels[et] == "enhancing_tumour" and source.modality == {0: "FLAIR", 1: "T1w", 2: "T1gd", 3: "T2w"}
    first = [Path(p).name for p in source.cases[0].image]
    assert first == (["BraTS2021_00000_flair.nii.gz", "BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_t1ce.nii.gz", "BraTS2021_00000_t2.nii.gz"]
                     if naming == "2021" else ["BraTS-GLI-00000-000-t2f.nii.gz", "BraTS-GLI-00000-000-t1n.nii.gz",
                                               "BraTS-GLI-00000-000-t1c.nii.gz", "BraTS-GLI-00000-000-t2w.nii.gz"])  # fmt: skip
    assignment, test = split_cases(source.cases, sites=2, test_fraction=0.34, seed=0)
    write_split(source, assignment, test, tmp_path / "out")
    datalist = load_datalist(tmp_path / "out" / "site-1")
    assert datalist.in_channels == 4 and len(datalist.training[0]["image"]) == 4 and datalist.labels[et] == "enhancing_tumour"


def test_broken_brats_folders_are_named(tmp_path):
    root = make_brats(tmp_path / "b")
    (root / "BraTS2021_00002" / "BraTS2021_00002_t1ce.nii.gz").unlink()
    with pytest.raises(FedSegNetError, match=r"case 'BraTS2021_00002' has no BraTS2021_00002_t1ce.nii.gz"):
        read_dataset(root)
    make_brats(tmp_path / "b" / "new", n=1, naming="2023")
    with pytest.raises(FedSegNetError, match="mixes BraTS 2020/2021"):
        read_dataset(root, "brats")
    with pytest.raises(FedSegNetError, match="no BraTS case folder"):
        read_dataset(make_pairs(tmp_path / "p"), "brats")
