"""The synthetic task is not solvable by intensity thresholds (the network has to learn shape/context)."""

import pytest

from fedsegnet.data.baseline import threshold_baseline
from fedsegnet.data.synth import synthesize
from fedsegnet.errors import ConfigError


@pytest.mark.parametrize("seed", [0, 1])
def test_threshold_baseline_is_poor(tmp_path, seed):
    # default data (2 sites, 25 % validation), fewer and smaller cases to keep the test fast
    synthesize(tmp_path, sites=2, cases=6, size=32, seed=seed, test_cases=4)
    result = threshold_baseline([tmp_path / "site-1", tmp_path / "site-2"], tmp_path / "test")
    print(f"threshold baseline seed {seed}: mean Dice {result['mean_dice']:.3f} {result['dice']}")
    assert set(result["dice"]) == {"organ", "lesion"}
    assert result["n_train_cases"] == 2 * 4 and result["n_test_cases"] == 4
    assert 0.05 < result["mean_dice"] < 0.5
    assert result["dice"]["lesion"] < result["dice"]["organ"]


def test_threshold_baseline_is_poor_on_demo_defaults(tmp_path):
    synthesize(tmp_path)  # exactly what the demo uses: 2 sites x 12 cases, 48^3, 8 test cases
    result = threshold_baseline([tmp_path / "site-1", tmp_path / "site-2"], tmp_path / "test")
    print(f"threshold baseline, defaults: mean Dice {result['mean_dice']:.3f} {result['dice']}")
    assert result["mean_dice"] < 0.5


def test_threshold_baseline_multichannel_and_raw(tmp_path):
    synthesize(tmp_path, sites=1, cases=3, size=24, seed=0, test_cases=2, channels=2)
    result = threshold_baseline([tmp_path / "site-1"], tmp_path / "test", normalize="none", bins=64)
    assert {w["channel"] for w in result["intervals"].values()} <= {0, 1}
    assert 0.0 <= result["mean_dice"] <= 1.0


def test_threshold_baseline_bad_arguments(small_synth):
    sites, test = [small_synth / "site-1"], small_synth / "test"
    with pytest.raises(ConfigError) as err:
        threshold_baseline(sites, test, normalize="histogram")
    assert err.value.field == "normalize"
    with pytest.raises(ConfigError) as err:
        threshold_baseline(sites, test, bins=2)
    assert err.value.field == "bins"
    with pytest.raises(ConfigError) as err:
        threshold_baseline([small_synth / "test"], test)  # test folder has no training cases
    assert err.value.field == "train_dirs"
