"""A real `nvflare simulator` run under secure aggregation: 2 sites, 2 rounds, tiny preset.

The job is jobs/fedavg with its workflow replaced by ``SecureScatterAndGather`` and its executor by
``SecAggLearnerExecutor`` (cross-site evaluation and the ledger are left out: the first would send
each site's local model to the server). Sites keep their own weighted update and ring input in their
workspace (``keep_inputs``); the server keeps what it received (``keep_masked_inputs``). The checks
play the server: what it holds is compared with what only the sites hold.
"""

import json

import numpy as np
import pytest
import torch

from fedsegnet.flare.constants import SECAGG_DIR, SecAggTask
from fedsegnet.flare.ops.jobs import configure_job
from fedsegnet.secagg import pack
from fedsegnet.training.spec import build_from_spec, load_model_file

from .conftest import JOBS, TINY_JOB_ARGS, run_two_sites

pytestmark = pytest.mark.slow
SITES = ["site-1", "site-2"]


def secagg_job(dst):
    """jobs/fedavg configured with TINY_JOB_ARGS, its workflows and executor swapped for secure aggregation."""
    job = configure_job(JOBS / "fedavg", dst, **TINY_JOB_ARGS)
    config = job / "app" / "config"
    server = json.loads((config / "config_fed_server.json").read_text())
    server["workflows"] = [{
        "id": "secure_scatter_and_gather",
        "path": "fedsegnet.flare.secagg_workflow.SecureScatterAndGather",
        "args": {"min_clients": "{min_clients}", "num_rounds": "{num_rounds}", "aggregator_id": "aggregator",
                 "persistor_id": "persistor", "shareable_generator_id": "shareable_generator",
                 "train_timeout": "{train_timeout}", "step_timeout": 120, "keep_masked_inputs": True},
    }]  # fmt: skip
    server["components"] = [c for c in server["components"] if "ledger" not in c["path"]]
    server["task_data_filters"], server["task_result_filters"] = [], []
    (config / "config_fed_server.json").write_text(json.dumps(server, indent=2))
    client = json.loads((config / "config_fed_client.json").read_text())
    client["executors"] = [{
        "tasks": ["train", "submit_model", "validate", *SecAggTask.ALL],
        "executor": {"id": "executor", "path": "fedsegnet.flare.secagg_executor.SecAggLearnerExecutor",
                     "args": {"learner_id": "learner", "keep_inputs": True}},
    }]  # fmt: skip
    client["components"] = [c for c in client["components"] if "ledger" not in c["path"]]
    client["task_result_filters"] = []
    (config / "config_fed_client.json").write_text(json.dumps(client, indent=2))
    return job


@pytest.fixture(scope="module")
def secagg_run(tiny_sites, tmp_path_factory):
    work = tmp_path_factory.mktemp("secagg")
    rc, res, run = run_two_sites(secagg_job(work / "job"), work / "ws", tiny_sites)
    assert rc == 0, f"simulator failed, see {run.log_file}:\n{run.log_file.read_text()[-4000:]}"
    server_dir = res.job_root / SECAGG_DIR
    rounds = [json.loads(line) for line in (server_dir / "rounds.jsonl").read_text().splitlines()]
    sites = {(s, r): np.load(res.workspace / s / "simulate_job" / SECAGG_DIR / f"{s}_round{r}.npz") for s in SITES for r in (0, 1)}
    return res, rounds, sites, server_dir


def _signed(ring, bits=32):
    v = ring.astype(np.int64)
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v)


def test_every_round_sums_both_sites_with_sample_count_weights(secagg_run):
    res, rounds, sites, _ = secagg_run
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds:
        assert r["mode"] == "secure_aggregation" and r["aggregated"], r
        assert r["survivors"] == SITES and r["responders"] == SITES and r["dropped"] == {}
        assert r["key_check"] == "signed, no root CA"  # generated keys: said so, never "kit"
        n = r["n_train"]
        assert all(v > 0 for v in n.values())
        for s in SITES:
            assert r["weights"][s] == pytest.approx(n[s] / sum(n.values()))
            assert float(sites[(s, r["round"])]["weight"]) == pytest.approx(r["weights"][s])
    records = res.read_records()  # RoundRecorder: the sites' reports, their role, nobody missing
    assert [r["round"] for r in records] == [0, 1]
    for rec, r in zip(records, rounds):
        assert rec["aggregation_method"] == "secure_aggregation" and rec["missing_sites"] == {}
        for s in SITES:
            entry = rec["sites"][s]
            assert entry["n_train"] == r["n_train"][s] and entry["local_steps"] == TINY_JOB_ARGS["local_steps"]
            assert entry["aggregation"]["secagg"] == "survivor" and entry["aggregation"]["key_check"] == "signed, no root CA"
            assert entry["n_values"] == 0  # the server got no tensor from the site: only the masked bytes


def test_the_server_holds_only_masked_inputs(secagg_run):
    res, rounds, sites, server_dir = secagg_run
    for r in (0, 1):
        for s in SITES:
            x = sites[(s, r)]["ring"]  # the site's true ring input (its weighted, quantised update)
            y = np.load(server_dir / f"round{r}_{s}_masked.npy")  # what the server received from it
            assert x.shape == y.shape and x.size > 10_000
            assert np.mean(x == y) < 1e-3, "the masked input equals the site's input"
            corr = np.corrcoef(_signed(x).astype(np.float64), _signed(y).astype(np.float64))[0, 1]
            assert abs(corr) < 6 / np.sqrt(x.size), f"round {r} {s}: masked input correlates with the input ({corr:.4f})"
            u = y.astype(np.float64) / 2**32  # uniform on [0, 1) when masked
            assert abs(u.mean() - 0.5) < 6 * np.sqrt(1 / 12 / u.size)
            # nowhere in the server's workspace (logs, records, models) is the site's input as bytes
            packed = pack(x, 32)
            mid = len(packed) // 2
            probe = packed[mid : mid + 64]
            assert len(set(probe)) > 8  # a window that is not a run of zero bytes
            for path in res.workspace.joinpath("server").rglob("*"):
                if path.is_file():
                    assert probe not in path.read_bytes(), f"{path} holds bytes of {s}'s round-{r} input"


def test_the_aggregate_is_the_weighted_sum_of_the_updates(secagg_run):
    res, rounds, sites, server_dir = secagg_run
    for r in rounds:
        rnd = r["round"]
        xs = [sites[(s, rnd)]["ring"] for s in SITES]
        ring_sum = np.load(server_dir / f"round{rnd}_ring_sum.npy")
        assert np.array_equal(ring_sum, ((xs[0].astype(np.uint64) + xs[1]) % 2**32).astype(np.uint32))
        aggregate = np.load(server_dir / f"round{rnd}_aggregate.npy")
        weighted_sum = sum(sites[(s, rnd)]["weighted"] for s in SITES)
        step = float(sites[(SITES[0], rnd)]["step"])
        # stochastic rounding (< 1 step) plus the previous round's residual (< 1 step), per site
        assert np.abs(aggregate - weighted_sum).max() <= 2 * len(SITES) * step + 1e-12
        assert np.abs(weighted_sum).max() > 1e3 * step  # a real update, far above the quantisation step
        assert r["aggregate_norm"] == pytest.approx(np.linalg.norm(aggregate))


def test_the_global_model_moved_by_each_rounds_aggregate(secagg_run):
    res, rounds, sites, server_dir = secagg_run
    model, spec = load_model_file(res.global_model)
    torch.manual_seed(TINY_JOB_ARGS["seed"])
    initial = build_from_spec(spec).state_dict()
    trained = model.state_dict()
    names = sorted(k for k, v in initial.items() if v.is_floating_point())
    flat = lambda sd: np.concatenate([sd[k].double().numpy().ravel() for k in names])  # noqa: E731
    aggregates = [np.load(server_dir / f"round{r}_aggregate.npy") for r in (0, 1)]
    assert all(np.linalg.norm(a) > 0 for a in aggregates) and not np.allclose(aggregates[0], aggregates[1])
    np.testing.assert_allclose(flat(trained), flat(initial) + aggregates[0] + aggregates[1], atol=1e-5)
