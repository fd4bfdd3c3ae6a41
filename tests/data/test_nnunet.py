"""nnU-Net v2 datasets: `fedsegnet data split` and a site folder in nnU-Net layout, on tiny generated datasets."""

import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedsegnet.cli import main
from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.nnunet import is_nnunet_spec, read_nnunet
from fedsegnet.data.preflight import preflight
from fedsegnet.data.split import read_dataset
from fedsegnet.errors import DataError, FedSegNetError

CHANNELS = {"0": "T2", "1": "ADC"}
LABELS = {"background": 0, "PZ": 1, "TZ": 2}


def _nii(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def make_nnunet(root: Path, n: int = 8, channels: dict | None = None, labels: dict | None = None, ending: str = ".nii.gz",
                label_values=(1, 2), **extra) -> Path:  # fmt: skip
    """An nnU-Net v2 raw dataset of ``n`` cases of 8^3 voxels; channel ``c`` of case ``i`` holds ``c + 1``."""
    channels = CHANNELS if channels is None else channels
    rng = np.random.default_rng(0)
    for i in range(n):
        case = f"prostate_{i:02d}"
        for c in range(len(channels)):
            _nii(root / "imagesTr" / f"{case}_{c:04d}{ending}", np.full((8, 8, 8), c + 1.0, np.float32) + rng.normal(size=(8, 8, 8)).astype(np.float32) * 0.01)
        label = np.zeros((8, 8, 8), np.uint8)
        label[2:5, 2:5, 2:5] = label_values[i % len(label_values)]
        _nii(root / "labelsTr" / f"{case}{ending}", label)
    spec = {"channel_names": channels, "labels": LABELS if labels is None else labels, "numTraining": n,
            "file_ending": ending, "name": "Dataset005_Prostate", **extra}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(spec, indent=2))
    return root


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _split(ds: Path, out: Path, *extra) -> int:
    return main(["data", "split", str(ds), "--out", str(out), "--sites", "2", "--test-fraction", "0.25", *extra])


def test_split_reads_an_nnunet_dataset_into_sites_that_load_and_pass_preflight(tmp_path, capsys):
    ds = make_nnunet(tmp_path / "Dataset005_Prostate")
    before = _snapshot(ds)
    assert _split(ds, tmp_path / "out") == 0
    assert "(nnunet, 8 cases)" in capsys.readouterr().out
    seen = set()
    for site in ("site-1", "site-2"):
        datalist = load_datalist(tmp_path / "out" / site)
        assert datalist.labels == {0: "background", 1: "PZ", 2: "TZ"}  # name -> value inverted
        assert datalist.modality == {"0": "T2", "1": "ADC"} and datalist.in_channels == 2
        for case in datalist.training + datalist.validation:
            stem = Path(case["label"]).name[: -len(".nii.gz")]
            assert [Path(p).name for p in case["image"]] == [f"{stem}_0000.nii.gz", f"{stem}_0001.nii.gz"]  # channel order
            seen.add(stem)
        summary = preflight(datalist)
        assert summary["channels"] == 2 and summary["n_total"] == len(datalist.training) + len(datalist.validation)
    test = load_datalist(tmp_path / "out" / "test")
    assert len(test.test) == 2 and not {Path(c["label"]).name[:-7] for c in test.test} & seen
    assert len(seen) == 6
    assert _snapshot(ds) == before and not list((tmp_path / "out").rglob("*.nii.gz"))  # nothing copied or touched


def test_single_channel_case_image_is_one_path_and_nii_ending_is_read(tmp_path):
    ds = make_nnunet(tmp_path / "Dataset004_Hippocampus", n=4, channels={"0": "MRI"}, ending=".nii")
    source = read_dataset(ds)
    assert source.layout == "nnunet" and source.modality == {0: "MRI"} and source.name == "Dataset005_Prostate"
    assert all(isinstance(c.image, str) and c.image.endswith("_0000.nii") for c in source.cases)
    assert [c.group for c in source.cases] == [f"prostate_{i:02d}" for i in range(4)]


def test_an_nnunet_folder_is_a_site_layout(tmp_path):
    ds = make_nnunet(tmp_path / "site-a", n=3)
    (ds / "imagesTs").mkdir()  # unlabelled test images are not read
    _nii(ds / "imagesTs" / "prostate_99_0000.nii.gz", np.zeros((8, 8, 8), np.float32))
    datalist = load_datalist(ds, site="site-a")
    assert datalist.name == "site-a" and len(datalist.training) == 3 and not datalist.validation
    assert datalist.labels == {0: "background", 1: "PZ", 2: "TZ"} and datalist.in_channels == 2
    assert preflight(datalist)["n_total"] == 3


def test_is_nnunet_spec_tells_the_formats_apart():
    assert is_nnunet_spec({"channel_names": {"0": "CT"}, "labels": {}, "file_ending": ".nii.gz"})
    assert not is_nnunet_spec({"modality": {"0": "CT"}, "training": []})
    assert not is_nnunet_spec(None)


def _drop(ds, rel):
    (ds / rel).unlink()


def _spec(ds, **change):
    spec = json.loads((ds / "dataset.json").read_text())
    for k, v in change.items():
        if v is None:
            spec.pop(k)
        else:
            spec[k] = v
    (ds / "dataset.json").write_text(json.dumps(spec))


BAD = {
    "missing channel file": (lambda ds: _drop(ds, "imagesTr/prostate_03_0001.nii.gz"),
                             r"imagesTr/prostate_03_0001.nii.gz: missing \(case 'prostate_03', channel 1 'ADC' of field 'channel_names'\)"),
    "label without images": (lambda ds: [_drop(ds, f"imagesTr/prostate_02_000{c}.nii.gz") for c in (0, 1)],
                             r"labelsTr/prostate_02.nii.gz: a label without images"),
    "image without label": (lambda ds: _drop(ds, "labelsTr/prostate_05.nii.gz"),
                            r"imagesTr/prostate_05_0000.nii.gz: no label .*labelsTr/prostate_05.nii.gz"),
    "no file_ending": (lambda ds: _spec(ds, file_ending=None), r"dataset.json: missing field 'file_ending'"),
    "unknown file_ending": (lambda ds: _spec(ds, file_ending=".mha"), r"dataset.json: field 'file_ending' is '.mha'; FedSegNet reads NIfTI"),
    "file_ending of other files": (lambda ds: _spec(ds, file_ending=".nii"),
                                   r"dataset.json: field 'file_ending' is '.nii' but imagesTr/ holds prostate_00_0000.nii.gz"),
    "channel_names too many": (lambda ds: _spec(ds, channel_names={"0": "T2", "1": "ADC", "2": "DWI"}),
                               r"dataset.json: field 'channel_names' declares channel 2 \('DWI'\) but no case has a <case>_0002.nii.gz"),
    "channel_names too few": (lambda ds: _spec(ds, channel_names={"0": "T2"}),
                              r"prostate_00_0001.nii.gz: channel 1 is not in dataset.json field 'channel_names' .*7 more such file"),
    "channel_names with a gap": (lambda ds: _spec(ds, channel_names={"0": "T2", "2": "ADC"}),
                                 r"dataset.json: field 'channel_names' keys must be 0, 1, ... without gaps"),
    "image not named by channel": (lambda ds: (ds / "imagesTr/prostate_00_0001.nii.gz").rename(ds / "imagesTr/prostate_00_adc.nii.gz"),
                                   r"prostate_00_adc.nii.gz: not named <case>_XXXX.nii.gz"),
    "numTraining": (lambda ds: _spec(ds, numTraining=9), r"dataset.json: field 'numTraining' is 9 but imagesTr/ and labelsTr/ hold 8"),
    "no background": (lambda ds: _spec(ds, labels={"PZ": 1, "TZ": 2}), r"dataset.json: field 'labels' has no background entry"),
    "labels value twice": (lambda ds: _spec(ds, labels={"background": 0, "PZ": 1, "TZ": 1}),
                           r"dataset.json: field 'labels' entries 'PZ' and 'TZ' both have value 1"),
    "region entry": (lambda ds: _spec(ds, labels={"background": 0, "whole gland": [1, 2], "TZ": 2}, regions_class_order=[1, 2]),
                     r"dataset.json: field 'labels' entry 'whole gland': \[1, 2\] is a region .*--labels 0:background,1:NAME,2:NAME"),
    "no labelsTr": (lambda ds: [_drop(ds, f"labelsTr/prostate_{i:02d}.nii.gz") for i in range(8)] and (ds / "labelsTr").rmdir(),
                    r"labelsTr: missing \(an nnU-Net v2 dataset keeps"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD))
def test_bad_nnunet_dataset_refused_naming_file_and_field_nothing_written(tmp_path, capsys, name):
    break_it, message = BAD[name]
    ds = make_nnunet(tmp_path / "Dataset005_Prostate")
    break_it(ds)
    before = _snapshot(ds)
    assert _split(ds, tmp_path / "out") == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: {ds}: ") and re.search(message, err), err
    assert not (tmp_path / "out").exists() and _snapshot(ds) == before
    with pytest.raises(DataError, match=message):  # the same check when the folder is a site's own
        load_datalist(ds, site="site-a")


def test_region_based_dataset_splits_with_the_names_of_its_values(tmp_path):
    ds = make_nnunet(tmp_path / "ds", labels={"background": 0, "whole gland": [1, 2], "TZ": [2]}, regions_class_order=[1, 2])
    assert _split(ds, tmp_path / "out", "--labels", "0:background,1:PZ,2:TZ") == 0
    datalist = load_datalist(tmp_path / "out" / "site-1")
    assert datalist.labels == {0: "background", 1: "PZ", 2: "TZ"}
    with pytest.raises(DataError, match=r"field 'labels' has region entries over the values \[1, 2\]; --labels names no value \[2\]"):
        read_nnunet(ds, {0: "background", 1: "PZ"})


def test_undeclared_label_value_is_caught_by_preflight_like_msd(tmp_path):
    # data split checks the files' names, not their voxels (as for MSD); the site's preflight reads the values
    ds = make_nnunet(tmp_path / "ds", label_values=(1, 2, 7))
    assert _split(ds, tmp_path / "out", "--test-fraction", "0") == 0
    problems = []
    for site in ("site-1", "site-2"):
        try:
            preflight(load_datalist(tmp_path / "out" / site))
        except DataError as e:
            problems += e.problems
    assert problems and all("label values {7} not in declared classes [0, 1, 2]" in p for p in problems)
    assert all(".nii.gz" in p.split(":")[0] for p in problems)  # each names the label file


def test_msd_layout_asked_for_an_nnunet_dataset_says_so(tmp_path):
    ds = make_nnunet(tmp_path / "ds", n=2)
    with pytest.raises(FedSegNetError, match=r"'training' lists no case \(an nnU-Net v2 dataset.json: read it with --layout nnunet"):
        read_dataset(ds, "msd")


def test_the_optional_dataset_field_lists_the_cases(tmp_path):
    ds = make_nnunet(tmp_path / "ds", n=3)
    listed = {f"c{i}": {"images": [f"imagesTr/prostate_{i:02d}_0000.nii.gz", f"imagesTr/prostate_{i:02d}_0001.nii.gz"],
                        "label": f"labelsTr/prostate_{i:02d}.nii.gz"} for i in range(2)}  # fmt: skip
    _spec(ds, dataset=listed)
    datalist = load_datalist(ds)
    assert len(datalist.training) == 2 and datalist.training[0]["image"][1].endswith("prostate_00_0001.nii.gz")
    listed["c1"]["label"] = "labelsTr/gone.nii.gz"
    listed["c0"]["images"] = listed["c0"]["images"][:1]
    _spec(ds, dataset=listed)
    with pytest.raises(DataError) as e:
        read_nnunet(ds)
    assert "field 'dataset' entry 'c0' lists 1 image(s); field 'channel_names' declares 2" in str(e.value)
    assert "labelsTr/gone.nii.gz: missing (listed in" in str(e.value) and "field 'dataset' entry 'c1'" in str(e.value)
