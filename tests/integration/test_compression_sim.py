"""A real `nvflare simulator` run of jobs/fedsegnet (compression both ways) with one corrupted update."""

import json

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.fuel.utils import fobs
from nvflare.private.fed.utils.fed_utils import nvflare_fobs_initialize

from fedsegnet.compression import SparseQuantCodec
from fedsegnet.flare.constants import CodecMeta
from fedsegnet.flare.ops.jobs import configure_job
from fedsegnet.training.spec import build_from_spec, load_model_file

from .conftest import JOBS, TINY_JOB_ARGS, run_two_sites

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compressed_run(tiny_sites, tmp_path_factory):
    work = tmp_path_factory.mktemp("fedsegnet")
    job = configure_job(JOBS / "fedsegnet", work / "fedsegnet", **{**TINY_JOB_ARGS, "num_rounds": 3})
    client_cfg = job / "app" / "config" / "config_fed_client.json"
    cfg = json.loads(client_cfg.read_text())
    cfg["task_result_filters"][0]["filters"].append(
        {"path": "fedsegnet.flare.faults.CorruptPayload", "args": {"sites": ["site-2"], "rounds": [1], "mode": "truncate"}}
    )
    client_cfg.write_text(json.dumps(cfg, indent=2))
    return run_two_sites(job, work / "ws", tiny_sites)


def test_job_finishes_despite_the_corrupted_update(compressed_run):
    rc, res, run = compressed_run
    assert rc == 0, f"simulator failed, see {run.log_file}:\n{run.log_file.read_text()[-3000:]}"
    assert [r["round"] for r in res.read_records()] == [0, 1, 2]


def test_server_names_the_site_and_the_reason(compressed_run):
    _, res, _ = compressed_run
    log = res.server_log.read_text()
    assert "update of site site-2 (round 1) rejected: payload: field 'values' has" in log
    r1 = res.read_records()[1]
    assert any(e["site"] == "site-2" and "rejected" in e["message"] for e in r1["errors"])
    # only site-1's update entered round 1; both entered rounds 0 and 2
    contributed = [sorted(s for s, v in r["sites"].items() if v.get("n_train")) for r in res.read_records()]
    assert contributed == [["site-1", "site-2"], ["site-1"], ["site-1", "site-2"]]


def test_global_model_is_intact(compressed_run):
    _, res, _ = compressed_run
    model, spec = load_model_file(res.global_model)
    torch.manual_seed(TINY_JOB_ARGS["seed"])
    initial = build_from_spec(spec).state_dict()
    trained = model.state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert sum(not torch.equal(trained[k].float(), initial[k].float()) for k in trained) > len(trained) // 2


def _full_message_bytes(data) -> int:
    """What a full downlink message carrying ``data`` serialises to, built here independently."""
    nvflare_fobs_initialize()
    info = {"mode": "full", "base": None, "version": "0-" + "0" * 12}
    msg = DXO(DataKind.WEIGHTS, data=data, meta={CodecMeta.DOWNLINK: info}).to_shareable()
    return len(fobs.dumps(msg))


def test_recorded_bytes_are_serialized_message_sizes(compressed_run):
    _, res, _ = compressed_run
    records = res.read_records()
    _, spec = load_model_file(res.global_model)
    torch.manual_seed(TINY_JOB_ARGS["seed"])
    weights = {k: v.float().numpy() for k, v in build_from_spec(spec).state_dict().items()}
    raw = sum(v.nbytes for v in weights.values())
    # round 0: the initial model, 8-bit dense (down_first_bits), encoded the same way here
    first, _ = SparseQuantCodec(ratio=1.0, dense_bits=8, block=256).encode(weights)
    expected_first = _full_message_bytes(first)
    assert expected_first < raw / 3
    for site in ("site-1", "site-2"):
        down0 = records[0]["sites"][site]["bytes_down"]
        # the same content plus FLARE's task headers (task id, cookies): within 1%
        assert abs(down0 - expected_first) < 0.01 * expected_first, (site, down0, expected_first)
    expected = _full_message_bytes(weights)  # a full float32 copy of the model
    for r in records:
        for site, s in r["sites"].items():
            assert 0 < s["bytes_up"] < raw / 5, (r["round"], site, s["bytes_up"], raw)
        assert r["bytes_up"] == sum(s["bytes_up"] for s in r["sites"].values())
    # round 1: both sites hold round 0's model, so both get a difference
    assert all(s["bytes_down"] < raw / 5 for s in records[1]["sites"].values())
    # round 2: site-2's round-1 result was rejected (no acknowledgement), so it gets full weights again
    assert records[2]["sites"]["site-1"]["bytes_down"] < raw / 5
    assert abs(records[2]["sites"]["site-2"]["bytes_down"] - expected) < 0.01 * expected


def test_sites_kept_their_residual_and_global_model_copy(compressed_run):
    _, res, _ = compressed_run
    for site in ("site-1", "site-2"):
        job_dir = res.workspace / site / "simulate_job"
        assert (job_dir / "fedsegnet_uplink_residual.pt").exists()
        state = torch.load(job_dir / "fedsegnet_downlink_base.pt", weights_only=True)
        assert state["version"].startswith("2-")
        assert all(np.isfinite(v.numpy()).all() for v in state["weights"].values())


def test_bytes_reach_tensorboard(compressed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, res, _ = compressed_run
    acc = EventAccumulator(str(res.tb_dir / "server"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"round/bytes_up", "round/bytes_down", "bytes_up/site-1", "bytes_down/site-2"} <= tags
    records = res.read_records()
    assert [e.value for e in acc.Scalars("round/bytes_up")] == [r["bytes_up"] for r in records]
