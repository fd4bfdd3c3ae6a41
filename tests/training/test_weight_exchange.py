"""state_dict_for_exchange / load_exchanged_weights: prefixes, dtypes, errors, no mutation."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from fedsegnet.errors import FedSegNetError
from fedsegnet.training import WeightsError, load_exchanged_weights, state_dict_for_exchange, strip_prefixes

from .helpers import Wrapped


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.Conv3d(4, 2, 1))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


@pytest.mark.parametrize("wrap", [lambda m: m, Wrapped, nn.DataParallel, lambda m: Wrapped(nn.DataParallel(m))])
def test_exchange_keys_are_plain(wrap):
    net = small_net()
    plain_keys = list(net.state_dict())
    weights = state_dict_for_exchange(wrap(net))
    assert list(weights) == plain_keys
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in weights)
    for value in weights.values():
        assert value.device.type == "cpu" and value.dtype == torch.float32


def test_exchange_copies_do_not_alias_the_model():
    net = small_net()
    weights = state_dict_for_exchange(net)
    weights["0.weight"].add_(1.0)
    assert not torch.equal(net.state_dict()["0.weight"], weights["0.weight"])


def test_real_torch_compile_prefix_is_stripped():
    net = small_net()
    compiled = torch.compile(net)  # wrapping only; nothing is compiled until the first call
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert list(state_dict_for_exchange(compiled)) == list(net.state_dict())


@pytest.mark.parametrize("src_wrap", [lambda m: m, Wrapped])
@pytest.mark.parametrize("dst_wrap", [lambda m: m, Wrapped, nn.DataParallel])
@pytest.mark.parametrize("as_numpy", [False, True])
def test_roundtrip(src_wrap, dst_wrap, as_numpy):
    src, dst = small_net(0), small_net(1)
    src.train()(torch.randn(2, 1, 4, 4, 4))  # move BatchNorm running stats and the int counter
    weights = state_dict_for_exchange(src_wrap(src))
    if as_numpy:
        weights = {k: v.numpy() for k, v in weights.items()}
    snapshot = {k: np.array(v, copy=True) for k, v in weights.items()}
    ids = {k: id(v) for k, v in weights.items()}
    result = load_exchanged_weights(dst_wrap(dst), weights)
    assert result == {"missing": [], "unexpected": []}
    assert _same(src.state_dict(), dst.state_dict())
    assert dst.state_dict()["1.num_batches_tracked"].dtype == torch.long
    # input dict untouched: same keys, same objects, same values
    assert {k: id(v) for k, v in weights.items()} == ids
    assert all(np.array_equal(np.asarray(weights[k]), snapshot[k]) for k in snapshot)


def test_prefixed_incoming_keys_are_accepted():
    src, dst = small_net(0), small_net(1)
    load_exchanged_weights(dst, Wrapped(src).state_dict())
    assert _same(src.state_dict(), dst.state_dict())


def test_errors_list_missing_unexpected_and_shapes():
    dst = small_net(1)
    before = copy.deepcopy(dst.state_dict())
    weights = state_dict_for_exchange(small_net(0))
    del weights["2.bias"]
    weights["extra.weight"] = torch.zeros(3)
    weights["0.weight"] = torch.zeros(4, 1, 2, 2, 2)
    weights["2.weight"] = "not an array"
    with pytest.raises(WeightsError) as info:
        load_exchanged_weights(dst, weights)
    err = info.value
    assert isinstance(err, FedSegNetError)
    msg = str(err)
    assert "1 missing key(s): 2.bias" in msg
    assert "1 unexpected key(s): extra.weight" in msg
    assert "0.weight (weights (4, 1, 2, 2, 2), model (4, 1, 3, 3, 3))" in msg
    assert "2.weight (str)" in msg
    assert err.missing == ["2.bias"] and err.unexpected == ["extra.weight"]
    assert _same(before, dst.state_dict()), "nothing may be loaded when the weights do not fit"


def test_error_message_shows_first_few():
    weights = {f"junk.{i}": torch.zeros(1) for i in range(12)}
    with pytest.raises(WeightsError, match=r"12 unexpected key\(s\): .*\(7 more\)"):
        load_exchanged_weights(small_net(), {**state_dict_for_exchange(small_net()), **weights})


def test_non_strict_skips_and_reports():
    src, dst = small_net(0), small_net(1)
    weights = state_dict_for_exchange(src)
    del weights["2.bias"]
    weights["extra"] = torch.zeros(1)
    result = load_exchanged_weights(dst, weights, strict=False)
    assert result == {"missing": ["2.bias"], "unexpected": ["extra"]}
    assert torch.equal(dst.state_dict()["0.weight"], src.state_dict()["0.weight"])
    assert not torch.equal(dst.state_dict()["2.bias"], src.state_dict()["2.bias"])


def test_non_strict_still_rejects_shape_mismatch():
    weights = state_dict_for_exchange(small_net())
    weights["2.bias"] = torch.zeros(5)
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_exchanged_weights(small_net(), weights, strict=False)


@pytest.mark.parametrize("key,plain", [("_orig_mod.a.b", "a.b"), ("module.x", "x"), ("_orig_mod.module.y", "y"), ("decoder.module.z", "decoder.module.z")])
def test_strip_prefixes(key, plain):
    assert strip_prefixes(key) == plain
