"""The downlink without FLARE: the server's reference, versions, per-site messages and the site's rebuild."""

import copy
import random

import numpy as np
import pytest
import torch

from fedsegnet.compression import (
    GlobalModelDownlink,
    PayloadError,
    SparseQuantCodec,
    decode_payload,
    is_payload,
    rebuild_global_model,
)
from fedsegnet.errors import ConfigError


def _model(seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": (torch.randn(16, 8, 3, 3, 3, generator=g) * scale).numpy(),
        "conv.bias": (torch.randn(16, generator=g) * scale).numpy(),
        "attn.weight": (torch.randn(64, 64, generator=g) * scale).numpy(),
    }


def _step(model, seed):
    return {k: v + 0.05 * _model(seed)[k] for k, v in model.items()}


def _downlink(first_bits=8, seed=0, **codec):
    codec = {"ratio": 0.05, "bits": 8, "dense_below": 256, **codec}
    return GlobalModelDownlink(SparseQuantCodec(**codec), first_bits=first_bits, seed=seed, instance="test")


def _reference(downlink):
    return {k: v.numpy() for k, v in downlink.reference.items()}


@pytest.mark.parametrize("first_bits", [8, 32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_site_holds_exactly_the_reference_after_any_sequence_of_rounds(first_bits, seed):
    rng = random.Random(seed)
    downlink = _downlink(first_bits, seed)
    sites: dict[str, tuple[str, dict] | None] = {f"site-{i}": None for i in range(4)}  # (version, weights)
    model = _model(seed)
    for rnd in range(12):
        if rnd == 6:
            sites["site-9"] = None  # a new site joins
        for site in list(sites):
            event = rng.random()
            if event < 0.15:
                continue  # not sampled this round: keeps what it holds
            if event < 0.25:
                sites[site] = None  # restarted without its job folder
            held = sites[site]
            data, info = downlink.message(model, rnd, held[0] if held else None)
            assert info["version"] == downlink.version and set(info) == {"mode", "base", "version"}
            if held is None:
                assert info["mode"] == "full" and info["base"] is None
            new = rebuild_global_model(data, info, held[1] if held else None)
            if rng.random() < 0.1:
                continue  # the round failed at the site: the server hears of no version
            sites[site] = (info["version"], new)
            ref = _reference(downlink)
            assert set(new) == set(ref)
            for k in ref:  # bit for bit, not approximately
                assert new[k].dtype == np.float32 and new[k].shape == model[k].shape
                np.testing.assert_array_equal(new[k], ref[k])
        model = _step(model, 100 + rnd)


def test_messages_by_held_version():
    downlink = _downlink()
    model = _model(0)
    data, info = downlink.message(model, 0, None)
    assert info == {"mode": "full", "base": None, "version": downlink.version} and is_payload(data)  # quantized
    first = info["version"]
    assert downlink.message(model, 0, first)[1]["mode"] == "full"  # no difference in a first-model round
    model = _step(model, 1)
    data, info = downlink.message(model, 1, first)
    assert info == {"mode": "diff", "base": first, "version": downlink.version} and is_payload(data)
    assert info["version"] != first and info["version"].startswith("1-")
    for held in (None, "0-somewhere-else", info["version"]):  # new, restarted or unknown: full float32 weights
        full, info_full = downlink.message(model, 1, held)
        assert info_full["mode"] == "full" and not is_payload(full)
        assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in model.items()}
        assert all(v.dtype == np.float32 for v in full.values())
    # every site of a round gets the same messages, whatever weights later calls pass
    again, _ = downlink.message(_model(7), 1, first)
    assert again is data


def test_first_model_quantized_or_exact():
    model = _model(0)
    for first_bits in (8, 32):
        data, info = _downlink(first_bits).message(model, 0, None)
        held = rebuild_global_model(data, info)
        for k, v in model.items():
            if first_bits == 32:
                np.testing.assert_array_equal(held[k], v)
            else:  # 8 bits, per-block absmax scales: at most half a step off
                assert np.abs(held[k] - v).max() <= np.abs(v).max() / 127 / 2 + 1e-7


def test_difference_stream_with_error_feedback_converges_to_the_true_model():
    downlink = _downlink(ratio=0.02)
    model = _model(0)
    version, held = None, None
    for rnd in range(4):
        data, info = downlink.message(model, rnd, version)
        held, version = rebuild_global_model(data, info, held), info["version"]
        model = _step(model, 10 + rnd)

    def gap():
        return float(np.sqrt(sum(((held[k] - model[k]) ** 2).sum() for k in model)))

    gaps = [gap()]
    for rnd in range(4, 60):  # the global model stops changing: what was not sent keeps arriving
        data, info = downlink.message(model, rnd, version)
        assert info["mode"] == "diff"
        held, version = rebuild_global_model(data, info, held), info["version"]
        gaps.append(gap())
    assert gaps[-1] < 0.01 * gaps[0], gaps[::10]
    assert downlink.last_unsent_norm == pytest.approx(gaps[-1], rel=1e-3)


def test_inputs_are_not_modified():
    downlink = _downlink()
    model = _model(0)
    before = copy.deepcopy(model)
    data, info = downlink.message(model, 0, None)
    held = rebuild_global_model(data, info)
    new_model = {k: torch.from_numpy(v + 0.01) for k, v in model.items()}  # tensors are read only too
    new_before = {k: v.clone() for k, v in new_model.items()}
    held_before = copy.deepcopy(held)
    data, info = downlink.message(new_model, 1, info["version"])
    payload_before = copy.deepcopy(data)
    rebuilt = rebuild_global_model(data, info, held)
    for k in model:
        np.testing.assert_array_equal(model[k], before[k])
        assert torch.equal(new_model[k], new_before[k])
        np.testing.assert_array_equal(held[k], held_before[k])
        assert not np.shares_memory(rebuilt[k], held[k])
    for f in ("table", "shapes", "index", "values", "scales"):
        np.testing.assert_array_equal(data[f], payload_before[f])
    # the reference handed out is a copy: changing it does not change the server's
    downlink.reference["conv.bias"][:] = 99
    assert float(downlink.reference["conv.bias"].abs().max()) < 99


def test_deterministic_given_seed_and_instance():
    runs = []
    for _ in range(2):
        downlink, model, out = _downlink(seed=3, stochastic=True), _model(0), []
        version = None
        for rnd in range(3):
            data, info = downlink.message(model, rnd, version)
            version = info["version"]
            out.append((info, data))
            model = _step(model, rnd)
        runs.append(out)
    for (info_a, a), (info_b, b) in zip(*runs):
        assert info_a == info_b
        for f in ("index", "values", "scales"):
            np.testing.assert_array_equal(a[f], b[f])
    other = GlobalModelDownlink(SparseQuantCodec(), instance="another process")
    assert other.message(_model(0), 0, None)[1]["version"] != runs[0][0][0]["version"]


def test_state_dict_round_trip_goes_on_alike():
    a, model = _downlink(), _model(0)
    _, info = a.message(model, 0, None)
    a.message(_step(model, 1), 1, info["version"])
    b = _downlink()
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.version == a.version and b.base == a.base and b.round == a.round
    for k, v in a.reference.items():
        assert torch.equal(b.reference[k], v)
    for held in (a.base, None):  # the current round is served alike
        (da, ia), (db, ib) = a.message(None, 1, held), b.message(None, 1, held)
        assert ia == ib
    nxt = _step(_step(model, 1), 2)
    (da, ia), (db, ib) = a.message(nxt, 2, a.version), b.message(nxt, 2, b.version)
    assert ia == ib and ia["mode"] == "diff"
    np.testing.assert_array_equal(da["values"], db["values"])
    # a fresh state starts from a full first model
    c = _downlink()
    c.load_state_dict(_downlink().state_dict())
    assert c.version is None and c.message(model, 0, "anything")[1]["mode"] == "full"


def test_changed_model_shapes_start_again_from_a_full_model():
    downlink, model = _downlink(), _model(0)
    _, info = downlink.message(model, 0, None)
    grown = dict(model, extra=np.zeros(10, np.float32))
    data, info2 = downlink.message(grown, 1, info["version"])
    assert info2["mode"] == "full" and info2["base"] is None
    assert set(rebuild_global_model(data, info2)) == set(grown)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="codec="):
        GlobalModelDownlink(object())
    with pytest.raises(ValueError, match="bits=5"):
        GlobalModelDownlink(SparseQuantCodec(), first_bits=5)
    with pytest.raises(ConfigError, match="seed"):
        GlobalModelDownlink(SparseQuantCodec(), seed=-1)
    downlink = _downlink()
    with pytest.raises(ValueError, match="weights: must be a non-empty dict"):
        downlink.message([1, 2], 0, None)
    with pytest.raises(ValueError, match=r"weights\['ids'\]: dtype .* is not a float type"):
        downlink.message({"ids": np.arange(3)}, 0, None)
    with pytest.raises(ValueError, match="downlink state: version"):
        downlink.load_state_dict({"version": 99})
    with pytest.raises(ValueError, match="field 'reference'"):
        downlink.load_state_dict({"version": 1, "reference": {"a": np.zeros(2)}})
    with pytest.raises(ConfigError, match="max_values"):
        rebuild_global_model({}, {"mode": "full"}, max_values=0)


def test_rebuild_refuses_bad_messages():
    downlink, model = _downlink(), _model(0)
    data, info = downlink.message(model, 0, None)
    held = rebuild_global_model(data, info)
    diff, dinfo = downlink.message(_step(model, 1), 1, info["version"])
    with pytest.raises(PayloadError, match="none is held"):
        rebuild_global_model(diff, dinfo, None)
    with pytest.raises(PayloadError, match="shape"):
        rebuild_global_model(diff, dinfo, {k: np.zeros(3, np.float32) for k in held})
    with pytest.raises(PayloadError, match="conv.bias: the rebuilt weights contain NaN or Inf"):
        rebuild_global_model({"conv.bias": np.array([np.nan], np.float32)}, {"mode": "full"})
    with pytest.raises(PayloadError, match="not an array of numbers"):
        rebuild_global_model({"conv.bias": "many"}, {"mode": "full"})
    with pytest.raises(PayloadError, match="must be a dict of arrays"):
        rebuild_global_model([1.0], {"mode": "full"})
    with pytest.raises(PayloadError, match="more than the decoder's bound"):
        rebuild_global_model(data, info, max_values=10)
    # the first model's payload decodes as it did in the server
    ref = decode_payload(data)
    for k in ref:
        np.testing.assert_array_equal(held[k], ref[k])
