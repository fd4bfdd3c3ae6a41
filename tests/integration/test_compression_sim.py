"""A real `nvflare simulator` run of jobs/fedsegnet (compression both ways, the ledger) with one
corrupted update (site-2, round 1) and one rewritten ledger history shown to site-1 (round 3)."""

import json
import shutil

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.fuel.utils import fobs
from nvflare.private.fed.utils.fed_utils import nvflare_fobs_initialize

from fedsegnet.compression import SparseQuantCodec
from fedsegnet.flare.constants import CodecMeta
from fedsegnet.flare.ledger import BUNDLE_HEADER
from fedsegnet.ledger import Ledger
from fedsegnet.flare.ops.jobs import configure_job
from fedsegnet.training.spec import build_from_spec, load_model_file

from .conftest import JOBS, TINY_JOB_ARGS, run_two_sites

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compressed_run(tiny_sites, tmp_path_factory):
    work = tmp_path_factory.mktemp("fedsegnet")
    job = configure_job(JOBS / "fedsegnet", work / "fedsegnet", **{**TINY_JOB_ARGS, "num_rounds": 4})
    client_cfg = job / "app" / "config" / "config_fed_client.json"
    cfg = json.loads(client_cfg.read_text())
    filters = cfg["task_result_filters"][0]["filters"]
    assert [f["path"].rsplit(".", 1)[1] for f in filters] == ["UpdateEncoder", "LedgerPayloadRecorder"]
    # the site's own bug: what it records as sent is the corrupted payload
    filters.insert(1, {"path": "fedsegnet.flare.faults.CorruptPayload", "args": {"sites": ["site-2"], "rounds": [1], "mode": "truncate"}})
    client_cfg.write_text(json.dumps(cfg, indent=2))
    server_cfg = job / "app" / "config" / "config_fed_server.json"
    cfg = json.loads(server_cfg.read_text())
    filters = cfg["task_data_filters"][0]["filters"]
    at = [f["path"] for f in filters].index("fedsegnet.flare.ledger.LedgerTaskFilter") + 1
    # a dishonest server: site-1 is shown, in round 3, a history whose round 0 was rewritten
    filters.insert(at, {"path": "fedsegnet.flare.faults.RewriteLedgerHistory", "args": {"sites": ["site-1"], "rounds": [3]}})
    server_cfg.write_text(json.dumps(cfg, indent=2))
    return run_two_sites(job, work / "ws", tiny_sites)


def test_job_finishes_despite_the_corrupted_update(compressed_run):
    rc, res, run = compressed_run
    assert rc == 0, f"simulator failed, see {run.log_file}:\n{run.log_file.read_text()[-3000:]}"
    assert [r["round"] for r in res.read_records()] == [0, 1, 2, 3]


def test_server_names_the_site_and_the_reason(compressed_run):
    _, res, _ = compressed_run
    log = res.server_log.read_text()
    assert "update of site site-2 (round 1) rejected: payload: field 'values' has" in log
    r1 = res.read_records()[1]
    assert any(e["site"] == "site-2" and "rejected" in e["message"] for e in r1["errors"])
    # only site-1's update entered round 1; both entered rounds 0 and 2; site-1 refused round 3's head
    contributed = [sorted(s for s, v in r["sites"].items() if v.get("n_train")) for r in res.read_records()]
    assert contributed == [["site-1", "site-2"], ["site-1"], ["site-1", "site-2"], ["site-2"]]


def test_global_model_is_intact(compressed_run):
    _, res, _ = compressed_run
    model, spec = load_model_file(res.global_model)
    torch.manual_seed(TINY_JOB_ARGS["seed"])
    initial = build_from_spec(spec).state_dict()
    trained = model.state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert sum(not torch.equal(trained[k].float(), initial[k].float()) for k in trained) > len(trained) // 2


def _full_message_bytes(data, bundle=None) -> int:
    """What a full downlink message carrying ``data`` (and the ledger's ``bundle``) serialises to, built here independently."""
    nvflare_fobs_initialize()
    info = {"mode": "full", "base": None, "version": "0-" + "0" * 12}
    msg = DXO(DataKind.WEIGHTS, data=data, meta={CodecMeta.DOWNLINK: info}).to_shareable()
    if bundle is not None:
        msg.set_header(BUNDLE_HEADER, json.dumps(bundle))
    return len(fobs.dumps(msg))


def _bundle_at(res, tmp_path, size: int, site: str) -> dict:
    """The ledger bundle ``site`` was sent when the ledger had ``size`` entries (and their heads),
    rebuilt here from a copy of the ledger cut at that size."""
    src, dst = res.job_root / "fedsegnet_ledger", tmp_path / f"ledger_{size}_{site}"
    shutil.copytree(src, dst)
    for name in ("entries.jsonl", "heads.jsonl"):
        lines = (src / name).read_bytes().splitlines(keepends=True)
        (dst / name).write_bytes(b"".join(lines[:size]))
    return Ledger.open(dst).witness_bundle(site)


def test_recorded_bytes_are_serialized_message_sizes(compressed_run, tmp_path):
    _, res, _ = compressed_run
    records = res.read_records()
    _, spec = load_model_file(res.global_model)
    torch.manual_seed(TINY_JOB_ARGS["seed"])
    weights = {k: v.float().numpy() for k, v in build_from_spec(spec).state_dict().items()}
    raw = sum(v.nbytes for v in weights.values())
    # round 0: the initial model, 8-bit dense (down_first_bits), encoded the same way here
    first, _ = SparseQuantCodec(ratio=1.0, dense_bits=8, block=256).encode(weights)
    expected_first_plain = _full_message_bytes(first)
    assert expected_first_plain < raw / 3
    for site in ("site-1", "site-2"):
        # the ledger's bundle (job_start's head) travels with the task, and is counted
        expected_first = _full_message_bytes(first, _bundle_at(res, tmp_path, 1, site))
        down0 = records[0]["sites"][site]["bytes_down"]
        # the same content plus FLARE's task headers (task id, cookies): within 1%
        assert abs(down0 - expected_first) < 0.01 * expected_first, (site, down0, expected_first)
    # a full float32 copy of the model, with the bundle of a ledger of 3 entries (job_start, rounds 0, 1)
    expected = _full_message_bytes(weights, _bundle_at(res, tmp_path, 3, "site-2"))
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
        # both decoded the last round's task (site-1 before it refused that round's ledger head)
        assert state["version"].startswith("3-")
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


def test_the_ledger_verifies_and_records_what_happened(compressed_run):
    from fedsegnet.ledger import hash_weights, verify
    from fedsegnet.ledger.entries import entry_label

    _, res, _ = compressed_run
    folder = res.job_root / "fedsegnet_ledger"
    result = verify(folder, models={"final": res.global_model, "best": res.best_model})
    assert result.ok, "\n".join(result.lines())
    entries = Ledger.open(folder).entries
    assert [entry_label(e) for e in entries] == ["job_start", "round 0", "round 1", "round 2", "round 3", "job_end"]
    rounds = entries[1:5]
    assert [sorted(e["sites"]) for e in rounds] == [["site-1", "site-2"], ["site-1"], ["site-1", "site-2"], ["site-2"]]
    for e in rounds:  # every accepted site countersigned the head it was sent
        assert set(e["sites"]) <= set(e["witnesses"]), e["round"]
    # round 1: site-2's corrupted payload is in the ledger as refused, with the decoder's reason
    assert rounds[1]["refused"]["site-2"]["payload_sha256"]
    assert "payload: field 'values'" in rounds[1]["refused"]["site-2"]["reason"]
    # round 3: site-1 refused the rewritten history and said why; the server log names it too
    reason = rounds[3]["refused"]["site-1"]["reason"]
    assert "refuses the ledger head" in reason and "not consistent with the head" in reason, reason
    assert "site site-1 reported an error: site 'site-1' refuses the ledger head" in res.server_log.read_text()
    # what the sites recorded as sent is what the ledger holds, round by round
    for site in ("site-1", "site-2"):
        (seen,) = (res.workspace / site / "fedsegnet_ledger_witness").glob("*/ledger_heads_seen.jsonl")
        sent = {r["round"]: r["payload_sha256"] for r in map(json.loads, seen.read_text().splitlines()) if r["kind"] == "payload"}
        held = {e["round"]: (e["sites"].get(site) or e["refused"].get(site) or {}).get("payload_sha256") for e in rounds}
        assert sent == {r: h for r, h in held.items() if h}, site
    # the last round's global model hash is the saved final model's
    model, _ = load_model_file(res.global_model)
    assert hash_weights({k: v.numpy() for k, v in model.state_dict().items()}) == rounds[-1]["global_after"]
