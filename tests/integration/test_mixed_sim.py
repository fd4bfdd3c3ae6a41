"""A real `nvflare simulator` run of jobs/fedsegnet, unchanged, with one site of each label kind."""

import pytest

from fedsegnet.data.synth import synthesize
from fedsegnet.flare.ops.jobs import SimResults, SimulatorRun, configure_job
from fedsegnet.training.spec import load_model_file

from .conftest import JOBS, without_cross_site

pytestmark = pytest.mark.slow

KINDS = {"site-1": "voxel", "site-2": "box", "site-3": "tag", "site-4": "partial"}


def test_one_site_of_each_label_kind(tmp_path):
    synthesize(tmp_path / "data", sites=4, cases=3, size=24, seed=4, test_cases=2,
               label_kinds="site-2:box,site-3:tag,site-4:partial:1", orientation={"site-2": "LPS"})  # fmt: skip
    job = without_cross_site(configure_job(JOBS / "fedsegnet", tmp_path / "job", num_rounds=2, min_clients=4, preset="tiny",
                                           patch_size=16, local_steps=2, seed=0, torch_threads=1, pseudo_ramp_rounds=1))  # fmt: skip
    with SimulatorRun(job, tmp_path / "ws", n_clients=4, threads=2, data_root=tmp_path / "data") as run:
        rc = run.wait(timeout=600)
    assert rc == 0, f"simulator failed, see {run.log_file}:\n{run.log_file.read_text()[-3000:]}"
    res = SimResults(tmp_path / "ws")
    records = res.read_records()
    assert [r["round"] for r in records] == [0, 1]
    for r in records:
        assert {s: v["label_kind"] for s, v in r["sites"].items()} == KINDS
        assert not r["errors"] and not r.get("missing_sites")
        for site, v in r["sites"].items():
            assert v["aggregation"]["weight"] > 0, (site, v["aggregation"])
    weak = records[1]["sites"]
    assert weak["site-2"]["val_dice_local"] is None and weak["site-3"]["val_dice_local"] is None  # no voxel labels
    for site in ("site-2", "site-3", "site-4"):  # weak-label agreement (box, tag) and annotated-class Dice (partial)
        assert weak[site]["label_agreement"] is None or 0.0 <= weak[site]["label_agreement"] <= 1.0
    assert weak["site-4"]["label_agreement"] is not None
    model, spec = load_model_file(res.global_model)
    assert spec["num_classes"] == 3
