"""Label maps and dataset presets: sites that number their classes differently (BraTS 1/2/4, MSD
Task01 1 edema / 2 non-enhancing / 3 enhancing, BraTS 2023 1/2/3) end up with the same class ids;
regions; errors naming dataset.json and the field."""

from __future__ import annotations

import numpy as np
import pytest

from fedsegnet.config import DATASET_PRESETS, PRESETS, build_train_config, get_preset, model_shape
from fedsegnet.data.labels import label_map_for, preset_label_map
from fedsegnet.data.split import ACDC_LABELS
from fedsegnet.data.transforms import eval_transforms
from fedsegnet.errors import ConfigError, DataError

from .conftest import save_nifti

BRATS = {0: "background", 1: "NCR/NET", 2: "ED", 4: "ET"}
BRATS_LONG = {0: "background", 1: "necrotic tumour core", 2: "peritumoral edema", 4: "GD-enhancing tumour"}
MSD_TASK01 = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
BRATS_2023 = {0: "background", 1: "NETC", 2: "SNFH", 3: "ET"}


@pytest.mark.parametrize(
    "labels, expected",
    [
        (BRATS, {0: 0, 1: 1, 2: 2, 4: 3}),
        (BRATS_LONG, {0: 0, 1: 1, 2: 2, 4: 3}),
        (MSD_TASK01, {0: 0, 1: 2, 2: 1, 3: 3}),
    ],
)
def test_brats_conventions_map_onto_one_class_order(labels, expected):
    m = label_map_for(labels, get_preset("brats"))
    assert dict(zip(m.source_values, m.class_ids)) == expected
    assert m.class_names == ("background", "necrotic_core", "edema", "enhancing")
    assert m.regions == {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,)}


@pytest.mark.parametrize(
    "preset, labels",
    [
        ("lits", {0: "background", 1: "liver", 2: "cancer"}),  # MSD Task03_Liver
        ("acdc", ACDC_LABELS),
        ("acdc", {0: "background", 1: "RV", 2: "MYO", 3: "LV"}),
        ("synthetic", {0: "background", 1: "organ", 2: "lesion"}),
    ],
)
def test_other_dataset_presets_match_their_usual_names(preset, labels):
    m = label_map_for(labels, get_preset(preset))
    assert m.is_identity and m.num_classes == get_preset(preset).num_classes


def test_generic_presets_number_sorted_values():
    m = label_map_for(BRATS, get_preset("cpu"))
    assert (m.source_values, m.class_ids) == ((0, 1, 2, 4), (0, 1, 2, 3))
    assert m.class_names == ("background", "NCR/NET", "ED", "ET") and m.regions == {}
    assert label_map_for({0: "bg", 1: "a"}, get_preset("cpu")).transform() is None


def test_unmatched_duplicate_and_missing_classes_are_named():
    where = "/data/site-2/dataset.json"
    with pytest.raises(DataError) as err:
        label_map_for({0: "background", 1: "tumour", 2: "edema", 3: "oedema"}, get_preset("brats"), where=where, site="site-2")
    text = str(err.value)
    assert err.value.site == "site-2"
    assert "field 'labels' value 1 ('tumour') matches none of preset 'brats'" in text
    assert "values 2 ('edema'), 3 ('oedema') all match class 'edema'" in text
    assert "no label for preset 'brats''s class 'enhancing'" in text
    assert all(where in p for p in err.value.problems)
    with pytest.raises(DataError, match="no background value 0"):
        label_map_for({1: "liver", 2: "tumour"}, get_preset("lits"))


def test_each_site_convention_gives_the_same_class_ids_after_the_transforms(tmp_path):
    """Two sites store one tumour, BraTS-style and MSD-style; the loaded labels agree voxel for voxel."""
    ncr, edema, et = np.zeros((3, 16, 16, 16), dtype=bool)
    edema[2:14, 2:14, 2:14] = True
    et[4:12, 4:12, 4:12] = True
    ncr[6:10, 6:10, 6:10] = True
    preset = build_train_config(preset="brats", network="hybrid_unetr", patch_size=16, spacing=1.5).preset
    loaded = []
    for name, labels, values in (("brats", BRATS, (1, 2, 4)), ("msd", MSD_TASK01, (2, 1, 3))):
        data = np.zeros((16, 16, 16), dtype=np.uint8)
        for mask, value in zip((edema, et, ncr), (values[1], values[2], values[0])):
            data[mask] = value
        site = tmp_path / name
        image = save_nifti(site / "imagesTr" / "a.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 16, 4)).astype(np.float32))
        label = save_nifti(site / "labelsTr" / "a.nii.gz", data)
        item = eval_transforms(preset, label_map_for(labels, preset))({"image": str(image), "label": str(label)})
        assert item["image"].shape[0] == 4
        loaded.append(np.asarray(item["label"][0]).round().astype(int))
    np.testing.assert_array_equal(loaded[0], loaded[1])
    assert set(np.unique(loaded[0])) == {0, 1, 2, 3}


@pytest.mark.parametrize("name", DATASET_PRESETS)
def test_dataset_presets_are_consistent(name):
    p = PRESETS[name]
    base = preset_label_map(p)
    assert p.num_classes == len(p.classes) + 1 == base.num_classes
    assert not p.label_values or len(p.label_values) == p.num_classes
    if p.network == "swin_unetr":
        assert all(s % 32 == 0 for s in p.patch_size), p.patch_size
    assert model_shape(p) == (p.num_classes, p.in_channels)
    assert set(DATASET_PRESETS) == {"synthetic", "brats", "lits", "acdc"}


def test_model_shape_args():
    assert model_shape(get_preset("cpu")) == (3, 1)
    assert model_shape(get_preset("cpu"), 5, 2) == (5, 2)
    with pytest.raises(ConfigError, match="preset 'brats' fixes num_classes=4"):
        model_shape(get_preset("brats"), num_classes=3)
    with pytest.raises(ConfigError, match="in_channels"):
        model_shape(get_preset("cpu"), in_channels=0)
