"""A real `nvflare simulator` run of jobs/fedsegnet with ``secure_aggregation=true``: 2 sites, 2 rounds,
tiny preset, its cross-site evaluation and ledger as the job ships them.

Two test-only switches are set in the exported configs: sites keep their own weighted update and ring
input in their workspace (``keep_inputs``); the server keeps what it received (``keep_masked_inputs``).
The checks play the server: what it holds is compared with what only the sites hold.
"""

import json

import numpy as np
import pytest
import torch

from fedsegnet.flare.constants import SECAGG_DIR
from fedsegnet.flare.ops.jobs import configure_job
from fedsegnet.secagg import pack
from fedsegnet.training.spec import build_from_spec, load_model_file

from .conftest import JOBS, TINY_JOB_ARGS, run_two_sites

pytestmark = pytest.mark.slow
SITES = ["site-1", "site-2"]


def secagg_job(dst):
    """jobs/fedsegnet with TINY_JOB_ARGS and secure_aggregation=true, each side keeping its inputs for the checks."""
    job = configure_job(JOBS / "fedsegnet", dst, **TINY_JOB_ARGS, secure_aggregation=True)
    config = job / "app" / "config"
    server = json.loads((config / "config_fed_server.json").read_text())
    (workflow,) = [w for w in server["workflows"] if w["path"].endswith(".SecureScatterAndGather")]
    workflow["args"]["keep_masked_inputs"] = True
    (config / "config_fed_server.json").write_text(json.dumps(server, indent=2))
    client = json.loads((config / "config_fed_client.json").read_text())
    (executor,) = [e["executor"] for e in client["executors"] if e["executor"]["path"].endswith(".SecAggLearnerExecutor")]
    executor["args"]["keep_inputs"] = True
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


def test_every_round_sums_both_sites_with_aams_weights_from_their_reports(secagg_run):
    """The job's aggregation=aam weighs from what the sites reported (their Dice are still below AAM's
    min_signal after 4 steps, so the weights are the case counts); each site applied its weight."""
    res, rounds, sites, _ = secagg_run
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds:
        assert r["mode"] == "secure_aggregation" and r["aggregated"], r
        assert r["survivors"] == SITES and r["responders"] == SITES and r["dropped"] == {}
        assert r["key_check"] == "signed, no root CA"  # generated keys: said so, never "kit"
        n = r["n_train"]
        assert all(v > 0 for v in n.values())
        assert r["weighting"] == "aam (reported signals)" and set(r["aam"]) == set(SITES)
        for s in SITES:
            assert r["aam"][s]["score"] == 0 and r["aam"][s]["weight"] == pytest.approx(r["weights"][s])
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
            assert entry["aggregation"]["score"] == 0 and entry["aggregation"]["prior"] == pytest.approx(0.5)
            assert entry["n_values"] == 0  # the server got no tensor from the site: only the masked bytes


def test_the_server_holds_only_masked_inputs(secagg_run):
    res, rounds, sites, server_dir = secagg_run
    for rec in rounds:
        r, bits = rec["round"], rec["ring_bits"]
        for s in SITES:
            x = sites[(s, r)]["ring"]  # the site's true ring input (its weighted, quantised values and block scores)
            y = np.load(server_dir / f"round{r}_{s}_masked.npy")  # what the server received from it
            assert x.shape == y.shape == (rec["length"],) and x.size > 5_000
            assert np.mean(x == y) < 3 / 2**bits + 0.01, "the masked input equals the site's input"
            corr = np.corrcoef(_signed(x, bits).astype(np.float64), _signed(y, bits).astype(np.float64))[0, 1]
            assert abs(corr) < 6 / np.sqrt(x.size), f"round {r} {s}: masked input correlates with the input ({corr:.4f})"
            u = (y.astype(np.float64) + 0.5) / 2**bits  # uniform on (0, 1) when masked
            assert abs(u.mean() - 0.5) < 6 * np.sqrt(1 / 12 / u.size)
            # nowhere in the server's workspace (logs, records, models) is the site's input as bytes
            packed = pack(x, bits)
            mid = len(packed) // 2
            probe = packed[mid : mid + 64]
            assert len(set(probe)) > 8  # a window that is not a run of zero bytes
            for path in res.workspace.joinpath("server").rglob("*"):
                if path.is_file():
                    assert probe not in path.read_bytes(), f"{path} holds bytes of {s}'s round-{r} input"


def test_the_aggregate_is_the_sum_of_what_the_sites_sent_on_one_shared_support(secagg_run):
    """The ring sum is the sites' inputs' sum; the aggregate is exactly the sum of the values the sites'
    inputs stand for (the weights sum to 1), on one support shared by both sites (up_ratio of each
    large tensor, the small ones whole); it follows what the sites had to send there; the rest stays in their residuals."""
    res, rounds, sites, server_dir = secagg_run
    for r in rounds:
        rnd, bits = r["round"], r["ring_bits"]
        xs = [sites[(s, rnd)]["ring"] for s in SITES]
        ring_sum = np.load(server_dir / f"round{rnd}_ring_sum.npy")
        assert np.array_equal(ring_sum, ((xs[0].astype(np.uint64) + xs[1]) % 2**bits).astype(np.uint32))
        support = sites[(SITES[0], rnd)]["support"]
        np.testing.assert_array_equal(support, sites[(SITES[1], rnd)]["support"])
        aggregate = np.load(server_dir / f"round{rnd}_aggregate.npy")
        # up_ratio (10%) of each tensor of 2048 values or more, the smaller ones (9.5% of the tiny preset) whole
        assert 0.15 < support.size / aggregate.size < 0.25 and r["plan"]["support_values"] == support.size
        off = np.setdiff1d(np.arange(aggregate.size), support)
        assert np.all(aggregate[off] == 0)
        np.testing.assert_allclose(aggregate, sum(sites[(s, rnd)]["carried"] for s in SITES), rtol=0, atol=1e-9)
        pending = sum(sites[(s, rnd)]["weighted"] + sites[(s, rnd)]["residual_before"] for s in SITES)
        assert np.corrcoef(aggregate[support], pending[support])[0, 1] > 0.9
        for s in SITES:  # what a site did not send it keeps: nothing lost
            d = sites[(s, rnd)]
            np.testing.assert_allclose(d["carried"] + d["residual"], d["weighted"] + d["residual_before"], atol=1e-12)
        assert r["aggregate_norm"] == pytest.approx(np.linalg.norm(aggregate))
    assert [r["plan"]["value_bits"] for r in rounds] == [16, 4]  # round 1 is planned from round 0's block scores
    assert [r["planned_from"] for r in rounds] == ["random (no scores yet)", "scores"]


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


def test_cross_site_evaluation_scores_only_global_models_and_sites_refuse_to_send_their_own(secagg_run):
    """The job's cross-site evaluation asks each site for its local model (the global model plus its
    update, which would undo the masking); each site refuses, and only the server's models are scored."""
    res, _, _, _ = secagg_run
    results = json.loads(res.cross_site.read_text())
    assert sorted(results) == SITES
    for site, scored in results.items():
        assert sorted(scored) == ["SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"], scored
        log = (res.workspace / site / "log.txt").read_text()
        assert f"site {site}: task 'submit_model' refused: this job runs with secure_aggregation=true" in log


def test_the_ledger_records_each_rounds_masked_inputs_and_verifies(secagg_run):
    from fedsegnet.ledger import Ledger, verify

    res, rounds, _, _ = secagg_run
    folder = res.job_root / "fedsegnet_ledger"
    result = verify(folder, models={"final": res.global_model, "best": res.best_model})
    assert result.ok, "\n".join(result.lines())
    entries = [e for e in Ledger.open(folder).entries if e["kind"] == "round"]
    assert [e["round"] for e in entries] == [0, 1]
    hashes = set()
    for e, r in zip(entries, rounds):
        assert e["aggregation"]["method"] == "secure_aggregation" and e["codec"] == {}  # no codec: the masked ring inputs (the plan is in the round record)
        assert sorted(e["sites"]) == sorted(e["witnesses"]) == SITES  # every site countersigned the head it was sent
        for site in SITES:
            assert e["sites"][site]["weight"] == pytest.approx(r["weights"][site])
            assert e["sites"][site]["signals"]["secagg"] == "survivor"
            hashes.add(e["sites"][site]["payload_sha256"])
    assert len(hashes) == 2 * len(SITES)  # one distinct masked input per site and round


def test_round_records_count_every_steps_bytes(secagg_run):
    """Bytes of all four exchanges, both ways, per site and round (the masked input is the big one)."""
    res, rounds, sites, _ = secagg_run
    for rec in res.read_records():
        for site in SITES:
            s = rec["sites"][site]
            d = sites[(site, rec["round"])]
            packed = len(pack(d["ring"], int(d["ring_bits"])))
            assert packed <= s["bytes_up"] <= 1.2 * packed + 20_000, s["bytes_up"]
            numel = d["weighted"].size
            if rec["round"] == 0:  # the first global model in full, 8-bit values (down_first_bits)
                assert numel <= s["bytes_down"] <= 2 * numel
            else:  # the global model's difference, compressed as in the plain mode (down_ratio, down_bits):
                assert s["bytes_down"] < numel / 2  # under half of round 0's full 8-bit model (32.6 KB of 96.5 K values)
            print(f"round {rec['round']} {site}: {s['bytes_up']:,} B up, {s['bytes_down']:,} B down")  # -s shows them
        assert rec["bytes_up"] == sum(rec["sites"][s]["bytes_up"] for s in SITES)


def test_the_report_says_the_round_ran_under_secure_aggregation(secagg_run, tmp_path):
    from fedsegnet.report import build_report

    res, _, _, _ = secagg_run
    page = build_report(res.workspace, tmp_path / "report").read_text()
    assert "secure aggregation (pairwise masks" in page and "only each round&#x27;s weighted sum" in page
    assert "AAM&#x27;s from the sites&#x27; reports" in page and "one support per round for every site" in page
    assert "<h2>Secure aggregation rounds</h2>" in page  # each round: survivors, drop-outs, weights, support
    assert page.count("site-1, site-2") >= 2 and "random (no scores yet)" in page and "4-bit in Z_2^5" in page
    records = res.read_records()  # the same facts in the round records
    assert [r["secure_aggregation"]["survivors"] for r in records] == [SITES, SITES]
    assert all(r["secure_aggregation"]["dropped"] == {} and r["secure_aggregation"]["aggregated"] for r in records)
