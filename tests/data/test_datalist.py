"""The site data contract: dataset.json read/write and every structural problem in one error."""

import json
from pathlib import Path

import pytest

from fedsegnet.data.datalist import SiteDatalist, load_datalist, split_training, write_datalist
from fedsegnet.errors import ConfigError, DataError

LABELS = {0: "background", 1: "organ", 2: "lesion"}


def _write_json(root: Path, spec) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "dataset.json"
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return path


def _valid_spec(**changes):
    spec = {
        "name": "x",
        "labels": {"0": "background", "1": "organ", "2": "lesion"},
        "modality": {"0": "MRI"},
        "training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}],
        "validation": [{"image": "imagesTr/b.nii.gz", "label": "labelsTr/b.nii.gz"}],
    }
    spec.update(changes)
    return spec


def test_write_load_roundtrip(tmp_path):
    root = tmp_path / "site-a"
    train = [{"image": str(root / "imagesTr" / "a.nii.gz"), "label": str(root / "labelsTr" / "a.nii.gz")}]
    val = [{"image": "imagesTr/b.nii.gz", "label": "labelsTr/b.nii.gz"}]
    multi = [{"image": [str(root / "imagesTr" / "c_t1.nii.gz"), "imagesTr/c_t2.nii.gz"], "label": "labelsTr/c.nii.gz"}]
    path = write_datalist(
        root, labels=LABELS, modality={0: "T1", 1: "T2"}, training=train + multi, validation=val, label_kind="partial",
        annotated_classes=["organ"],
    )
    raw = json.loads(path.read_text())
    assert raw["training"][0] == {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}  # relative
    assert raw["labels"] == {"0": "background", "1": "organ", "2": "lesion"}

    dl = load_datalist(root, site="site-7")
    assert isinstance(dl, SiteDatalist)
    assert dl.name == "site-7" and dl.root == root.absolute()
    assert dl.labels == LABELS and all(isinstance(k, int) for k in dl.labels)
    assert dl.modality == {"0": "T1", "1": "T2"}
    assert dl.num_classes == 3 and dl.in_channels == 2
    assert dl.label_kind == "partial" and dl.annotated == (1,) and raw["annotated_classes"] == ["organ"]
    assert dl.training[0] == train[0]  # absolute paths resolved against root
    assert dl.validation[0]["image"] == str(root / "imagesTr" / "b.nii.gz")
    assert dl.training[1]["image"] == [str(root / "imagesTr" / "c_t1.nii.gz"), str(root / "imagesTr" / "c_t2.nii.gz")]
    assert dl.test == []


def test_write_does_not_mutate_inputs(tmp_path):
    train = [{"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")}]
    before = [dict(c) for c in train]
    write_datalist(tmp_path, labels=LABELS, modality={0: "CT"}, training=train, validation=[])
    assert train == before


def test_default_name_is_folder_and_defaults(tmp_path):
    spec = _valid_spec()
    del spec["validation"]
    _write_json(tmp_path / "hospital-b", spec)
    dl = load_datalist(tmp_path / "hospital-b")
    assert dl.name == "hospital-b"
    assert dl.validation == [] and dl.test == [] and dl.label_kind == "voxel"


def test_absolute_paths_accepted(tmp_path):
    abs_img = str(tmp_path / "elsewhere" / "img.nii.gz")
    _write_json(tmp_path / "s", _valid_spec(training=[{"image": abs_img, "label": "labelsTr/a.nii.gz"}]))
    assert load_datalist(tmp_path / "s").training[0]["image"] == abs_img


def test_msd_test_strings_and_unlabelled_dicts_are_skipped(tmp_path):
    spec = _valid_spec(
        test=[
            "imagesTs/x.nii.gz",
            {"image": "imagesTs/y.nii.gz"},
            {"image": "imagesTs/z.nii.gz", "label": "labelsTs/z.nii.gz"},
        ]
    )
    _write_json(tmp_path / "s", spec)
    dl = load_datalist(tmp_path / "s")
    assert [Path(c["label"]).name for c in dl.test] == ["z.nii.gz"]


def test_missing_dataset_json_names_the_file(tmp_path):
    with pytest.raises(DataError) as err:
        load_datalist(tmp_path / "nowhere", site="site-9")
    assert err.value.site == "site-9"
    assert "dataset.json" in err.value.problems[0] and "not found" in err.value.problems[0]


def test_invalid_json(tmp_path):
    path = _write_json(tmp_path / "s", "{not json")
    with pytest.raises(DataError) as err:
        load_datalist(tmp_path / "s")
    assert str(path) in err.value.problems[0] and "invalid JSON" in err.value.problems[0]


def test_top_level_not_object(tmp_path):
    _write_json(tmp_path / "s", "[1, 2]")
    with pytest.raises(DataError, match="top level must be an object"):
        load_datalist(tmp_path / "s")


def test_every_problem_collected_in_one_error(tmp_path):
    spec = {
        "labels": {"1": "organ", "2": "lesion"},  # no background value 0
        "modality": ["MRI"],  # wrong type
        "validation": [
            {"label": "labelsTr/a.nii.gz"},  # no image
            {"image": "imagesTr/b.nii.gz"},  # no label
            "imagesTr/c.nii.gz",  # not a dict
            {"image": 3, "label": "labelsTr/d.nii.gz"},  # wrong type
        ],
        "test": {"a": 1},  # wrong type
        "label_kind": "scribble",
        # "training" missing
    }
    path = _write_json(tmp_path / "s", spec)
    with pytest.raises(DataError) as err:
        load_datalist(tmp_path / "s", site="site-3")
    problems = err.value.problems
    assert err.value.site == "site-3"
    assert all(str(path) in p for p in problems), problems
    joined = "\n".join(problems)
    for needle in (
        "missing key 'training'",
        "'labels' keys must be label values in 0..255 including 0",
        "'modality' must be an object",
        "validation[0]: missing 'image'",
        "validation[1]: missing 'label'",
        "validation[2]: expected an object",
        "validation[3].image",
        "'test' must be a list",
        "'label_kind'",
    ):
        assert needle in joined, (needle, joined)
    assert len(problems) == 9
    assert "site-3" in str(err.value)


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"labels": {"0": "background"}}, "at least one class"),
        ({"labels": {"0": "background", "x": "organ"}}, "key 'x' is not an integer"),
        ({"labels": {"0": "background", "1": 5}}, "must be a name"),
        ({"labels": {}}, "'labels' is empty"),
        ({"modality": {"1": "MRI"}}, "'modality' keys must be contiguous from 0"),
        ({"labels": {"0": "background", "300": "organ"}}, "label values in 0..255 including 0"),
        ({"training": "imagesTr"}, "'training' must be a list"),
        ({"training": [{"image": [], "label": "l.nii.gz"}]}, "training[0].image"),
        ({"training": [{"image": "a.nii.gz", "label": ""}]}, "training[0].label"),
    ],
)
def test_single_malformed_field(tmp_path, changes, needle):
    path = _write_json(tmp_path / "s", _valid_spec(**changes))
    with pytest.raises(DataError) as err:
        load_datalist(tmp_path / "s")
    assert any(needle in p and str(path) in p for p in err.value.problems), err.value.problems


def test_non_contiguous_label_values_load(tmp_path):
    """BraTS stores 0, 1, 2, 4: the values are kept; the label map turns them into class ids."""
    _write_json(tmp_path / "s", _valid_spec(labels={"0": "background", "1": "NCR", "2": "ED", "4": "ET"}))
    dl = load_datalist(tmp_path / "s")
    assert dl.labels == {0: "background", 1: "NCR", 2: "ED", 4: "ET"}
    assert dl.num_classes == 4


def test_missing_labels_and_modality(tmp_path):
    spec = _valid_spec()
    del spec["labels"], spec["modality"]
    _write_json(tmp_path / "s", spec)
    with pytest.raises(DataError) as err:
        load_datalist(tmp_path / "s")
    assert len(err.value.problems) == 2
    assert "missing key 'labels'" in err.value.problems[0] and "missing key 'modality'" in err.value.problems[1]


def test_validation_case_also_in_training(tmp_path):
    case = {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}
    _write_json(tmp_path / "s", _valid_spec(training=[case], validation=[case]))
    with pytest.raises(DataError, match="also a training case"):
        load_datalist(tmp_path / "s")


def test_write_rejects_bad_label_kind_and_case(tmp_path):
    with pytest.raises(ConfigError) as err:
        write_datalist(tmp_path, labels=LABELS, modality={0: "CT"}, training=[], validation=[], label_kind="scribble")
    assert err.value.field == "label_kind" and "voxel" in str(err.value)
    with pytest.raises(ConfigError) as err:
        write_datalist(tmp_path, labels=LABELS, modality={0: "CT"}, training=[{"image": "a"}], validation=[])
    assert err.value.field == "training[0]"


def test_split_training_and_cases_copies(tmp_path):
    cases = [{"image": f"imagesTr/{i}.nii.gz", "label": f"labelsTr/{i}.nii.gz"} for i in range(10)]
    _write_json(tmp_path / "s", _valid_spec(training=cases, validation=[]))
    dl = load_datalist(tmp_path / "s")
    split = split_training(dl, val_fraction=0.3, seed=1)
    assert len(split.training) == 7 and len(split.validation) == 3
    assert {c["label"] for c in split.training}.isdisjoint(c["label"] for c in split.validation)
    assert split_training(dl, 0.3, seed=1) == split  # seeded
    assert len(dl.training) == 10  # original untouched
    copies = dl.cases("training")
    copies[0]["image"] = "changed"
    assert dl.training[0]["image"] != "changed"
    with pytest.raises(ConfigError) as err:
        dl.cases("train")
    assert err.value.field == "split"
    with pytest.raises(ConfigError) as err:
        split_training(dl, 1.0)
    assert err.value.field == "val_fraction"
