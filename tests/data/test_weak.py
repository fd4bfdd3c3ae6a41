"""Weaker labels: box sidecars (voxel and world coordinates, LPS storage), tags, partial label sets;
synth writes only the weak label of a weak site; preflight names every bad box, tag and class."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fedsegnet.config import get_preset
from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.labels import label_map_for
from fedsegnet.data.preflight import preflight
from fedsegnet.data.synth import LABELS, parse_label_kinds, synthesize
from fedsegnet.data.transforms import eval_transforms
from fedsegnet.errors import ConfigError, DataError

from .conftest import save_nifti

SMALL = dict(sites=2, cases=3, size=24, seed=5, test_cases=0)
PRESET = get_preset("tiny")


def _load(site_dir, case, preset=PRESET):
    dl = load_datalist(site_dir)
    lm = label_map_for(dl.labels, preset)
    return eval_transforms(preset, lm)(dict(case))


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same cases twice: voxel labels (RAS), and boxes / tags stored in LPS."""
    root = tmp_path_factory.mktemp("weak")
    synthesize(root / "voxel", **SMALL)
    synthesize(root / "weak", label_kinds="site-1:box,site-2:tag", orientation={"site-1": "LPS"}, **SMALL)
    return root


def test_weak_sites_keep_only_the_weak_label(twins):
    for site, key in (("site-1", "boxes"), ("site-2", "tags")):
        dl = load_datalist(twins / "weak" / site)
        assert dl.label_kind == ("box" if key == "boxes" else "tag")
        assert all(key in c and "label" not in c for c in dl.training + dl.validation)
        assert not (twins / "weak" / site / "labelsTr").exists()
        preflight(dl)  # the written sidecars pass the checks


def test_world_boxes_from_lps_storage_enclose_each_true_component(twins):
    voxel = load_datalist(twins / "voxel" / "site-1")
    weak = load_datalist(twins / "weak" / "site-1")
    for truth_case, weak_case in zip(voxel.training, weak.training):
        truth = np.asarray(_load(twins / "voxel" / "site-1", truth_case)["label"][0]).round().astype(int)
        boxes = np.asarray(_load(twins / "weak" / "site-1", weak_case)["label"]).round().astype(int)
        assert boxes.shape == (4, *truth.shape)  # 2 box channels, then 2 core channels
        for cls in (1, 2):
            expected = np.zeros_like(truth)
            components, _ = ndimage.label(truth == cls, structure=np.ones((3, 3, 3)))
            for sl in ndimage.find_objects(components):
                expected[sl] = 1
            np.testing.assert_array_equal(boxes[cls - 1], expected)  # tight, and the same after LPS -> RAS
            core = boxes[cls + 1]
            assert core.sum() > 0 and not (core & (1 - boxes[cls - 1])).any()  # the core lies inside the box


def test_tags_become_a_presence_vector(twins):
    dl = load_datalist(twins / "weak" / "site-2")
    item = _load(twins / "weak" / "site-2", dl.training[0])
    assert item["tags"].tolist() == [1.0 if LABELS[c] in dl.training[0]["tags"] else 0.0 for c in (1, 2)]
    assert float(item["label"].abs().sum()) == 0.0


def _site(tmp_path, kind="box", affine=None, **spec_extra):
    site = tmp_path / "s"
    affine = np.diag([2.0, 1.0, 1.0, 1.0]) if affine is None else affine
    save_nifti(site / "imagesTr" / "a.nii.gz", np.zeros((10, 12, 14), dtype=np.float32), affine)
    case = {"image": "imagesTr/a.nii.gz", **({"boxes": "boxesTr/a.json"} if kind == "box" else {"tags": ["lesion"]})}
    spec = {"labels": {"0": "background", "1": "organ", "2": "lesion"}, "modality": {"0": "MRI"},
            "label_kind": kind, "training": [case], **spec_extra}  # fmt: skip
    (site / "dataset.json").write_text(json.dumps(spec))
    return site


def _boxes(site, boxes, coordinates="voxel"):
    (site / "boxesTr").mkdir(exist_ok=True)
    (site / "boxesTr" / "a.json").write_text(json.dumps({"coordinates": coordinates, "boxes": boxes}))


def test_voxel_boxes_follow_lps_storage(tmp_path):
    """A voxel box indexes the stored array: in an LPS file it lands mirrored, and reorientation undoes it."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:3, 3] = [9.0, 11.0, 0.0]  # voxel (0, 0, 0) at world (9, 11, 0): the same world grid as RAS with origin 0
    ras_site, lps_site = _site(tmp_path / "ras", affine=np.eye(4)), _site(tmp_path / "lps", affine=lps)
    _boxes(ras_site, [{"class": "organ", "min": [1, 2, 3], "max": [4, 6, 9]}])
    _boxes(lps_site, [{"class": "organ", "min": [10 - 4, 12 - 6, 3], "max": [10 - 1, 12 - 2, 9]}])
    one_mm = dataclasses.replace(PRESET, spacing=(1.0, 1.0, 1.0))
    a = _load(ras_site, load_datalist(ras_site).training[0], one_mm)["label"]
    b = _load(lps_site, load_datalist(lps_site).training[0], one_mm)["label"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(np.asarray(a[0]).sum()) == 3 * 4 * 6


@pytest.mark.parametrize(
    "boxes, coordinates, needle",
    [
        ([{"class": "liver", "min": [0, 0, 0], "max": [1, 1, 1]}], "voxel", "boxes[0].class: 'liver' is not a declared"),
        ([{"class": 2, "min": [3, 0, 0], "max": [1, 1, 1]}], "voxel", "corners not ordered"),
        ([{"class": 2, "min": [0, 0], "max": [1, 1, 1]}], "voxel", "boxes[0].min: expected 3 numbers"),
        ([{"class": "lesion", "min": [5, 0, 0], "max": [11, 2, 2]}], "voxel", "outside the volume of shape [10, 12, 14]"),
        ([{"class": "lesion", "min": [0, 0, 0], "max": [30, 2, 2]}], "world", "outside the volume"),  # x spacing 2 mm
        ([], "pixel", "'coordinates' is 'pixel'"),
    ],
)
def test_bad_boxes_are_named(tmp_path, boxes, coordinates, needle):
    site = _site(tmp_path)
    _boxes(site, boxes, coordinates)
    with pytest.raises(DataError) as err:
        preflight(load_datalist(site))
    assert any(needle in p and "boxesTr/a.json (training[0] boxes)" in p for p in err.value.problems), err.value.problems


def test_missing_or_broken_box_file_and_bad_tags(tmp_path):
    site = _site(tmp_path / "a")
    with pytest.raises(DataError, match=r"boxesTr/a.json \(training\[0\] boxes\): file not found"):
        preflight(load_datalist(site))
    (site / "boxesTr").mkdir()
    (site / "boxesTr" / "a.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read as JSON"):
        preflight(load_datalist(site))
    tags = _site(tmp_path / "b", kind="tag")
    spec = json.loads((tags / "dataset.json").read_text())
    spec["training"][0]["tags"] = ["lesion", "nodule"]
    (tags / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"\['nodule'\] not declared foreground classes"):
        preflight(load_datalist(tags))


def test_contract_errors_of_weak_and_partial_sites(tmp_path):
    site = _site(tmp_path / "a", kind="partial")
    with pytest.raises(DataError, match="needs 'annotated_classes'"):
        load_datalist(site)
    site = _site(tmp_path / "b", kind="box", annotated_classes=["organ"])
    with pytest.raises(DataError, match="'annotated_classes' is only for label_kind 'partial'"):
        load_datalist(site)
    spec = json.loads((site / "dataset.json").read_text())
    del spec["annotated_classes"]
    spec["training"] = [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, {"image": "imagesTr/a.nii.gz"}]
    (site / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(DataError) as err:
        load_datalist(site)
    joined = "\n".join(err.value.problems)
    assert "training[0]: a box site's training cases carry 'boxes', not 'label'" in joined
    assert "training[1]: a box site's case needs 'boxes'" in joined


def test_partial_labels_only_hold_annotated_classes(tmp_path):
    root = tmp_path / "p"
    synthesize(root, label_kinds={"site-1": ("partial", (1,))}, **SMALL)
    dl = load_datalist(root / "site-1")
    assert dl.label_kind == "partial" and dl.annotated == (1,)
    summary = preflight(dl)
    assert set(summary["label_values"]) <= {0, 1}
    img = nib.load(dl.training[0]["label"])
    data = np.asarray(img.dataobj)
    data[0, 0, 0] = 2  # a lesion voxel at a site that annotates only the organ
    nib.save(nib.Nifti1Image(data, img.affine), dl.training[0]["label"])
    with pytest.raises(DataError, match=r"label values \{2\} are not among this partial site's annotated_classes \[1\]"):
        preflight(dl)


@pytest.mark.parametrize("spec", ["site-2:scribble", "site-2:partial", "site-2:box:1", "site-2:partial:tumour", "site-2"])
def test_bad_label_kind_specs(spec):
    with pytest.raises(ConfigError) as err:
        parse_label_kinds(spec)
    assert err.value.field == "label_kind"


def test_label_kind_spec():
    assert parse_label_kinds("site-2:box, site-3:tag,site-4:partial:1+2") == {
        "site-2": ("box", ()), "site-3": ("tag", ()), "site-4": ("partial", (1, 2))
    }
