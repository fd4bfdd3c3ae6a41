"""The in-process federation the benchmarks use: every aggregation, FedProx, faults, records, errors."""

import numpy as np
import pytest
from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

from fedsegnet.compression import SparseQuantCodec
from fedsegnet.config import build_train_config
from fedsegnet.data.synth import synthesize
from fedsegnet.federation import faulty_update, run_federation


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("fed")
    synthesize(root, sites=3, cases=4, size=32, seed=1, test_cases=2)
    return root


def _run(sites, **kw):
    config = build_train_config(preset="tiny", local_steps=2, seed=0, val_max_cases=1)
    dirs = {f"site-{i}": sites / f"site-{i}" for i in range(1, 4)}
    return run_federation(dirs, config, rounds=2, test_dir=sites / "test", device="cpu", **kw)


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["aam", "mean", "median", "trimmed_mean"])
def test_each_aggregation_trains_and_evaluates_on_the_test_set(sites, aggregation):
    out = _run(sites, aggregation=aggregation, codec=SparseQuantCodec())
    assert 0.0 <= out["test"]["dice_mean"] <= 1.0 and out["test"]["n_cases"] == 2
    assert [r["round"] for r in out["rounds"]] == [0, 1]
    assert all(np.isfinite(v).all() for v in out["final_weights"].values())
    if aggregation == "aam":
        w = [r["sites"][s]["weight"] for r in out["rounds"] for s in r["sites"]]
        assert sum(w) == pytest.approx(2.0) and all(r["sites"]["site-1"]["quality"] is not None for r in out["rounds"][1:])


@pytest.mark.slow
def test_byzantine_scaled_update_is_contained_by_aam(sites):
    out = _run(sites, aggregation="aam", faults={"site-3": "scale"})
    for r in out["rounds"]:
        s3 = r["sites"]["site-3"]
        assert s3["gate"] != "accepted" or s3["weight"] <= 0.05 or s3["clip"] < 0.5


@pytest.mark.slow
def test_fedprox_runs(sites):
    out = _run(sites, aggregation="mean", proximal_loss=PTFedProxLoss(mu=0.01))
    assert out["test"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["aam", "mean"])
def test_secure_aggregation_rounds_train_on_a_shared_support_with_reported_weights(sites, aggregation):
    """The secure rounds' arithmetic in process: round 0 on random blocks at 16 bits, round 1 planned
    from round 0's block scores at 4 bits; about 10% of the values change per round; the weights
    sum to 1 and come from the reports (counts while the Dice are below AAM's min_signal)."""
    config = build_train_config(preset="tiny", local_steps=2, seed=0, val_max_cases=1)
    dirs = {f"site-{i}": sites / f"site-{i}" for i in range(1, 4)}
    out = run_federation(dirs, config, rounds=2, test_dir=sites / "test", device="cpu", aggregation=aggregation,
                         secure_aggregation={})  # fmt: skip
    assert 0.0 <= out["test"]["dice_mean"] <= 1.0
    assert [r["plan"]["value_bits"] for r in out["rounds"]] == [16, 4]
    assert [r["plan"]["ring_bits"] for r in out["rounds"]] == [18, 6]  # 3 sites: 2 more bits than one value
    for r in out["rounds"]:
        assert sum(s["weight"] for s in r["sites"].values()) == pytest.approx(1.0)
        numel = sum(v.size for v in out["final_weights"].values() if v.dtype.kind == "f")
        assert 0.07 < r["plan"]["support_values"] / numel < 0.25  # 10% of each tensor, small tensors whole
        length = r["plan"]["support_values"] + r["plan"]["blocks"] * r["plan"]["score_digits"]
        assert all(s["bytes_up"] == -(-length * r["plan"]["ring_bits"] // 8)
                   for s in r["sites"].values())  # fmt: skip
    assert all(np.isfinite(v).all() for v in out["final_weights"].values())
    with pytest.raises(ValueError, match="secure_aggregation"):
        run_federation(dirs, config, rounds=1, secure_aggregation={}, codec=SparseQuantCodec())
    with pytest.raises(ValueError, match="secure_aggregation"):
        run_federation(dirs, config, rounds=1, secure_aggregation={"bits": 4})


def test_bad_arguments_are_named(sites):
    with pytest.raises(ValueError, match="aggregation"):
        _run(sites, aggregation="krum")
    with pytest.raises(ValueError, match="site-9"):
        _run(sites, faults={"site-9": "scale"})


def test_faulty_update_modes():
    u = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    np.testing.assert_array_equal(faulty_update(u, "scale")["w"], 10 * u["w"])
    r = faulty_update(u, "random", seed=1)["w"]
    assert r.shape == (2, 3) and not np.allclose(r, u["w"])
    np.testing.assert_array_equal(u["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(ValueError, match="mode"):
        faulty_update(u, "flip")
