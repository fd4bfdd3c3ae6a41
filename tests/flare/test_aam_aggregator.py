"""AAMAggregator on real FLARE objects: accept/refuse, aggregate, the round record, state saved with the model."""

import json
import logging

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.shareable import make_reply
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.apis.event_type import EventType

from fedsegnet.aggregation import aggregate_mean, aggregate_median
from fedsegnet.flare.aggregator import AAMAggregator, SharedKeysWeightedAggregator
from fedsegnet.flare.constants import AAM_RECORD_EVENT, ERROR_HEADER, ROUND_RECORDS_FILE, UpdateMeta
from fedsegnet.flare.persistor import SegModelPersistor
from fedsegnet.flare.widgets import RoundRecorder
from fedsegnet.flare.workflow import ROUND_SITES_EVENT, ROUND_SITES_PROP

from .test_compression_filters import _ctx, _Engine

SHAPES = {"w": (32, 16), "b": (16,)}


def _global():
    return {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}


def _update(seed, scale=1.0, density=1.0):
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0)
    out = {}
    for k, s in SHAPES.items():
        v = (base.normal(size=s) + 0.3 * rng.normal(size=s)).astype(np.float32) * scale
        if density < 1:
            v[rng.random(s) > density] = 0
        out[k] = v
    return out


def _result(update, n_train=10, agreement=0.8, local=0.8, rnd=2, personal=None):
    meta = {UpdateMeta.N_TRAIN: n_train, UpdateMeta.LABEL_AGREEMENT: agreement, UpdateMeta.VAL_DICE_LOCAL: local,
            UpdateMeta.LABEL_KIND: "voxel", MetaKey.INITIAL_METRICS: 0.5}  # as LearnerExecutor sends it  # fmt: skip
    if personal is not None:
        meta[UpdateMeta.PERSONAL_KEYS] = list(personal)
    s = DXO(DataKind.WEIGHT_DIFF, data=update, meta=meta).to_shareable()
    s.set_header(AppConstants.CURRENT_ROUND, rnd)
    return s


def _server(tmp_path, agg, site, extra=None):
    engine = _Engine(tmp_path, {"aggregator": agg, **(extra or {})})
    return _ctx(engine, "server", peer=site, **{AppConstants.GLOBAL_MODEL: make_model_learnable(_global(), {}),
                                               AppConstants.CURRENT_ROUND: 2})  # fmt: skip


def _feed(tmp_path, agg, results):
    return {site: agg.accept(r, _server(tmp_path, agg, site)) for site, r in results.items()}


def test_aam_round_downweights_the_disagreeing_site_and_publishes_the_record(tmp_path, caplog):
    agg = AAMAggregator()
    results = {f"site-{i}": _result(_update(i), agreement=0.5 if i == 4 else 0.85) for i in range(1, 5)}
    assert all(_feed(tmp_path, agg, results).values())
    ctx = _server(tmp_path, agg, "site-1")
    with caplog.at_level(logging.INFO):
        out = agg.aggregate(ctx)
    dxo = from_shareable(out)
    assert dxo.data_kind == DataKind.WEIGHT_DIFF and set(dxo.data) == set(SHAPES)
    events = [e for e, _ in ctx.get_engine().events]
    assert AAM_RECORD_EVENT in events
    record = ctx.get_prop("fedsegnet.aam_record")
    w = {s: r["weight"] for s, r in record["sites"].items()}
    assert w["site-4"] < 0.7 * min(w[s] for s in ("site-1", "site-2", "site-3")) and sum(w.values()) == pytest.approx(1.0)
    lines = [r.getMessage() for r in caplog.records if "round 2 site-" in r.getMessage()]
    assert len(lines) == 4 and any(f"site-4: weight {w['site-4']:.3f}" in line for line in lines)


@pytest.mark.parametrize(
    "bad,reason",
    [({"w": np.full(SHAPES["w"], np.inf, np.float32), "b": np.zeros(16, np.float32)}, "NaN or Inf"),
     ({"w": np.zeros((16, 32), np.float32), "b": np.zeros(16, np.float32)}, "shape"),
     ({"w": np.zeros(SHAPES["w"], np.float32)}, "names")],
)  # fmt: skip
def test_bad_update_is_refused_naming_the_site_and_the_round_goes_on(tmp_path, caplog, bad, reason):
    agg = AAMAggregator()
    with caplog.at_level(logging.ERROR):
        accepted = _feed(tmp_path, agg, {"site-1": _result(_update(1)), "site-2": _result(bad), "site-3": _result(_update(3))})
    assert accepted == {"site-1": True, "site-2": False, "site-3": True}
    assert any("site site-2 refused" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    ctx = _server(tmp_path, agg, "site-1")
    out = from_shareable(agg.aggregate(ctx)).data
    assert all(np.isfinite(v).all() for v in out.values())
    record = ctx.get_prop("fedsegnet.aam_record")
    assert record["sites"]["site-2"]["accepted"] is False and reason in record["sites"]["site-2"]["gate"]


def test_metrics_kind_is_refused(tmp_path):
    agg = AAMAggregator()
    assert not agg.accept(DXO(DataKind.METRICS, data={"val_dice": 0.5}).to_shareable(), _server(tmp_path, agg, "site-1"))


def test_second_update_of_a_site_in_a_round_is_refused(tmp_path):
    agg = AAMAggregator()
    assert agg.accept(_result(_update(1)), _server(tmp_path, agg, "site-1"))
    assert not agg.accept(_result(_update(2)), _server(tmp_path, agg, "site-1"))


def test_sparse_updates_are_kept_sparse(tmp_path):
    agg = AAMAggregator()
    _feed(tmp_path, agg, {f"site-{i}": _result(_update(i, density=0.1)) for i in range(1, 4)})
    held = sum(u.nbytes for u in agg._updates.values())
    dense = sum(u.dense_nbytes for u in agg._updates.values())
    assert held < 0.3 * dense


@pytest.mark.parametrize("method", ["mean", "median"])
def test_baseline_methods(tmp_path, method):
    agg = AAMAggregator(method=method)
    ups = {f"site-{i}": _update(i) for i in range(1, 4)}
    n = {"site-1": 5, "site-2": 8, "site-3": 10}  # within the peer bound (2 x the others' lower median)
    _feed(tmp_path, agg, {s: _result(u, n_train=n[s]) for s, u in ups.items()})
    out = from_shareable(agg.aggregate(_server(tmp_path, agg, "site-1"))).data
    expected = aggregate_mean(list(ups.values()), list(n.values())) if method == "mean" else aggregate_median(list(ups.values()))
    for k in SHAPES:
        np.testing.assert_allclose(out[k], expected[k], rtol=1e-5, atol=1e-6)


def test_fedavg_controller_interface_full_weights_and_no_update(tmp_path):
    """accept_model/aggregate_model as FLARE's FedAvg controller calls them; FULL weights become a difference."""
    agg = AAMAggregator(method="mean")
    agg.fl_ctx = _server(tmp_path, agg, "site-1")
    full = {k: v + 1.0 for k, v in _update(1).items()}
    assert agg.accept_model(FLModel(params_type=ParamsType.FULL, params=full, meta={"client_name": "site-1", UpdateMeta.N_TRAIN: 3}))
    model = agg.aggregate_model()
    assert model.params_type == ParamsType.DIFF
    np.testing.assert_allclose(model.params["w"], full["w"])  # global is zero
    assert agg.aggregate_model().params == {}  # nothing accepted: no change
    with pytest.raises(ValueError, match=r"aggregation=.krum.: unknown value \(valid: aam, mean, median, trimmed_mean\)"):
        AAMAggregator(method="krum")


def test_round_recorder_writes_the_aggregation_record(tmp_path):
    agg = AAMAggregator()
    recorder = RoundRecorder(tb_folder="")
    ctx = _server(tmp_path, agg, "site-1", extra={"round_recorder": recorder})
    ctx.get_engine().components["round_recorder"] = recorder
    recorder.handle_event(EventType.START_RUN, ctx)
    recorder.handle_event(AppEventType.ROUND_STARTED, ctx)
    _feed(tmp_path, agg, {f"site-{i}": _result(_update(i)) for i in range(1, 4)})
    agg.aggregate(ctx)
    recorder.handle_event(AppEventType.ROUND_DONE, ctx)
    record = json.loads((tmp_path / "job-1" / ROUND_RECORDS_FILE).read_text().splitlines()[-1])
    assert record["aggregation_method"] == "aam"
    weights = [record["sites"][s]["aggregation"]["weight"] for s in ("site-1", "site-2", "site-3")]
    assert sum(weights) == pytest.approx(1.0)
    assert record["sites"]["site-1"]["aggregation"]["gate"] == "accepted"


def test_aam_state_is_saved_with_the_global_model_and_restored(tmp_path):
    agg = AAMAggregator()
    for rnd in range(2):
        _feed(tmp_path, agg, {f"site-{i}": _result(_update(i + rnd), agreement=0.3 if i == 2 else 0.9) for i in range(1, 4)})
        agg.aggregate(_server(tmp_path, agg, "site-1"))
    persistor = SegModelPersistor(num_classes=2, preset="tiny")
    ctx = _server(tmp_path, agg, "site-1", extra={"persistor": persistor})
    ctx.set_prop(FLContextKey.APP_ROOT, str(tmp_path / "app"), private=True, sticky=False)
    (tmp_path / "app").mkdir()
    persistor.handle_event(EventType.START_RUN, ctx)
    learnable = persistor.load_model(ctx)
    persistor.save_model(learnable, ctx)
    saved = torch.load(tmp_path / "app" / "FL_global_model.pt", weights_only=True)
    assert saved["train_conf"]["fedsegnet_aam"] == agg.state_dict()
    assert "fedsegnet" in saved["train_conf"]  # the model spec stays

    fresh = AAMAggregator()
    restored = SegModelPersistor(num_classes=2, preset="tiny", source_ckpt_file_full_name=str(tmp_path / "app" / "FL_global_model.pt"))
    ctx2 = _server(tmp_path, fresh, "site-1", extra={"persistor": restored})
    ctx2.set_prop(FLContextKey.APP_ROOT, str(tmp_path / "app2"), private=True, sticky=False)
    (tmp_path / "app2").mkdir()
    restored.handle_event(EventType.START_RUN, ctx2)
    restored.load_model(ctx2)
    assert fresh.state_dict() == agg.state_dict() and fresh.aam.rounds == 2


# ------------------------------------------------------------------------------ attacks by one site or k colluding sites
def _norm(update):
    return float(np.sqrt(sum(float(np.sum(np.square(v))) for v in update.values())))


def _round(tmp_path, agg, results):
    accepted = _feed(tmp_path, agg, results)
    ctx = _server(tmp_path, agg, "site-1")
    out = from_shareable(agg.aggregate(ctx)).data
    return accepted, out, ctx.get_prop("fedsegnet.aam_record")


@pytest.mark.parametrize("colluders", [1, 2])
@pytest.mark.parametrize("method", ["aam", "mean", "median"])
def test_declared_personal_keys_cannot_drop_an_honest_site(tmp_path, method, colluders):
    """Sites that arrive first declaring "w" personal (sending only "b") are refused; the honest site carries the round."""
    agg = AAMAggregator(method=method)
    results = {f"site-{i}": _result({"b": _update(i)["b"]}, personal=["w"]) for i in range(1, colluders + 1)}
    honest = f"site-{colluders + 1}"
    results[honest] = _result(_update(9))
    accepted, out, record = _round(tmp_path, agg, results)
    assert accepted[honest] and not any(accepted[s] for s in results if s != honest)
    assert "the job keeps 0 at the sites" in record["sites"]["site-1"]["gate"]
    assert set(out) == set(SHAPES)
    np.testing.assert_allclose(out["w"], _update(9)["w"], rtol=1e-5)  # the honest update alone, not dropped
    assert record["sites"][honest]["accepted"] and record["sites"][honest]["weight"] in (1.0, None)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(SHAPES["w"]))
        self.b = torch.nn.Parameter(torch.zeros(SHAPES["b"]))


class _Holder:  # what the job's persistor offers: the network it built
    model = _Net()

    def handle_event(self, event_type, fl_ctx):
        pass


def test_the_job_decides_the_personal_keys_and_a_site_declaring_another_set_is_refused(tmp_path):
    agg = AAMAggregator(personal_keys=["b"])
    honest = {f"site-{i}": _result({"w": _update(i)["w"]}, personal=["b"]) for i in (1, 2, 3)}
    results = {
        "site-0": _result({"b": _update(0)["b"]}, personal=["w"]),  # arrives first, declares another set
        "site-4": _result(_update(4), personal=[]),  # declares nothing and sends the job's personal key
        "site-5": _result(_update(5), personal=["b"]),  # declares the set but sends "b" anyway
        **honest,
    }
    engine_extra = {"persistor": _Holder()}
    accepted = {site: agg.accept(r, _server(tmp_path, agg, site, extra=engine_extra)) for site, r in results.items()}
    assert accepted == {"site-0": False, "site-4": False, "site-5": False, "site-1": True, "site-2": True, "site-3": True}
    ctx = _server(tmp_path, agg, "site-1", extra=engine_extra)
    out = from_shareable(agg.aggregate(ctx)).data
    record = ctx.get_prop("fedsegnet.aam_record")
    assert set(out) == {"w"} and "sends 1 key(s) the job keeps" in record["sites"]["site-5"]["gate"]
    assert sum(record["sites"][s]["weight"] for s in honest) == pytest.approx(1.0)


def test_a_job_that_keeps_keys_needs_the_network_and_refuses_without_it(tmp_path):
    agg = AAMAggregator(personalization="fedbn")
    assert not agg.accept(_result(_update(1)), _server(tmp_path, agg, "site-1"))  # no persistor: refused, no crash
    with pytest.raises(ValueError, match="personalization"):
        AAMAggregator(personalization="bogus")


@pytest.mark.parametrize("factor", [10.0, 1000.0])
@pytest.mark.parametrize("warm_rounds", [0, 3])
def test_two_sites_a_scaled_update_moves_the_model_no_more_than_an_honest_one(tmp_path, factor, warm_rounds):
    """Round 0 (no history) and after honest rounds: x10 and x1000 of one of two sites."""
    agg = AAMAggregator()
    for r in range(warm_rounds):
        _round(tmp_path, agg, {"site-1": _result(_update(10 + r)), "site-2": _result(_update(20 + r))})
    honest, own = _update(1), _update(2)
    accepted, out, record = _round(tmp_path, agg, {"site-1": _result(honest), "site-2": _result({k: factor * v for k, v in own.items()})})
    w = {s: record["sites"][s]["weight"] for s in ("site-1", "site-2") if record["sites"][s]["accepted"]}
    assert w.get("site-2", 0.0) <= w["site-1"]  # the larger update is never favoured
    assert _norm(out) <= 1.1 * max(_norm(honest), _norm(own))  # moved no more than an honest update would


def test_a_lone_scaled_update_is_bounded_by_the_history_after_a_restart(tmp_path):
    agg = AAMAggregator()
    for r in range(3):
        _round(tmp_path, agg, {"site-1": _result(_update(10 + r)), "site-2": _result(_update(20 + r))})
    restarted = AAMAggregator()
    restarted.load_state_dict(json.loads(json.dumps(agg.state_dict())))  # as the persistor saves and restores it
    honest = _update(1)
    _, out, _ = _round(tmp_path, restarted, {"site-2": _result({k: 10 * v for k, v in _update(2).items()})})
    assert _norm(out) <= 2.05 * _norm(honest)  # at most clip_norm x the history's reference norm


@pytest.mark.parametrize("method", ["aam", "mean"])
def test_an_overclaimed_case_count_is_bounded_by_the_peers(tmp_path, method):
    agg = AAMAggregator(method=method)
    results = {f"site-{i}": _result(_update(i), n_train=10) for i in (1, 2, 3)}
    results["site-4"] = _result(_update(4), n_train=1e9)
    _, _, record = _round(tmp_path, agg, results)
    w = {s: r["weight"] for s, r in record["sites"].items()}
    assert w["site-4"] <= 2 / 5 + 1e-6 and min(w[s] for s in ("site-1", "site-2", "site-3")) >= 1 / 5 - 1e-6


def test_two_colluders_overclaiming_cases_cannot_starve_the_third(tmp_path):
    agg = AAMAggregator()
    results = {"site-1": _result(_update(1), n_train=1e9), "site-2": _result(_update(2), n_train=1e9),
               "site-3": _result(_update(3), n_train=10)}  # fmt: skip
    _, _, record = _round(tmp_path, agg, results)
    assert record["sites"]["site-3"]["weight"] >= 0.2 - 1e-6


def _spread_update(seed, spread=1.0):
    """An honest update: the common direction plus as much site noise (pairwise cosines about 0.5, as in early rounds)."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0)
    return {k: (base.normal(size=s) + spread * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}


@pytest.mark.parametrize("k", [3, 4, 6])
def test_a_random_update_of_ordinary_norm_is_down_weighted(tmp_path, k):
    agg = AAMAggregator()
    honest = {f"site-{i}": _spread_update(i) for i in range(1, k)}
    rng = np.random.default_rng(99)
    noise = {n: (rng.normal(size=v.shape) * float(v.std())).astype(np.float32) for n, v in honest["site-1"].items()}
    _, out, record = _round(tmp_path, agg, {**{s: _result(u) for s, u in honest.items()}, f"site-{k}": _result(noise)})
    w = {s: r["weight"] for s, r in record["sites"].items()}
    assert w[f"site-{k}"] <= 0.1 and w[f"site-{k}"] < 0.35 * min(w[s] for s in honest)  # 0.03-0.09 at T = 0.2
    mean = aggregate_mean(list(honest.values()))
    cos = sum(float(np.sum(out[n] * mean[n])) for n in SHAPES) / (_norm(out) * _norm(mean))
    assert cos > 0.95


def test_fedavg_jobs_weighted_aggregator_takes_only_the_jobs_shared_keys(tmp_path):
    """jobs/fedavg: FLARE's weighted aggregator behind the same rule; a site cannot update a key the sites keep."""
    agg = SharedKeysWeightedAggregator(personal_keys=["b"])
    extra = {"persistor": _Holder()}
    honest = _update(1)
    results = {
        "site-0": _result({"b": _update(0)["b"]}, personal=["w"]),  # declares another set
        "site-2": _result(_update(2), personal=["b"]),  # sends the key the sites keep
        "site-1": _result({"w": honest["w"]}, personal=["b"]),
    }
    for r in results.values():
        r.add_cookie(AppConstants.CONTRIBUTION_ROUND, 2)  # as ScatterAndGather marks a task's result
    agg.handle_event(EventType.START_RUN, _server(tmp_path, agg, "site-1", extra=extra))  # as FLARE starts it
    accepted = {site: agg.accept(r, _server(tmp_path, agg, site, extra=extra)) for site, r in results.items()}
    assert accepted == {"site-0": False, "site-2": False, "site-1": True}
    out = from_shareable(agg.aggregate(_server(tmp_path, agg, "site-1", extra=extra))).data
    assert set(out) == {"w"}
    np.testing.assert_allclose(out["w"], honest["w"], rtol=1e-5)
    with pytest.raises(ValueError, match="personalization"):
        SharedKeysWeightedAggregator(personalization="bogus")


def _stripped(record):
    """The record with floats compared at 1e-6 (the two paths run the same arithmetic)."""
    return json.loads(json.dumps(record, default=float))


@pytest.mark.parametrize("method", ["aam", "mean", "median", "trimmed_mean"])
def test_the_flare_aggregator_and_the_in_process_round_give_the_same_update_and_record(tmp_path, method):
    """Two rounds, a scaled, a NaN and a random update: FLARE objects through AAMAggregator, plain dicts through ServerRound."""
    from fedsegnet.aggregation import AdaptiveAggregation, CompactUpdate, ServerRound

    agg = AAMAggregator(method=method, trimmed_beta=0.2)
    server = ServerRound(method, AdaptiveAggregation(), trimmed_beta=0.2)
    nan = {k: np.full(s, np.nan, np.float32) for k, s in SHAPES.items()}
    for rnd in (2, 3):
        ups = {f"site-{i}": _update(10 * rnd + i, density=0.3) for i in range(1, 6)}
        ups["site-5"] = {k: 20 * v for k, v in ups["site-5"].items()}  # scaled: dropped by the norm rule or clipped
        ups["site-6"] = nan  # refused on arrival (FLARE) / by the gate (in process)
        ups["site-4"] = {k: np.random.default_rng(rnd).normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
        reports = {s: {"n_train": 5 + i, "label_kind": "voxel", "agreement": 0.8, "val_dice_global": None, "val_dice_local": 0.7}
                   for i, s in enumerate(ups)}  # fmt: skip
        for s, u in ups.items():
            r = reports[s]
            agg.accept(_result(u, n_train=r["n_train"], agreement=r["agreement"], local=r["val_dice_local"], rnd=rnd),
                       _server(tmp_path, agg, s))  # fmt: skip
        ctx = _server(tmp_path, agg, "site-1")
        flare_out = from_shareable(agg.aggregate(ctx)).data
        flare_record = ctx.get_prop("fedsegnet.aam_record")
        mine = server.round({s: CompactUpdate(u) for s, u in ups.items()}, reports, _global(), round=rnd)
        assert set(flare_out) == set(mine.update) == set(SHAPES)
        for k in SHAPES:
            np.testing.assert_array_equal(flare_out[k], mine.update[k])
        a, b = _stripped(flare_record), _stripped(mine.record)
        assert a["round"] == b["round"] == rnd and a["method"] == b["method"] == method
        assert a["sites"]["site-6"]["accepted"] is b["sites"]["site-6"]["accepted"] is False
        assert "NaN or Inf" in a["sites"]["site-6"]["gate"] and "NaN or Inf" in b["sites"]["site-6"]["gate"]
        del a["sites"]["site-6"], b["sites"]["site-6"]  # refused at accept (no signals) vs by the round's gate
        assert a == b
    theirs = server.state_dict()
    for h in theirs["history"]:
        h["weights"].pop("site-6")  # the update refused at accept never reaches the FLARE round
    assert agg.state_dict() == theirs


@pytest.mark.parametrize("method", ["aam", "median"])
def test_the_decoders_sparse_form_aggregates_to_what_the_dense_one_gives(tmp_path, method):
    """Site payloads over the wire, decoded dense, sparse (positions and values) or packed (the records as
    received): the same round, fewer bytes held."""
    from nvflare.fuel.utils import fobs

    from fedsegnet.compression.codec import SparseTensor
    from fedsegnet.compression.packed import PackedTensor
    from fedsegnet.flare.compression import UpdateDecoder, UpdateEncoder

    from .test_compression_filters import _ctx as site_ctx

    sent = {}
    for i in range(1, 5):
        enc = UpdateEncoder(ratio=0.1, bits=4, dense_below=8)
        sent[f"site-{i}"] = fobs.dumps(enc.process(_result(_update(i)), site_ctx(_Engine(tmp_path / f"s{i}"), f"site-{i}")))
    outs, held = [], []
    forms = {False: np.ndarray, True: SparseTensor, "packed": PackedTensor}
    for sparse, kind in forms.items():
        agg = AAMAggregator(method=method)
        for site, wire in sent.items():
            ctx = _server(tmp_path, agg, site)
            decoded = UpdateDecoder(sparse=sparse).process(fobs.loads(wire), ctx)
            assert isinstance(from_shareable(decoded).data["w"], kind)
            assert agg.accept(decoded, ctx)
        held.append(sum(u.nbytes for u in agg._updates.values()))
        ctx = _server(tmp_path, agg, "site-1")
        outs.append((from_shareable(agg.aggregate(ctx)).data, _stripped(ctx.get_prop("fedsegnet.aam_record"))))
    for k in SHAPES:
        np.testing.assert_array_equal(outs[0][0][k], outs[1][0][k])
        np.testing.assert_array_equal(outs[0][0][k], outs[2][0][k])
    assert outs[0][1] == outs[1][1] == outs[2][1] and held[1] < 0.35 * sum(4 * np.prod(s) for s in SHAPES.values()) * 4
    assert held[2] < 0.3 * held[1]  # the packed records: about 1 byte per sent value, not 12


def test_round_recorder_names_each_site_that_did_not_contribute_and_why(tmp_path, caplog):
    agg = AAMAggregator()
    recorder = RoundRecorder(tb_folder="")
    ctx = _server(tmp_path, agg, "site-1", extra={"round_recorder": recorder})
    recorder.handle_event(EventType.START_RUN, ctx)
    recorder.handle_event(AppEventType.ROUND_STARTED, ctx)
    bad = _update(3)
    bad["w"][0, 0] = np.nan
    for site, result in {"site-1": _result(_update(1)), "site-2": _result(_update(2)), "site-3": _result(bad)}.items():
        c = _server(tmp_path, agg, site)
        c.get_peer_context().set_prop(FLContextKey.SHAREABLE, result, private=False, sticky=False)
        recorder.handle_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, c)
        c.set_prop(AppConstants.AGGREGATION_ACCEPTED, agg.accept(result, c), private=True, sticky=False)
        recorder.handle_event(AppEventType.AFTER_CONTRIBUTION_ACCEPT, c)
    failed = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    failed.set_header(ERROR_HEADER, "site-4: labelsTr/site-4_001.nii.gz: missing")
    c = _server(tmp_path, agg, "site-4")
    c.set_prop(FLContextKey.TASK_RESULT, failed, private=True, sticky=False)
    c.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    recorder.handle_event(EventType.BEFORE_PROCESS_SUBMISSION, c)
    late = {"reason": "late", "detail": "no update 10 s after 2 updates were in (drop_stragglers); it had not fetched the task"}
    ctx.set_prop(ROUND_SITES_PROP, {"asked": [f"site-{i}" for i in range(1, 6)], "unanswered": {"site-5": late}},
                 private=True, sticky=False)  # fmt: skip
    recorder.handle_event(ROUND_SITES_EVENT, ctx)
    agg.aggregate(ctx)
    with caplog.at_level(logging.WARNING):
        recorder.handle_event(AppEventType.ROUND_DONE, ctx)
    record = json.loads((tmp_path / "job-1" / ROUND_RECORDS_FILE).read_text().splitlines()[-1])
    missing = record["missing_sites"]
    assert list(missing) == ["site-3", "site-4", "site-5"]
    assert missing["site-3"]["reason"] == "refused" and "NaN" in missing["site-3"]["detail"]
    assert missing["site-4"] == {"reason": "failed", "detail": "site-4: labelsTr/site-4_001.nii.gz: missing"}
    assert missing["site-5"] == late
    assert "round 2: site site-5 did not contribute: late (no update 10 s after 2" in caplog.text

    recorder.handle_event(AppEventType.ROUND_STARTED, ctx)  # the next round starts with a clean slate
    ctx.set_prop(ROUND_SITES_PROP, {"asked": ["site-1"], "unanswered": {}}, private=True, sticky=False)
    recorder.handle_event(ROUND_SITES_EVENT, ctx)
    c = _server(tmp_path, agg, "site-1")
    c.get_peer_context().set_prop(FLContextKey.SHAREABLE, _result(_update(1)), private=False, sticky=False)
    recorder.handle_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, c)
    recorder.handle_event(AppEventType.ROUND_DONE, ctx)
    assert json.loads((tmp_path / "job-1" / ROUND_RECORDS_FILE).read_text().splitlines()[-1])["missing_sites"] == {}


def test_an_update_made_in_an_earlier_round_is_refused_as_late(tmp_path, caplog):
    agg = AAMAggregator()
    stale = _result(_update(1))
    stale.add_cookie(AppConstants.CONTRIBUTION_ROUND, 1)  # the server is in round 2
    with caplog.at_level(logging.WARNING):
        assert not agg.accept(stale, _server(tmp_path, agg, "site-1"))
    assert "update of site site-1 refused as late: made in round 1, the server is in round 2" in caplog.text
    current = _result(_update(1))
    current.add_cookie(AppConstants.CONTRIBUTION_ROUND, 2)
    assert agg.accept(current, _server(tmp_path, agg, "site-1"))


def test_accept_reads_the_divergence_sample_from_the_checks_decode_and_releases_it(tmp_path):
    from nvflare.fuel.utils import fobs

    from fedsegnet.compression.packed import PackedTensor
    from fedsegnet.flare.compression import UpdateDecoder, UpdateEncoder

    from .test_compression_filters import _ctx as site_ctx

    sent = {f"site-{i}": fobs.dumps(UpdateEncoder(ratio=0.1, bits=4, dense_below=8).process(
        _result(_update(i)), site_ctx(_Engine(tmp_path / f"s{i}"), f"site-{i}"))) for i in range(1, 5)}  # fmt: skip
    outs = []
    for sparse in (True, "packed"):
        agg = AAMAggregator()
        agg.aam.sample_size = 100  # fewer than the model's 528 values: a sample is kept at accept
        for site, wire in sent.items():
            ctx = _server(tmp_path, agg, site)
            decoded = UpdateDecoder(sparse=sparse).process(fobs.loads(wire), ctx)
            w = from_shareable(decoded).data["w"]
            warm = w.nbytes
            assert agg.accept(decoded, ctx)
            assert agg._updates[site]._sample.keys() == set(SHAPES)
            if sparse == "packed":  # the warm decode released: back to the packed record
                assert isinstance(w, PackedTensor) and w.nbytes == w._index.nbytes + w._codes.nbytes + w._scales.nbytes < warm
        ctx = _server(tmp_path, agg, "site-1")
        outs.append((from_shareable(agg.aggregate(ctx)).data, _stripped(ctx.get_prop("fedsegnet.aam_record"))))
    for k in SHAPES:
        np.testing.assert_array_equal(outs[0][0][k], outs[1][0][k])
    assert outs[0][1] == outs[1][1]
