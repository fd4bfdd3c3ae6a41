"""Synthetic sites: determinism, geometry, classes, channels, corruption, orientation, spec parsing."""

import json

import nibabel as nib
import numpy as np
import pytest

from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.synth import (
    CORRUPTION_KINDS,
    LABELS,
    STYLE_DEFAULTS,
    corrupt_label,
    parse_corrupt,
    parse_site_style,
    site_style,
    synthesize,
)
from fedsegnet.errors import ConfigError


TINY = dict(sites=2, cases=2, size=24, seed=0, test_cases=1)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.nii.gz"))


def _load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def test_layout_and_summary(small_synth):
    assert sorted(p.name for p in small_synth.iterdir()) == ["site-1", "site-2", "test"]
    site = load_datalist(small_synth / "site-1")
    assert len(site.training) == 2 and len(site.validation) == 1  # round(3 * 0.25) = 1
    assert site.labels == LABELS and site.in_channels == 1
    test = load_datalist(small_synth / "test", site="test")
    assert test.training == [] and len(test.validation) == 2 and test.test == test.validation
    for case in site.training + test.validation:
        assert (small_synth / case["image"]).is_file() and (small_synth / case["label"]).is_file()


def test_summary_dict(tmp_path):
    summary = synthesize(tmp_path, **TINY)
    json.dumps(summary)
    assert summary["labels"] == LABELS and summary["size"] == 24 and summary["channels"] == 1
    assert set(summary["sites"]) == {"site-1", "site-2"}
    s1 = summary["sites"]["site-1"]
    assert s1["n_training"] + s1["n_validation"] == 2 and s1["orientation"] == "RAS"
    assert set(s1["style"]) == set(STYLE_DEFAULTS)
    assert summary["sites"]["site-1"]["style"] != summary["sites"]["site-2"]["style"]  # mild variation
    assert summary["test"]["n_cases"] == 1


def test_deterministic_for_a_seed(tmp_path):
    synthesize(tmp_path / "a", **TINY)
    synthesize(tmp_path / "b", **TINY)
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b") and len(files) == 2 * (2 * 2 + 1)
    for rel in files:
        a, b = tmp_path / "a" / rel, tmp_path / "b" / rel
        (da, aa), (db, ab) = _load(a), _load(b)
        np.testing.assert_array_equal(da, db)
        np.testing.assert_array_equal(aa, ab)
        assert a.read_bytes() == b.read_bytes()


def test_different_seed_differs(tmp_path):
    synthesize(tmp_path / "a", **TINY)
    synthesize(tmp_path / "b", **{**TINY, "seed": 1})
    rel = "site-1/imagesTr/site-1_000.nii.gz"
    assert not np.array_equal(_load(tmp_path / "a" / rel)[0], _load(tmp_path / "b" / rel)[0])
    rel = "site-1/labelsTr/site-1_000.nii.gz"
    assert not np.array_equal(_load(tmp_path / "a" / rel)[0], _load(tmp_path / "b" / rel)[0])


def test_geometry_dtypes_and_classes(small_synth):
    seen = set()
    for case in load_datalist(small_synth / "site-1").training + load_datalist(small_synth / "test").validation:
        img, lab = nib.load(case["image"]), nib.load(case["label"])
        assert img.shape == (24, 24, 24) and lab.shape == (24, 24, 24)
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.header.get_zooms(), (1.5, 1.5, 1.5))
        np.testing.assert_allclose(np.diag(img.affine)[:3], (1.5, 1.5, 1.5))
        assert np.abs(img.affine[:3, 3]).max() > 1.0  # a real origin, not zero
        np.testing.assert_array_equal(img.affine, lab.affine)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        seen |= set(np.unique(np.asarray(lab.dataobj)).tolist())
    assert seen == {0, 1, 2}  # background and two foreground classes


def test_spacing_argument(tmp_path):
    synthesize(tmp_path, **{**TINY, "spacing": 2.0, "sites": 1, "test_cases": 0})
    img = nib.load(str(tmp_path / "site-1" / "imagesTr" / "site-1_000.nii.gz"))
    np.testing.assert_allclose(img.header.get_zooms(), (2.0, 2.0, 2.0))
    assert not (tmp_path / "test").exists()


def test_multichannel_one_4d_file(tmp_path):
    synthesize(tmp_path, **{**TINY, "channels": 4, "sites": 1})
    dl = load_datalist(tmp_path / "site-1")
    assert dl.in_channels == 4 and list(dl.modality.values()) == ["T1", "T2", "FLAIR", "T1c"]
    img = nib.load(dl.training[0]["image"])
    assert img.shape == (24, 24, 24, 4)
    data = np.asarray(img.dataobj)
    lab = np.asarray(nib.load(dl.training[0]["label"]).dataobj)
    assert lab.shape == (24, 24, 24)
    organ_means = [data[..., c][lab == 1].mean() - data[..., c][lab == 0].mean() for c in range(4)]
    assert len({round(float(m), 2) for m in organ_means}) == 4  # different contrasts per channel


@pytest.fixture(scope="module")
def clean_tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean_tiny")
    synthesize(root, **TINY)
    return root


@pytest.mark.parametrize(
    "kind, amount",
    [("label_noise", 1.0), ("erode", 1), ("dilate", 1), ("drop_class", 2), ("shift", 2)],
)
def test_corruption_changes_only_that_sites_labels(tmp_path, clean_tiny, kind, amount):
    synthesize(tmp_path, corrupt=[("site-2", kind, amount)], **TINY)
    changed = []
    for rel in _files(clean_tiny):
        clean, corrupted = _load(clean_tiny / rel)[0], _load(tmp_path / rel)[0]
        if str(rel).startswith("site-2/labelsTr"):
            changed.append(not np.array_equal(clean, corrupted))
            if kind == "drop_class":
                assert not (corrupted == 2).any()
            if kind == "erode":
                assert (corrupted > 0).sum() < (clean > 0).sum()
            if kind == "dilate":
                assert (corrupted > 0).sum() > (clean > 0).sum()
            if kind == "shift":
                np.testing.assert_array_equal(corrupted[2:], clean[:-2])
        else:  # images, other sites and the test set are untouched
            np.testing.assert_array_equal(clean, corrupted)
    assert any(changed)


def test_corrupt_label_kinds_and_no_mutation():
    label = np.zeros((10, 10, 10), np.uint8)
    label[2:8, 2:8, 2:8] = 1
    label[4:6, 4:6, 4:6] = 2
    before = label.copy()
    eroded = corrupt_label(label, "erode", 1)
    assert (eroded == 2).sum() == 0 and (eroded == 1).sum() == 4**3  # lesion rim -> organ
    dilated = corrupt_label(label, "dilate", 1)
    assert (dilated == 2).sum() > 8 and (dilated > 0).sum() > 6**3
    shifted = corrupt_label(label, "shift", -1)
    np.testing.assert_array_equal(shifted[:-1], label[1:])
    noisy = corrupt_label(label, "label_noise", 1.0)  # without structures: lesion voxels -> organ
    assert (noisy == 2).sum() == 0
    assert corrupt_label(label, "drop_class", 1).max() == 2 and (corrupt_label(label, "drop_class", 1) == 1).sum() == 0
    np.testing.assert_array_equal(label, before)
    with pytest.raises(ConfigError):
        corrupt_label(label, "smudge", 1)


def test_parse_corrupt():
    assert parse_corrupt("site-3:label_noise:0.5") == ("site-3", "label_noise", 0.5)
    assert parse_corrupt(" site-1 : shift : -2 ") == ("site-1", "shift", -2.0)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("site-3:smudge:1", "unknown corruption kind"),
        ("site-3:label_noise", "expected SITE:KIND:AMOUNT"),
        ("site-3:label_noise:0.5:1", "expected SITE:KIND:AMOUNT"),
        (":erode:1", "site name is empty"),
        ("site-3:label_noise:abc", "not a number"),
        ("site-3:label_noise:1.5", "probability"),
        ("site-3:erode:1.5", "whole number"),
        ("site-3:dilate:-1", "whole number"),
        ("site-3:dilate:1e9", "whole number"),
        ("site-3:drop_class:0", "foreground class id"),
        ("site-3:drop_class:5", "foreground class id"),
        ("site-3:shift:0.5", "whole number"),
        ("site-3:erode:nan", "finite"),
    ],
)
def test_parse_corrupt_errors_name_the_field(spec, needle):
    with pytest.raises(ConfigError) as err:
        parse_corrupt(spec)
    assert err.value.field == "corrupt" and err.value.value == spec
    assert needle in str(err.value) and str(err.value).startswith("corrupt=")
    if "kind" in needle:
        assert all(k in str(err.value) for k in CORRUPTION_KINDS)


def test_parse_site_style():
    assert parse_site_style("site-2:intensity_scale:1.3") == ("site-2", "intensity_scale", 1.3)
    site, key, value = parse_site_style("site-1:lesion_count:2")
    assert site_style(1, overrides={key: value})["lesion_count"] == (2, 2)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("site-2:brightness:1.3", "unknown style key"),
        ("site-2:intensity_scale", "expected SITE:KEY:VALUE"),
        ("site-2:intensity_scale:big", "not a number"),
        ("site-2:intensity_scale:0", "must be > 0"),
        ("site-2:noise_sd:-0.1", "must be >= 0"),
        ("site-2:lesion_prob:2", "in [0, 1]"),
        ("site-2:lesion_count:1.5", "whole number"),
        ("site-2:lesion_count:nan", "whole number"),
        ("site-2:lesion_count:inf", "whole number"),
        (":noise_sd:0.1", "site name is empty"),
    ],
)
def test_parse_site_style_errors_name_the_field(spec, needle):
    with pytest.raises(ConfigError) as err:
        parse_site_style(spec)
    assert err.value.field == "site_style" and needle in str(err.value)
    if "unknown" in needle:
        assert "intensity_scale" in str(err.value) and "lesion_prob" in str(err.value)


def test_site_style_defaults_and_overrides():
    assert site_style(1, seed=0) == site_style(1, seed=0)
    assert site_style(1, seed=0) != site_style(2, seed=0)
    neutral = site_style(1, vary=False)
    assert neutral == {**STYLE_DEFAULTS, "lesion_count": (1, 2)}
    style = site_style(2, overrides={"intensity_scale": 1.3, "lesion_count": (0, 3)})
    assert style["intensity_scale"] == 1.3 and style["lesion_count"] == (0, 3)
    with pytest.raises(ConfigError) as err:
        site_style(1, overrides={"gamma": 2.0})
    assert err.value.field == "site_styles"


def test_site_styles_change_that_site(tmp_path, clean_tiny):
    synthesize(tmp_path, site_styles={"site-2": {"intensity_scale": 2.0}}, **TINY)
    rel1, rel2 = "site-1/imagesTr/site-1_000.nii.gz", "site-2/imagesTr/site-2_000.nii.gz"
    np.testing.assert_array_equal(_load(clean_tiny / rel1)[0], _load(tmp_path / rel1)[0])
    assert not np.array_equal(_load(clean_tiny / rel2)[0], _load(tmp_path / rel2)[0])
    lab = "site-2/labelsTr/site-2_000.nii.gz"
    np.testing.assert_array_equal(_load(clean_tiny / lab)[0], _load(tmp_path / lab)[0])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"site_styles": {"site-9": {"noise_sd": 0.1}}}, "site_styles"),
        ({"site_styles": {"site-1": {"noise_sd": -1.0}}}, "site_styles"),
        ({"site_styles": {"site-1": {"lesion_count": (3, 1)}}}, "site_styles"),
        ({"site_styles": {"site-1": {"lesion_count": (1, 2, 3)}}}, "site_styles"),
        ({"corrupt": [("site-9", "erode", 1)]}, "corrupt"),
        ({"corrupt": [("site-1", "smudge", 1)]}, "corrupt"),
        ({"corrupt": [("site-1", "erode")]}, "corrupt"),
        ({"orientation": {"site-9": "LPS"}}, "orientation"),
        ({"orientation": {"site-1": "LLS"}}, "orientation"),
        ({"sites": 0}, "sites"),
        ({"size": 8}, "size"),
        ({"channels": 0}, "channels"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"cases": 2, "val_fraction": 0.75}, "cases"),
        ({"test_cases": -1}, "test_cases"),
    ],
)
def test_synthesize_bad_arguments(tmp_path, kwargs, field):
    with pytest.raises(ConfigError) as err:
        synthesize(tmp_path, **{**TINY, **kwargs})
    assert err.value.field == field


def test_orientation_lps_equals_ras_after_canonical(small_synth, small_synth_lps):
    for sub in ("imagesTr", "labelsTr"):
        for i in range(3):
            rel = f"site-2/{sub}/site-2_{i:03d}.nii.gz"
            ras, lps = nib.load(str(small_synth / rel)), nib.load(str(small_synth_lps / rel))
            assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
            assert not np.array_equal(np.asarray(ras.dataobj), np.asarray(lps.dataobj))
            canon = nib.as_closest_canonical(lps)
            np.testing.assert_array_equal(np.asarray(canon.dataobj), np.asarray(ras.dataobj))
            np.testing.assert_allclose(canon.affine, ras.affine, atol=1e-6)
    rel = "site-1/imagesTr/site-1_000.nii.gz"  # other sites untouched
    assert (small_synth / rel).read_bytes() == (small_synth_lps / rel).read_bytes()


def test_progress_bar(tmp_path, capsys):
    synthesize(tmp_path, progress=True, **{**TINY, "sites": 1, "test_cases": 0})
    assert "synthesize" in capsys.readouterr().err
