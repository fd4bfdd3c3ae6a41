"""A real `nvflare simulator` run of jobs/fedsegnet for one round with each personalisation method."""

import numpy as np
import pytest
import torch

from fedsegnet.config import build_train_config
from fedsegnet.data.synth import synthesize
from fedsegnet.flare.constants import PERSONAL_DIR
from fedsegnet.flare.ops.jobs import SimResults, SimulatorRun, configure_job
from fedsegnet.training.spec import load_model_file
from fedsegnet.training.personal import PersonalStore
from fedsegnet.training.site import build_model_for

from .conftest import JOBS

pytestmark = pytest.mark.slow

METHODS = {
    "fedbn": {"personalization": "fedbn"},
    "ditto": {"personalization": "ditto"},
    "finetune": {"personalization": "finetune", "personal_steps": 2},
    "dca": {"personalization": "dca", "network": "dca_unetr"},
    "dca_pbl": {"personalization": "dca", "network": "dca_unetr", "boundary_weight": 1.0},
    # the uncompressed FedAvg job: FLARE's weighted aggregator behind the job's key rule (SharedKeysWeightedAggregator)
    "dca_fedavg_job": {"personalization": "dca", "network": "dca_unetr", "job": "fedavg"},
}


@pytest.fixture(scope="module")
def organs(tmp_path_factory):
    root = tmp_path_factory.mktemp("organs")
    synthesize(root, sites=2, cases=3, size=24, seed=6, test_cases=1, scenario="organs")
    return root


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_round_of_each_personalisation_method(organs, tmp_path, method):
    args = dict(METHODS[method])
    job = configure_job(JOBS / args.pop("job", "fedsegnet"), tmp_path / "job", num_rounds=1, min_clients=2,
                        preset="tiny", patch_size=16, local_steps=2, seed=0, torch_threads=1, **args)  # fmt: skip
    with SimulatorRun(job, tmp_path / "ws", n_clients=2, threads=2, data_root=organs) as run:
        rc = run.wait(timeout=600)
    assert rc == 0, f"simulator failed, see {run.log_file}:\n{run.log_file.read_text()[-3000:]}"
    res = SimResults(tmp_path / "ws")
    records = res.read_records()
    assert [r["round"] for r in records] == [0] and not records[0]["errors"]
    if "job" not in METHODS[method]:  # the FedAvg job's aggregator keeps no per-site weights
        assert all(v["aggregation"]["weight"] > 0 for v in records[0]["sites"].values())
    # every site scored its personalised model on its own test split in the cross-site evaluation
    cross = res.read_cross_site()
    for site in ("site-1", "site-2"):
        server_models = {owner: m for owner, m in cross[site].items() if owner.startswith("SRV_")}
        assert server_models, cross[site].keys()
        for metrics in server_models.values():
            assert metrics["personal"]["split"] == "test" and metrics["personal"]["n_cases"] == 1
        state = PersonalStore(tmp_path / "ws" / site / "simulate_job" / PERSONAL_DIR / f"{site}.pt").load()
        assert state is not None and state["method"] == METHODS[method]["personalization"]
    if METHODS[method]["personalization"] in ("fedbn", "dca"):
        # the server never received a personal key: the global model still holds their initial values
        model, _ = load_model_file(res.global_model)
        torch.manual_seed(0)  # as the persistor builds the initial model
        config = build_train_config(preset="tiny", network=METHODS[method].get("network"), patch_size=16, seed=0)
        init = build_model_for(config, in_channels=1, num_classes=3).state_dict()
        saved, keys = model.state_dict(), set(state["keys"])
        assert keys and all(torch.equal(saved[k], init[k]) for k in keys)
        assert any(not torch.equal(saved[k], init[k]) for k in saved if k not in keys)  # the shared part trained
        assert any(not np.allclose(state["keys"][k].numpy(), init[k].numpy()) for k in keys)  # the sites' own did too
