"""The FLARE compression filters on real FLARE objects (Shareable, DXO, FLContext), without processes."""

import copy
import logging
import re

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils import fobs
from nvflare.private.fed.utils.fed_utils import nvflare_fobs_initialize

from fedsegnet.compression import decode_payload
from fedsegnet.compression.codec import unpack_payload
from fedsegnet.compression.packed import PackedTensor
from fedsegnet.errors import ConfigError, FedSegNetError
from fedsegnet.flare.compression import (
    GlobalModelDecoder,
    GlobalModelEncoder,
    GlobalModelSync,
    MessageBytes,
    UpdateDecoder,
    UpdateEncoder,
)
from fedsegnet.flare.constants import ERROR_HEADER, MESSAGE_BYTES_EVENT, BytesProp, CodecMeta

nvflare_fobs_initialize()


class _Workspace:
    def __init__(self, root):
        self.root = root

    def get_run_dir(self, job_id):
        path = self.root / job_id
        path.mkdir(parents=True, exist_ok=True)
        return str(path)


class _Engine:
    def __init__(self, root, components=None):
        self.workspace = _Workspace(root)
        self.components = components or {}
        self.events = []

    def get_workspace(self):
        return self.workspace

    def get_component(self, cid):
        return self.components.get(cid)

    def fire_event(self, event_type, fl_ctx):
        self.events.append((event_type, {k: fl_ctx.get_prop(k) for k in vars(BytesProp).values() if isinstance(k, str)}))
        for c in self.components.values():
            c.handle_event(event_type, fl_ctx)


def _ctx(engine, identity, peer=None, **props):
    ctx = FLContext()
    ctx.put(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.put(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    ctx.put(ReservedKey.IDENTITY_NAME, identity, private=False, sticky=False)
    if peer:
        p = FLContext()
        p.put(ReservedKey.IDENTITY_NAME, peer, private=False, sticky=False)
        ctx.set_peer_context(p)
    for k, v in props.items():
        ctx.set_prop(k, v, private=True, sticky=False)
    return ctx


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": (torch.randn(16, 8, 3, 3, 3, generator=g) * 0.1).numpy(),
        "conv.bias": (torch.randn(16, generator=g) * 0.1).numpy(),
        "attn.weight": (torch.randn(64, 64, generator=g) * 0.1).numpy(),
    }


def _update(seed=1):
    return {k: v * 0.05 for k, v in _model(seed).items()}


def _result(update, rnd=3):
    s = DXO(DataKind.WEIGHT_DIFF, data=update, meta={"fedsegnet.n_train": 5, "fedsegnet.round": rnd}).to_shareable()
    s.set_header(AppConstants.CURRENT_ROUND, rnd)
    return s


def _server_ctx(tmp_path, site="site-2", model=None, components=None):
    engine = _Engine(tmp_path / "server", components)
    learnable = make_model_learnable(model if model is not None else _model(), {})
    return _ctx(engine, "server", peer=site, **{AppConstants.GLOBAL_MODEL: learnable, AppConstants.CURRENT_ROUND: 3})


ARGS = dict(ratio=0.05, bits=8, dense_below=256)


def test_uplink_round_trip_conserves_the_update(tmp_path):
    site_ctx = _ctx(_Engine(tmp_path / "site-2"), "site-2")
    enc = UpdateEncoder(**ARGS)
    update = _update()
    sent = enc.process(_result(update), site_ctx)
    dxo = from_shareable(sent)
    assert dxo.get_meta_prop(CodecMeta.ENCODED) and dxo.get_meta_prop("fedsegnet.n_train") == 5
    assert len(fobs.dumps(sent)) * 5 < len(fobs.dumps(_result(update)))  # far smaller on the wire
    out = UpdateDecoder().process(fobs.loads(fobs.dumps(sent)), _server_ctx(tmp_path))
    assert out.get_return_code(ReturnCode.OK) == ReturnCode.OK
    decoded = from_shareable(out)
    assert decoded.data_kind == DataKind.WEIGHT_DIFF and CodecMeta.ENCODED not in decoded.meta
    for k, u in update.items():
        assert decoded.data[k].shape == u.shape
        np.testing.assert_allclose(decoded.data[k] + enc._ef.residual[k].numpy(), u, atol=1e-6)
    assert (tmp_path / "site-2" / "job-1" / "fedsegnet_uplink_residual.pt").exists()


def test_residual_survives_a_site_restart(tmp_path, caplog):
    engine = _Engine(tmp_path / "site-1")
    first = UpdateEncoder(**ARGS)
    first.process(_result(_update(1)), _ctx(engine, "site-1"))
    restarted = UpdateEncoder(**ARGS)  # a new process: nothing in memory
    with caplog.at_level(logging.INFO):
        b = from_shareable(restarted.process(_result(_update(2)), _ctx(engine, "site-1"))).data
    assert "restored the uplink residual" in caplog.text
    a = from_shareable(first.process(_result(_update(2)), _ctx(engine, "site-1"))).data
    np.testing.assert_array_equal(a["values"], b["values"])
    np.testing.assert_array_equal(a["index"], b["index"])


def _bad_payload(case, tmp_path):
    site_ctx = _ctx(_Engine(tmp_path / "site-2"), "site-2")
    payload = from_shareable(UpdateEncoder(**ARGS).process(_result(_update()), site_ctx)).data
    p = copy.deepcopy(payload)
    if case == "truncated":
        p["values"] = p["values"][: len(p["values"]) // 2]
    elif case == "shape":
        p["shapes"][:5] = [8, 16, 3, 3, 3]
    elif case == "version":
        p["version"] = 3
    elif case == "nan":
        p["scales"][0] = np.nan
    elif case == "index":
        p["index"] = np.full_like(p["index"], 0x7F)  # huge gaps: positions past the tensor
    elif case == "not_payload":
        p = {"format": "fedsegnet.payload", "version": 1, "names": "x"}
    elif case == "huge_scale":  # finite scales, but a code times one overflows float32
        p["scales"][:] = 3e38
    elif case == "float16_overflow":  # a dense float32 value declared float16
        update = _update()
        update["conv.bias"] = np.full(16, 1e6, np.float32)  # fine as float32, past float16's 65504
        p = from_shareable(UpdateEncoder(ratio=1.0, dense_bits=32).process(_result(update), site_ctx)).data
        p["table"][p["names"].index("conv.bias"), 1] = 2  # dtype code of float16
    return p


@pytest.mark.parametrize(
    "case,reason",
    [
        ("truncated", "field 'values' has"),
        ("shape", "differs from the model's"),
        ("version", "unknown version 3"),
        ("nan", "NaN or Inf"),
        ("index", "out of range|holds|corrupt"),
        ("not_payload", "field 'names'"),
        ("huge_scale", "conv.weight: 8-bit codes times scales overflow float32"),
        ("float16_overflow", "conv.bias: decoded values overflow to Inf as float16"),
    ],
)
@pytest.mark.parametrize("sparse", [False, "packed"])
def test_malformed_payload_is_rejected_naming_site_and_reason(case, reason, sparse, tmp_path, caplog):
    bad = DXO(DataKind.WEIGHT_DIFF, data=_bad_payload(case, tmp_path), meta={CodecMeta.ENCODED: True}).to_shareable()
    with caplog.at_level(logging.ERROR):
        out = UpdateDecoder(sparse=sparse).process(bad, _server_ctx(tmp_path, site="site-2"))
    assert out.get_return_code() == ReturnCode.BAD_TASK_DATA
    message = out.get_header(ERROR_HEADER)
    assert "site-2" in message and "round 3" in message
    assert re.search(reason, message), message
    assert "update of site site-2 (round 3) rejected" in caplog.text


def test_the_packed_form_hands_over_the_received_records_decoding_to_the_dense_update(tmp_path):
    sent = fobs.dumps(UpdateEncoder(**ARGS).process(_result(_update()), _ctx(_Engine(tmp_path / "s"), "site-2")))
    dense = from_shareable(UpdateDecoder().process(fobs.loads(sent), _server_ctx(tmp_path))).data
    packed = from_shareable(UpdateDecoder(sparse="packed").process(fobs.loads(sent), _server_ctx(tmp_path))).data
    assert isinstance(packed["conv.weight"], PackedTensor) and isinstance(packed["conv.bias"], np.ndarray)
    for k, v in dense.items():
        np.testing.assert_array_equal(v, packed[k].to_dense() if isinstance(packed[k], PackedTensor) else packed[k])
    payload = unpack_payload(from_shareable(fobs.loads(sent)).data)
    assert packed["conv.weight"].nbytes == sum(payload["conv.weight"][f].nbytes for f in ("index", "values", "scales"))


def test_without_a_global_model_the_server_bounds_what_a_payload_declares(tmp_path):
    payload = from_shareable(UpdateEncoder(**ARGS).process(_result(_update()), _ctx(_Engine(tmp_path / "s"), "site-2"))).data
    payload["shapes"][:5] = 2**31 - 1  # conv.weight declared with 2**155 values, nothing else changed
    ctx = _ctx(_Engine(tmp_path / "server"), "server", peer="site-2", **{AppConstants.CURRENT_ROUND: 3})
    bad = DXO(DataKind.WEIGHT_DIFF, data=payload, meta={CodecMeta.ENCODED: True}).to_shareable()
    out = UpdateDecoder(max_values=10**6).process(bad, ctx)
    assert out.get_return_code() == ReturnCode.BAD_TASK_DATA
    assert re.search(r"site site-2 .*more than the decoder's bound of 1000000 \(largest: conv.weight", out.get_header(ERROR_HEADER))


def test_plain_update_passes_unless_encoding_is_required(tmp_path):
    plain = _result(_update())
    assert UpdateDecoder().process(plain, _server_ctx(tmp_path)) is plain
    out = UpdateDecoder(require_encoded=True).process(_result(_update()), _server_ctx(tmp_path))
    assert out.get_return_code() == ReturnCode.BAD_TASK_DATA and "not encoded" in out.get_header(ERROR_HEADER)


def test_bad_filter_arguments():
    with pytest.raises(ValueError, match="ratio"):
        UpdateEncoder(ratio=2.0)
    with pytest.raises(ValueError, match="bits"):
        GlobalModelSync(bits=3)
    with pytest.raises(ValueError, match="direction"):
        MessageBytes(direction="sideways")
    for decoder in (UpdateDecoder, GlobalModelDecoder):
        for bad in (0, "many", 2.5):
            with pytest.raises(ConfigError, match="max_values"):
                decoder(max_values=bad)
    for bad in ("dense", None, 1.5):
        with pytest.raises(ConfigError, match="sparse=.*valid: False, True, packed"):
            UpdateDecoder(sparse=bad)


# ------------------------------------------------------------------------------------ downlink
def _task(weights, rnd):
    s = DXO(DataKind.WEIGHTS, data=weights, meta={}).to_shareable()
    s.set_header(AppConstants.CURRENT_ROUND, rnd)
    s.add_cookie(AppConstants.CONTRIBUTION_ROUND, rnd)
    return s


def _ack(sync, engine, site, version, task_name=None):
    result = Shareable()
    if version:
        result.set_header(CodecMeta.GLOBAL_VERSION_HEADER, version)
    ctx = _ctx(engine, "server", peer=site)
    ctx.set_prop(FLContextKey.TASK_RESULT, result, private=True, sticky=False)
    ctx.set_prop(FLContextKey.TASK_NAME, task_name, private=True, sticky=False)
    sync.handle_event(EventType.BEFORE_PROCESS_SUBMISSION, ctx)


def _send(encoder, engine, site, task, task_name=None):
    per_site = Shareable(copy.copy(task))  # FLARE's make_copy: own headers, shared DXO
    per_site["__headers__"] = copy.deepcopy(task["__headers__"])
    ctx = _ctx(engine, "server", peer=site)
    ctx.set_prop(FLContextKey.TASK_NAME, task_name, private=True, sticky=False)
    return encoder.process(per_site, ctx)


def _receive(decoder, site_engine, site, message):
    ctx = _ctx(site_engine, site)
    out = decoder.process(fobs.loads(fobs.dumps(message)), ctx)
    return from_shareable(out).data, ctx.get_prop(CodecMeta.GLOBAL_VERSION_PROP)


def test_downlink_sends_differences_to_synced_sites_and_full_weights_otherwise(tmp_path):
    sync = GlobalModelSync(ratio=0.05, bits=8, dense_below=256)
    engine = _Engine(tmp_path / "server", {"global_model_sync": sync})
    encoder = GlobalModelEncoder()
    decoders = {s: GlobalModelDecoder() for s in ("site-1", "site-2")}
    site_engines = {s: _Engine(tmp_path / s) for s in decoders}
    model = _model(0)
    for rnd in range(4):
        task = _task(model, rnd)
        before = copy.deepcopy(task["DXO"])
        held = {}
        for site in decoders:
            msg = _send(encoder, engine, site, task)
            mode = from_shareable(msg).get_meta_prop(CodecMeta.DOWNLINK)["mode"]
            assert mode == ("full" if rnd == 0 else "diff"), (rnd, site, mode)
            assert msg.get_cookie(AppConstants.CONTRIBUTION_ROUND) == rnd  # headers kept
            held[site], version = _receive(decoders[site], site_engines[site], site, msg)
            _ack(sync, engine, site, version)
        # the task data every site shares is untouched
        assert before["kind"] == task["DXO"]["kind"] and before["meta"] == task["DXO"]["meta"]
        for k in model:
            np.testing.assert_array_equal(before["data"][k], task["DXO"]["data"][k])
        # both sites hold the same reconstruction; it tracks the true global model
        for k in model:
            np.testing.assert_allclose(held["site-1"][k], held["site-2"][k], atol=1e-6)
            np.testing.assert_array_equal(held["site-1"][k], sync.downlink.reference[k].numpy())
        model = {k: v + _update(rnd + 11)[k] for k, v in model.items()}

    # server-side error feedback: once the global model stops changing, what was not sent yet
    # keeps arriving, and the sites' copy converges to it
    def gap(held):
        return float(np.sqrt(sum(((held[k] - model[k]) ** 2).sum() for k in model)))

    gaps = []
    for rnd in range(4, 40):
        msg = _send(encoder, engine, "site-1", _task(model, rnd))
        held, version = _receive(decoders["site-1"], site_engines["site-1"], "site-1", msg)
        _ack(sync, engine, "site-1", version)
        gaps.append(gap(held))
    assert gaps[-1] < 0.02 * gaps[0], gaps[::6]
    _ack(sync, engine, "site-2", None)
    sync_round = 40

    # a new site (or one whose last round failed: no ack) gets full weights of the reference
    task = _task(model, sync_round)
    for site, expect in (("site-1", "diff"), ("site-2", "full"), ("site-3", "full")):
        msg = _send(encoder, engine, site, task)
        assert from_shareable(msg).get_meta_prop(CodecMeta.DOWNLINK)["mode"] == expect


def test_replies_to_tasks_that_brought_no_global_model_leave_what_a_site_holds(tmp_path):
    """Under secure aggregation the global model goes with the masked-input task; the key steps'
    replies (no version header) come after it and must not make the server think the site holds
    nothing. A failed reply to the task that carried the model still does (full weights next)."""
    sync = GlobalModelSync(ratio=0.05, bits=8, dense_below=256)
    engine = _Engine(tmp_path / "server", {"global_model_sync": sync})
    encoder, decoder, site_engine = GlobalModelEncoder(), GlobalModelDecoder(), _Engine(tmp_path / "site-1")
    model = _model(0)
    msg = _send(encoder, engine, "site-1", _task(model, 0), task_name="secagg_masked")
    _, version = _receive(decoder, site_engine, "site-1", msg)
    _ack(sync, engine, "site-1", version, task_name="secagg_masked")
    _ack(sync, engine, "site-1", None, task_name="secagg_unmask")  # a key step's reply: no global model involved
    _ack(sync, engine, "site-1", None, task_name="validate")
    model = {k: v + _update(3)[k] for k, v in model.items()}
    msg = _send(encoder, engine, "site-1", _task(model, 1), task_name="secagg_masked")
    assert from_shareable(msg).get_meta_prop(CodecMeta.DOWNLINK)["mode"] == "diff"
    _ack(sync, engine, "site-1", None, task_name="secagg_masked")  # the site failed the task that carried the model
    msg = _send(encoder, engine, "site-1", _task(model, 2), task_name="secagg_masked")
    assert from_shareable(msg).get_meta_prop(CodecMeta.DOWNLINK)["mode"] == "full"


@pytest.mark.parametrize("first_bits", [8, 32])
def test_first_model_is_sent_quantized_or_exact(first_bits, tmp_path):
    sync = GlobalModelSync(first_bits=first_bits)
    engine = _Engine(tmp_path / "server", {"global_model_sync": sync})
    model = _model(0)
    msg = _send(GlobalModelEncoder(), engine, "site-1", _task(model, 0))
    held, _ = _receive(GlobalModelDecoder(), _Engine(tmp_path / "site-1"), "site-1", msg)
    raw = sum(v.nbytes for v in model.values())
    size = len(fobs.dumps(msg))
    for k, v in model.items():
        if first_bits == 32:
            np.testing.assert_array_equal(held[k], v)
        else:  # 8 bits, per-block absmax scales: at most half a step off
            assert np.abs(held[k] - v).max() <= np.abs(v).max() / 127 / 2 + 1e-7
    assert (size < 0.4 * raw) if first_bits == 8 else (size > raw), (size, raw)


def test_site_without_the_base_version_fails_the_task_with_a_clear_error(tmp_path):
    sync = GlobalModelSync(ratio=0.05)
    engine = _Engine(tmp_path / "server", {"global_model_sync": sync})
    encoder, decoder = GlobalModelEncoder(), GlobalModelDecoder()
    site_engine = _Engine(tmp_path / "site-1")
    _, version = _receive(decoder, site_engine, "site-1", _send(encoder, engine, "site-1", _task(_model(0), 0)))
    _ack(sync, engine, "site-1", version)
    diff_msg = _send(encoder, engine, "site-1", _task(_model(1), 1))
    # a restarted site with its job folder keeps going
    data, _ = _receive(GlobalModelDecoder(), site_engine, "site-1", diff_msg)
    assert set(data) == set(_model())
    # a site that lost its job folder cannot apply the difference and says why
    with pytest.raises(FedSegNetError, match="site site-1: the server sent the global model as a difference"):
        _receive(GlobalModelDecoder(), _Engine(tmp_path / "fresh"), "site-1", diff_msg)


def test_message_bytes_reports_the_serialized_size(tmp_path):
    engine = _Engine(tmp_path)
    msg = _task(_model(), 2)
    out = MessageBytes("down").process(msg, _ctx(engine, "server", peer="site-1"))
    assert out is msg
    event, props = engine.events[-1]
    assert event == MESSAGE_BYTES_EVENT
    assert props[BytesProp.NBYTES] == len(fobs.dumps(msg)) > sum(v.nbytes for v in _model().values())
    assert props[BytesProp.SITE] == "site-1" and props[BytesProp.ROUND] == 2 and props[BytesProp.DIRECTION] == "down"


def _synced_site(tmp_path):
    """A site that holds round 0's global model, and the server's round-1 difference for it."""
    sync = GlobalModelSync(ratio=0.05, bits=8, dense_below=256)
    engine = _Engine(tmp_path / "server", {"global_model_sync": sync})
    encoder, decoder, site_engine = GlobalModelEncoder(), GlobalModelDecoder(), _Engine(tmp_path / "site-1")
    _, version = _receive(decoder, site_engine, "site-1", _send(encoder, engine, "site-1", _task(_model(0), 0)))
    _ack(sync, engine, "site-1", version)
    diff_msg = _send(encoder, engine, "site-1", _task(_model(1), 1))
    assert from_shareable(diff_msg).get_meta_prop(CodecMeta.DOWNLINK)["mode"] == "diff"
    return decoder, site_engine, diff_msg


def _with_data(message, data):
    dxo = from_shareable(message)
    return DXO(dxo.data_kind, data=data, meta=dxo.meta).update_shareable(Shareable(copy.deepcopy(dict(message))))


@pytest.mark.parametrize(
    "case,reason",
    [
        ("huge_scale", "conv.weight: 8-bit codes times scales overflow float32"),
        ("nan_scale", "scales contain NaN or Inf"),
        ("shape", "attn.weight: shape \\[32, 128\\] differs from the model's \\[64, 64\\]"),
        ("float16", "decoded values overflow to Inf as float16"),
        ("sum_overflow", "conv.bias: the rebuilt weights contain NaN or Inf"),
        ("not_payload", "field 'format'"),
    ],
)
def test_bad_difference_fails_the_task_and_leaves_the_held_model(case, reason, tmp_path):
    decoder, site_engine, diff_msg = _synced_site(tmp_path)
    base_file = tmp_path / "site-1" / "job-1" / "fedsegnet_downlink_base.pt"
    before, held, version = base_file.read_bytes(), copy.deepcopy(decoder._base), decoder._version
    p = copy.deepcopy(from_shareable(diff_msg).data)
    row = lambda name: p["names"].index(name)  # noqa: E731
    if case == "huge_scale":
        p["scales"][:] = 3e38
    elif case == "nan_scale":
        p["scales"][-1] = np.nan
    elif case == "shape":
        start = int(p["table"][: row("attn.weight"), 7].sum())
        p["shapes"][start : start + 2] = [32, 128]
    elif case == "float16":  # an 8-bit dense tensor whose values pass 65504 once declared float16
        p["table"][row("conv.bias"), 1] = 2
        unpack_payload(p)["conv.bias"]["scales"][:] = 1e4  # a view into p["scales"]
    elif case == "sum_overflow":  # a finite difference that overflows when added to the held weights
        unpack_payload(p)["conv.bias"]["scales"][:] = 1e36  # codes up to 127: differences up to 1.27e38
        diff = decode_payload(p)["conv.bias"]
        assert np.isfinite(diff).all()
        decoder._base["conv.bias"] = np.where(diff >= 0, 3e38, -3e38).astype(np.float32)
        held = copy.deepcopy(decoder._base)
    elif case == "not_payload":
        p = {"conv.weight": np.zeros(3)}
    with pytest.raises(FedSegNetError) as err:
        _receive(decoder, site_engine, "site-1", _with_data(diff_msg, p))
    message = str(err.value)
    assert "\n" not in message and re.search(reason, message), message
    assert message.startswith("site site-1: bad global model payload from the server (diff message for version")
    assert f"the held global model (version {version!r}) is unchanged" in message
    assert base_file.read_bytes() == before  # the stored base model: byte for byte
    assert decoder._version == version and all(np.array_equal(decoder._base[k], held[k]) for k in held)
    if case != "sum_overflow":  # the good difference still applies to the held copy afterwards
        data, _ = _receive(decoder, site_engine, "site-1", diff_msg)
        assert set(data) == set(_model())


def test_first_model_declaring_too_many_values_is_refused_before_allocating(tmp_path):
    sync = GlobalModelSync(block=0)  # one scale per tensor: the scales do not give the shapes away
    engine = _Engine(tmp_path / "server", {"global_model_sync": sync})
    msg = _send(GlobalModelEncoder(), engine, "site-1", _task(_model(0), 0))
    p = copy.deepcopy(from_shareable(msg).data)
    p["shapes"][:5] = 2**31 - 1
    with pytest.raises(FedSegNetError, match="full message .*more than the decoder's bound of 100000 .*conv.weight"):
        _receive(GlobalModelDecoder(max_values=100_000), _Engine(tmp_path / "site-1"), "site-1", _with_data(msg, p))
    assert not (tmp_path / "site-1" / "job-1" / "fedsegnet_downlink_base.pt").exists()
