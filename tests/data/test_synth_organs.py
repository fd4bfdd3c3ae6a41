"""Synthetic ``organs`` scenario: a host type per site, shared lesions, per-site test sets, CLI flag."""

import json

import nibabel as nib
import numpy as np
import pytest

from fedsegnet.cli import build_parser, main
from fedsegnet.data.datalist import load_datalist
from fedsegnet.data.synth import HOSTS, LABELS, SCENARIOS, site_style, synthesize
from fedsegnet.data.synth.phantom import make_case
from fedsegnet.errors import ConfigError

# 4 sites (one per host type), 3 cases each (2 training + 1 validation), 2 own test cases each.
ORGANS = dict(sites=4, cases=3, size=24, seed=0, test_cases=2, scenario="organs")
TINY = dict(sites=2, cases=2, size=24, seed=0, test_cases=1)


@pytest.fixture(scope="module")
def organs(tmp_path_factory):
    """``(root, summary)`` of ``synthesize(**ORGANS)`` (read-only)."""
    root = tmp_path_factory.mktemp("organs")
    return root, synthesize(root, **ORGANS)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _load(path):
    return np.asarray(nib.load(str(path)).dataobj)


def _host_features(dl, n):
    """Per site, averaged over its cases: host voxel fraction, axis ratios largest/middle and
    middle/smallest (square roots of the principal variances of the host voxels), and the mean
    intensity inside the host minus that of the background near the centre (the body)."""
    ax = (np.arange(n) - (n - 1) / 2) / (n / 2)
    central = np.sqrt(sum(g**2 for g in np.meshgrid(ax, ax, ax, indexing="ij"))) < 0.6
    feats = []
    for case in dl.training + dl.validation + dl.test:
        image, label = _load(case["image"]), _load(case["label"])
        host = label == 1
        ev = np.sqrt(np.linalg.eigvalsh(np.cov(np.argwhere(host).T.astype(np.float64))))
        contrast = image[host].mean() - image[(label == 0) & central].mean()
        feats.append((host.mean(), ev[2] / ev[1], ev[1] / ev[0], contrast))
    return np.mean(feats, axis=0)


def test_constants():
    assert SCENARIOS == ("default", "organs")
    assert len(HOSTS) >= 4 and len(set(HOSTS)) == len(HOSTS)


def test_layout_summary_and_datalists(organs):
    root, summary = organs
    assert sorted(p.name for p in root.iterdir()) == ["site-1", "site-2", "site-3", "site-4"]  # no shared test/
    json.dumps(summary)
    assert summary["scenario"] == "organs" and summary["test"] is None and summary["labels"] == LABELS
    for i, (site, info) in enumerate(summary["sites"].items(), start=1):
        assert info["host"] == HOSTS[(i - 1) % len(HOSTS)]
        assert (info["n_training"], info["n_validation"], info["n_test"]) == (2, 1, 2)
        dl = load_datalist(root / site)
        assert dl.labels == LABELS and len(dl.training) == 2 and len(dl.validation) == 1 and len(dl.test) == 2
        for case in dl.test:
            assert "/imagesTs/" in case["image"] and "/labelsTs/" in case["label"]
            assert (root / case["image"]).is_file() and (root / case["label"]).is_file()
        spec = json.loads((root / site / "dataset.json").read_text())
        assert spec["numTest"] == 2 and all("label" in c for c in spec["test"])


def test_test_split_disjoint_from_training_and_validation(organs):
    root, _ = organs
    for site in ("site-1", "site-2", "site-3", "site-4"):
        dl = load_datalist(root / site)
        seen = {c["image"] for c in dl.training + dl.validation} | {c["label"] for c in dl.training + dl.validation}
        test = {c["image"] for c in dl.test} | {c["label"] for c in dl.test}
        assert not seen & test
        # a different rng stream: no test image equals a training/validation image
        train_images = [_load(c["image"]) for c in dl.training + dl.validation]
        for case in dl.test:
            image = _load(case["image"])
            assert not any(np.array_equal(image, t) for t in train_images)


def test_deterministic(organs, tmp_path):
    root, _ = organs
    synthesize(tmp_path, **ORGANS)
    files = _files(root)
    assert files == _files(tmp_path) and len(files) == 4 * (2 * (3 + 2) + 1)
    for rel in files:
        assert (root / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_other_seed_differs(organs, tmp_path):
    root, _ = organs
    synthesize(tmp_path, **{**ORGANS, "sites": 1, "cases": 2, "test_cases": 1, "seed": 1})
    rel = "site-1/labelsTr/site-1_000.nii.gz"
    assert not np.array_equal(_load(root / rel), _load(tmp_path / rel))


def test_hosts_differ_between_sites(organs):
    root, _ = organs
    assert HOSTS[:4] == ("lobed", "tube", "capsule", "plate")
    feats = [_host_features(load_datalist(root / f"site-{i}"), 24) for i in range(1, 5)]
    (f1, a1, b1, c1), (f2, a2, b2, c2), (f3, a3, b3, c3), (f4, a4, b4, c4) = feats
    # size: the lobed host is by far the largest, the capsule the smallest
    assert f1 > 2 * max(f2, f3, f4) and f3 < min(f2, f4)
    # shape: the tube is long (largest/middle axis), the plate flat (middle/smallest), the others compact
    assert a2 > 2.0 > 1.5 > max(a1, a3, a4)
    assert b4 > 2.5 > 1.8 > max(b1, b2, b3)
    # intensity relative to the body: plate darker, the others brighter, each by its own margin
    assert c4 < -0.1 and 0.05 < c2 < c1 < c3
    contrasts = [c1, c2, c3, c4]
    assert min(abs(x - y) for i, x in enumerate(contrasts) for y in contrasts[i + 1 :]) > 0.05


def test_lesions_touch_the_host(organs):
    root, _ = organs
    n_lesion_cases = 0
    for site in ("site-1", "site-2", "site-3", "site-4"):
        dl = load_datalist(root / site)
        for case in dl.training + dl.validation + dl.test:
            label = _load(case["label"])
            lesion = label == 2
            if not lesion.any():
                continue
            n_lesion_cases += 1
            grown = lesion.copy()  # one voxel of 6-neighbourhood dilation
            for axis in range(3):
                grown |= np.roll(lesion, 1, axis) | np.roll(lesion, -1, axis)
            assert (grown & (label == 1)).any(), case["label"]
    assert n_lesion_cases >= 10


def test_default_scenario_unchanged(tmp_path):
    # reference values recorded from the generator before the organs scenario existed (commit 9cf9a10);
    # small tolerances only absorb last-bit float differences between CPUs: a changed rng order or
    # geometry moves them by far more
    case = make_case(np.random.default_rng([0, 1, 0]), 24, site_style(1, 0), 1)
    np.testing.assert_allclose(np.bincount(case["label"].ravel(), minlength=3), [12882, 866, 76], atol=3)
    image = case["image"].astype(np.float64)
    assert image.sum() == pytest.approx(3009.909, abs=0.01) and (image**2).sum() == pytest.approx(2263.95, abs=0.01)
    np.testing.assert_allclose(case["image"].reshape(-1)[[0, 1000, 5000, 7000]], [0.36093, 0.55973, 1.28144, 0.10361], atol=1e-4)
    # scenario="default" writes the same bytes as leaving it out, and the arrays of make_case
    synthesize(tmp_path / "a", **TINY)
    summary = synthesize(tmp_path / "b", scenario="default", **TINY)
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b") and (tmp_path / "a" / "test").is_dir()
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    expected = make_case(np.random.default_rng([0, 2, 1]), 24, site_style(2, 0), 1)
    np.testing.assert_array_equal(_load(tmp_path / "b/site-2/imagesTr/site-2_001.nii.gz"), expected["image"][0])
    np.testing.assert_array_equal(_load(tmp_path / "b/site-2/labelsTr/site-2_001.nii.gz"), expected["label"])
    assert summary["scenario"] == "default" and summary["test"]["n_cases"] == 1
    assert all(info["host"] is None and info["n_test"] == 0 for info in summary["sites"].values())
    assert load_datalist(tmp_path / "b" / "site-1").test == []


def test_combines_with_styles_corruption_orientation_label_kinds_channels(organs, tmp_path):
    root, _ = organs
    summary = synthesize(
        tmp_path,
        **{**ORGANS, "sites": 3, "test_cases": 1, "channels": 2},
        site_styles={"site-1": {"intensity_scale": 1.5}},
        corrupt=[("site-2", "drop_class", 2)],
        orientation={"site-3": "LPS"},
        label_kinds="site-3:partial:organ",
    )
    assert [info["host"] for info in summary["sites"].values()] == list(HOSTS[:3])
    # site-2: training/validation labels corrupted (no lesion), its test labels clean
    dl2 = load_datalist(tmp_path / "site-2")
    assert all(not (_load(c["label"]) == 2).any() for c in dl2.training + dl2.validation)
    np.testing.assert_array_equal(_load(dl2.test[0]["label"]), _load(root / "site-2/labelsTs/site-2_test_000.nii.gz"))
    # site-3: stored LPS, partial labels (organ only) in every split, the test split included
    dl3 = load_datalist(tmp_path / "site-3")
    assert dl3.label_kind == "partial" and dl3.annotated == (1,) and len(dl3.test) == 1
    img = nib.load(dl3.test[0]["image"])
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S") and img.shape == (24, 24, 24, 2)
    assert set(np.unique(_load(dl3.test[0]["label"]))) <= {0, 1}
    # site-1: brighter by its style (channel 0 of 2 channels), same labels as the unstyled host
    rel = "site-1/labelsTr/site-1_000.nii.gz"
    np.testing.assert_array_equal(_load(tmp_path / rel), _load(root / rel))
    rel = "site-1/imagesTr/site-1_000.nii.gz"
    assert _load(tmp_path / rel)[..., 0].mean() > 1.2 * _load(root / rel).mean()


def test_box_site_keeps_voxel_test_labels(tmp_path):
    synthesize(tmp_path, **{**ORGANS, "sites": 1, "cases": 2, "test_cases": 1}, label_kinds="site-1:box")
    dl = load_datalist(tmp_path / "site-1")
    assert dl.label_kind == "box" and "boxes" in dl.training[0] and "label" in dl.test[0]
    assert not (tmp_path / "site-1" / "labelsTr").exists() and (tmp_path / "site-1" / "labelsTs").is_dir()


@pytest.mark.parametrize("scenario", ["hosts", "", None, "ORGANS"])
def test_unknown_scenario(tmp_path, scenario):
    with pytest.raises(ConfigError) as err:
        synthesize(tmp_path, **{**TINY, "scenario": scenario})
    assert err.value.field == "scenario" and "organs" in str(err.value) and "default" in str(err.value)
    assert not (tmp_path / "site-1").exists()


def test_cli_scenario_flag(tmp_path, capsys):
    out = tmp_path / "data"
    args = ["data", "synth", "--out", str(out), "--sites", "2", "--cases", "2", "--size", "24", "--test-cases", "1"]
    assert main([*args, "--scenario", "organs"]) == 0
    printed = capsys.readouterr().out
    assert f"site-1: {HOSTS[0]} host" in printed and f"site-2: {HOSTS[1]} host" in printed
    assert sorted(p.name for p in out.iterdir()) == [".fedsegnet-output.json", "site-1", "site-2"]
    assert len(load_datalist(out / "site-2").test) == 1
    assert main([*args, "--scenario", "organs", "--json", "--overwrite"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scenario"] == "organs" and summary["sites"]["site-2"]["host"] == HOSTS[1]
    with pytest.raises(SystemExit):
        main([*args, "--scenario", "livers"])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_accepts_every_scenario():
    args = ["data", "synth", "--out", "x"]
    assert build_parser().parse_args(args).scenario == "default"
    for scenario in SCENARIOS:
        assert build_parser().parse_args([*args, "--scenario", scenario]).scenario == scenario
