"""Untrusted model files: ``load_model_file`` checks the spec and the weights before building anything."""

import time

import pytest
import torch

from fedsegnet.config import PRESETS
from fedsegnet.errors import FedSegNetError
from fedsegnet.training import spec as spec_module
from fedsegnet.training.spec import MAX_MODEL_VALUES, build_from_spec, check_spec, load_model_file, model_spec
from fedsegnet.training.loop import state_dict_for_exchange


def _spec(**changes):
    spec = model_spec(PRESETS["tiny"], in_channels=1, num_classes=3)
    spec.update(changes)
    return spec


def _save(path, spec, state=None):
    if state is None:
        state = state_dict_for_exchange(build_from_spec(spec))
    torch.save({"model": state, "train_conf": {"fedsegnet": spec}}, path)
    return path


def _one_line_naming(err, path, field):
    message = str(err.value)
    assert "\n" not in message and str(path) in message and field in message, message


def test_a_valid_file_still_loads(tmp_path):
    spec = _spec()
    net = build_from_spec(spec)
    path = _save(tmp_path / "m.pt", spec, state_dict_for_exchange(net))
    model, loaded = load_model_file(path)
    assert loaded == spec and not model.training
    for k, v in net.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"channels": [100000, 200000, 400000], "num_heads": 2, "num_layers": 1}, "network_kwargs.channels[0]"),
        ({"channels": [8, 16, 32], "num_heads": 2, "num_layers": 10**6}, "network_kwargs.num_layers"),
        ({"channels": [8] * 100}, "network_kwargs.channels"),
    ],
)
def test_huge_network_kwargs_fail_before_building(kwargs, field, tmp_path, monkeypatch):
    spec = _spec(network_kwargs=kwargs)
    path = tmp_path / "huge.pt"
    torch.save({"model": {}, "train_conf": {"fedsegnet": spec}}, path)  # a few KB
    assert path.stat().st_size < 4096
    built = []
    monkeypatch.setattr(spec_module, "build_from_spec", lambda s: built.append(s))
    with pytest.raises(FedSegNetError) as err:
        load_model_file(path)
    _one_line_naming(err, path, field)
    assert not built  # nothing was built, not even on the meta device


def test_a_network_over_the_size_bound_fails_on_the_meta_device(tmp_path, monkeypatch):
    # within every kwarg bound, but large: 4096-wide hybrid (about 10**9 values) is refused from
    # its meta-device shapes, fast and without memory
    spec = _spec(network_kwargs={"channels": [1024, 2048, 4096], "num_heads": 8, "num_layers": 4})
    path = tmp_path / "big.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "train_conf": {"fedsegnet": spec}}, path)
    start = time.perf_counter()
    with pytest.raises(FedSegNetError, match=f"would have \\d+ values, more than {MAX_MODEL_VALUES}") as err:
        load_model_file(path)
    assert time.perf_counter() - start < 20
    _one_line_naming(err, path, "network_kwargs")


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"in_channels": "abc"}, "in_channels='abc'"),
        ({"in_channels": 0}, "in_channels=0"),
        ({"in_channels": True}, "in_channels=True"),
        ({"num_classes": 10**6}, "num_classes=1000000"),
        ({"num_classes": 2.0}, "num_classes=2.0"),
        ({"network": "resnet9000"}, "network='resnet9000'"),
        ({"network": ["hybrid_unetr"]}, "network=['hybrid_unetr']"),
        ({"patch_size": [32, 32]}, "patch_size=[32, 32]"),
        ({"patch_size": [32, 32, 100000]}, "patch_size="),
        ({"patch_size": "32"}, "patch_size='32'"),
        ({"spacing": [1, 1, float("nan")]}, "spacing="),
        ({"intensity": "loud"}, "intensity='loud'"),
        ({"classes": [["organ"]]}, "classes="),
        ({"label_values": ["0"]}, "label_values="),
        ({"network_kwargs": ["channels"]}, "network_kwargs="),
        ({"network_kwargs": {"channels": [8, 16, "32"]}}, "channels='32'"),  # the constructor names it
        ({"network_kwargs": {"num_heads": float("inf")}}, "network_kwargs.num_heads"),
        ({"network_kwargs": {"bogus": 1}}, "network_kwargs.bogus"),
    ],
)
def test_bad_spec_types_and_ranges_name_the_file_and_field(changes, field, tmp_path):
    spec = _spec(**changes)
    path = tmp_path / "bad.pt"
    torch.save({"model": state_dict_for_exchange(build_from_spec(_spec())), "train_conf": {"fedsegnet": spec}}, path)
    with pytest.raises(FedSegNetError) as err:
        load_model_file(path)
    _one_line_naming(err, path, field)


def test_a_spec_that_is_not_a_dict(tmp_path):
    path = tmp_path / "s.pt"
    torch.save({"model": {}, "train_conf": {"fedsegnet": ["hybrid_unetr"]}}, path)
    with pytest.raises(FedSegNetError, match="the model spec must be a dict, got list") as err:
        load_model_file(path)
    _one_line_naming(err, path, "spec")


@pytest.mark.parametrize("content", [b"\x80\x02]q\x00.", b"garbage" * 300, b""])
def test_garbage_bytes_are_refused_in_one_line(content, tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(FedSegNetError, match="not a readable PyTorch model file") as err:
        load_model_file(path)
    _one_line_naming(err, path, "model file")


def test_a_truncated_file_is_refused_in_one_line(tmp_path):
    good = _save(tmp_path / "good.pt", _spec())
    path = tmp_path / "cut.pt"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FedSegNetError, match="not a readable PyTorch model file") as err:
        load_model_file(path)
    _one_line_naming(err, path, "model file")


def test_weights_that_do_not_fit_the_spec(tmp_path):
    spec = _spec()
    state = state_dict_for_exchange(build_from_spec(spec))
    key = next(k for k, v in state.items() if v.ndim == 5)
    wrong = dict(state, **{key: torch.zeros(2, *state[key].shape[1:])})
    with pytest.raises(FedSegNetError, match=f"1 shape\\(s\\) differ, first model\\['{key}'\\] \\[2,") as err:
        load_model_file(_save(tmp_path / "shape.pt", spec, wrong))
    _one_line_naming(err, tmp_path / "shape.pt", key)
    fewer = {k: v for k, v in state.items() if k != key}
    with pytest.raises(FedSegNetError, match=f"1 missing \\['{key}'\\]"):
        load_model_file(_save(tmp_path / "missing.pt", spec, fewer))
    with pytest.raises(FedSegNetError, match="model\\['x'\\]: must map names to tensors, got str"):
        load_model_file(_save(tmp_path / "types.pt", spec, dict(state, x="not a tensor")))
    # a larger spec (channels) than its small weights: refused from shapes, before the real build
    big = _spec(network_kwargs={"channels": [64, 128, 256], "num_heads": 2, "num_layers": 1})
    with pytest.raises(FedSegNetError, match="shape\\(s\\) differ"):
        load_model_file(_save(tmp_path / "big.pt", big, state))


def test_check_spec_accepts_every_preset():
    for preset in PRESETS.values():
        check_spec(model_spec(preset, in_channels=4, num_classes=4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_are_refused(tmp_path, bad):
    spec = _spec()
    state = state_dict_for_exchange(build_from_spec(spec))
    key = next(k for k, v in state.items() if v.is_floating_point())
    broken = dict(state, **{key: state[key].clone().flatten().index_fill(0, torch.tensor([0]), bad).reshape(state[key].shape)})
    with pytest.raises(FedSegNetError, match=f"model\\['{key}'\\] holds NaN or Inf") as err:
        load_model_file(_save(tmp_path / "nan.pt", spec, broken))
    _one_line_naming(err, tmp_path / "nan.pt", key)
