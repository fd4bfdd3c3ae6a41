"""The ledger's FLARE components on real FLARE objects (Shareable, DXO, FLContext), without processes:
what they do with bad input from a site or a server, and that a broken ledger never stops training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from fedsegnet.flare.constants import UpdateMeta
from fedsegnet.flare.ledger import (
    BUNDLE_HEADER,
    WITNESS_META,
    LedgerKeeper,
    LedgerResultFilter,
    LedgerTaskFilter,
    SiteLedgerWitness,
    witness_task,
)
from fedsegnet.ledger import Ledger, LedgerError, WitnessError, generate_signer, job_start_entry


class _Engine:
    def __init__(self, components):
        self.components = components

    def get_component(self, cid):
        return self.components.get(cid)


def _ctx(engine, identity="server", peer=None):
    ctx = FLContext()
    ctx.put(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.put(ReservedKey.IDENTITY_NAME, identity, private=False, sticky=False)
    if peer:
        p = FLContext()
        p.put(ReservedKey.IDENTITY_NAME, peer, private=False, sticky=False)
        ctx.set_peer_context(p)
    return ctx


@pytest.fixture
def keeper(tmp_path):
    k = LedgerKeeper()
    k.signer = generate_signer("server")
    k.ledger = Ledger.create(tmp_path / "fedsegnet_ledger", "job-1-abcd1234")
    k.ledger.append(job_start_entry(job_id="job-1", job_config_sha256="0" * 64, code_version="t",
                                    participants=["site-1", "site-2"], server="server"))  # fmt: skip
    k.ledger.sign_head(k.signer)
    return k


def _site(tmp_path, name="site-1") -> SiteLedgerWitness:
    w = SiteLedgerWitness()
    w.signer = generate_signer(name)
    w._root = tmp_path / name / "fedsegnet_ledger_witness"
    return w


def test_the_bundle_goes_out_and_a_site_countersigns_it(keeper, tmp_path):
    task = LedgerTaskFilter().process(Shareable(), _ctx(_Engine({"ledger": keeper}), peer="site-1"))
    site = _site(tmp_path)
    meta = witness_task(task, _ctx(_Engine({"ledger_witness": site}), identity="site-1"))
    assert meta[WITNESS_META]["site"] == "site-1" and meta[WITNESS_META]["size"] == 1
    assert (tmp_path / "site-1" / "fedsegnet_ledger_witness" / "job-1-abcd1234" / "ledger_heads_seen.jsonl").is_file()
    # the server keeps a witness that verifies, and drops one claimed for another site
    update = DXO(DataKind.WEIGHT_DIFF, data={"w": np.ones(3, np.float32)}, meta={UpdateMeta.ROUND: 0, **meta}).to_shareable()
    LedgerResultFilter().process(update, _ctx(_Engine({"ledger": keeper}), peer="site-1"))
    assert keeper._received["site-1"]["witness"] == meta[WITNESS_META] and keeper._received["site-1"]["round"] == 0
    LedgerResultFilter().process(update, _ctx(_Engine({"ledger": keeper}), peer="site-2"))
    assert keeper._received["site-2"]["witness"] is None  # site-2 sent site-1's record: not kept
    assert keeper._received["site-2"]["payload_sha256"] == keeper._received["site-1"]["payload_sha256"]


def test_a_tampered_witness_signature_is_not_kept(keeper, tmp_path):
    task = LedgerTaskFilter().process(Shareable(), _ctx(_Engine({"ledger": keeper}), peer="site-1"))
    meta = witness_task(task, _ctx(_Engine({"ledger_witness": _site(tmp_path)}), identity="site-1"))
    meta[WITNESS_META] = {**meta[WITNESS_META], "size": 7}
    update = DXO(DataKind.WEIGHT_DIFF, data={"w": np.ones(3, np.float32)}, meta={UpdateMeta.ROUND: 0, **meta}).to_shareable()
    LedgerResultFilter().process(update, _ctx(_Engine({"ledger": keeper}), peer="site-1"))
    assert keeper._received["site-1"]["witness"] is None


@pytest.mark.parametrize("log_id", ["../../etc", "a/b", "", ".hidden", "x" * 200])
def test_a_site_refuses_a_log_id_that_is_not_a_plain_name(tmp_path, keeper, log_id):
    bundle = keeper.ledger.witness_bundle("site-1")
    bundle["head"] = {**bundle["head"], "log_id": log_id}
    with pytest.raises(WitnessError, match="not a plain name"):
        _site(tmp_path).check(json.dumps(bundle))
    assert not (tmp_path / "etc").exists()


def test_a_site_refuses_a_second_ledger_in_one_job(tmp_path, keeper):
    site = _site(tmp_path)
    site.check(json.dumps(keeper.ledger.witness_bundle("site-1")))
    other = Ledger.create(tmp_path / "other", "job-1-ffff0000")
    other.append(job_start_entry(job_id="job-1", job_config_sha256="0" * 64, code_version="t", participants=["site-1"], server="server"))
    other.sign_head(keeper.signer)
    with pytest.raises(WitnessError, match="switched ledgers mid-job"):
        site.check(json.dumps(other.witness_bundle("site-1")))
    with pytest.raises(WitnessError, match="malformed"):
        site.check("{not json")


def test_a_broken_ledger_stops_the_ledger_not_the_task(keeper):
    def broken(site):
        raise LedgerError("disk full")

    keeper.ledger.witness_bundle = broken
    task = Shareable()
    out = LedgerTaskFilter().process(task, _ctx(_Engine({"ledger": keeper}), peer="site-1"))
    assert out is task and out.get_header(BUNDLE_HEADER) is None
    assert keeper.ledger is None and "disk full" in keeper.error
    # the next task goes out without a bundle, the sites then do not witness
    assert LedgerTaskFilter().process(Shareable(), _ctx(_Engine({"ledger": keeper}), peer="site-2")).get_header(BUNDLE_HEADER) is None


def test_an_update_that_cannot_be_hashed_is_left_to_the_decoder(keeper):
    update = DXO(DataKind.WEIGHT_DIFF, data={"w": np.array([object()], dtype=object)}, meta={UpdateMeta.ROUND: 0}).to_shareable()
    out = LedgerResultFilter().process(update, _ctx(_Engine({"ledger": keeper}), peer="site-1"))
    assert out is update and "site-1" not in keeper._received


def test_no_bundle_or_no_witness_component_means_no_witness(tmp_path, keeper):
    assert witness_task(Shareable(), _ctx(_Engine({}), identity="site-1")) == {}
    task = LedgerTaskFilter().process(Shareable(), _ctx(_Engine({"ledger": keeper}), peer="site-1"))
    assert witness_task(task, _ctx(_Engine({}), identity="site-1")) == {}
