"""Personalisation at a site: which keys stay local, the personal store, Ditto, fine-tuning, restarts."""

import numpy as np
import pytest
import torch
from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

from fedsegnet.config import PersonalConfig, build_train_config
from fedsegnet.data.synth import synthesize
from fedsegnet.errors import ConfigError, FedSegNetError
from fedsegnet.networks import build_network
from fedsegnet.networks.personal import norm_keys
from fedsegnet.training.loop import state_dict_for_exchange
from fedsegnet.training.personal import PersonalStore, personal_key_names, personalise, proximal_term
from fedsegnet.training.site import SiteTrainer

NET = {"channels": (8, 16, 32), "num_heads": 2, "num_layers": 1}


def _net(name="dca_unetr", seed=0, **kw):
    return build_network(name, in_channels=1, out_channels=3, patch_size=16, seed=seed, **{**NET, **kw})


@pytest.fixture(scope="module")
def organs(tmp_path_factory):
    root = tmp_path_factory.mktemp("organs")
    synthesize(root, sites=2, cases=3, size=32, seed=4, test_cases=1, scenario="organs")
    return root


def _trainer(folder, personal, personal_dir=None, network="dca_unetr"):
    config = build_train_config(preset="tiny", network=network, local_steps=2, seed=0, val_max_cases=1)
    return SiteTrainer(folder, config, personal=personal, personal_dir=personal_dir, agreement_batches=0)


# ------------------------------------------------------------------------------ which keys stay local
@pytest.mark.parametrize("method, expect", [("none", 0), ("ditto", 0), ("finetune", 0)])
def test_methods_without_local_parts_share_every_key(method, expect):
    assert len(personal_key_names(_net(), PersonalConfig(method=method))) == expect


def test_fedbn_keeps_exactly_the_norm_layers():
    net = _net("hybrid_unetr", norm="batch")
    keys = personal_key_names(net, PersonalConfig(method="fedbn"))
    assert keys == sorted(norm_keys(net))
    assert any(k.endswith("running_mean") for k in keys)  # BatchNorm statistics stay too
    assert not any("conv" in k.split(".")[-2] for k in keys)


def test_dca_keeps_queries_and_shares_keys_values():
    keys = personal_key_names(_net(), PersonalConfig(method="dca"))
    assert keys and any(".q_proj." in k for k in keys)
    assert not any(".k_proj." in k or ".v_proj." in k for k in keys)


def test_dca_on_a_network_without_queries_is_named():
    with pytest.raises(ConfigError) as info:
        personal_key_names(_net("hybrid_unetr"), PersonalConfig(method="dca"))
    assert info.value.field == "network"
    with pytest.raises(ConfigError) as info:
        personal_key_names(_net(dca_layers=0), PersonalConfig(method="dca"))
    assert info.value.field == "network"


def test_personal_keys_patterns_add_to_the_method_and_a_dead_pattern_is_named():
    keys = personal_key_names(_net(), PersonalConfig(method="none", personal_keys=("head.*",)))
    assert keys and all(k.startswith("head.") for k in keys)
    with pytest.raises(ConfigError) as info:
        personal_key_names(_net(), PersonalConfig(personal_keys=("no_such_layer.*",)))
    assert info.value.field == "personal_keys"


@pytest.mark.parametrize("kwargs, field", [
    ({"method": "fedprox"}, "personalization"), ({"personal_keys": "head.*"}, "personal_keys"),
    ({"ditto_lambda": -1.0}, "ditto_lambda"), ({"personal_steps": -1}, "personal_steps"),
    ({"boundary_weight": float("nan")}, "boundary_weight"), ({"boundary_band": 0}, "boundary_band"),
    ({"boundary_perturbation": 0.0}, "boundary_perturbation"),
])  # fmt: skip
def test_bad_personal_config_is_named(kwargs, field):
    with pytest.raises(ConfigError) as info:
        PersonalConfig(**kwargs)
    assert info.value.field == field


# ------------------------------------------------------------------------------ pure helpers
def test_personalise_lays_personal_values_over_and_changes_nothing():
    g = {"a": np.zeros(2), "b": np.ones(2)}
    mine = {"b": torch.full((2,), 5.0)}
    out = personalise(g, mine)
    assert torch.equal(out["b"], mine["b"]) and out["a"] is g["a"]
    assert np.array_equal(g["b"], np.ones(2)) and set(mine) == {"b"}


@pytest.mark.parametrize("mu", [0.0, 0.05, 1.0])
def test_proximal_term_equals_flares_fedprox_loss(mu):
    a, b = _net(seed=0), _net(seed=1)
    ours = proximal_term(a, b, mu)
    assert torch.allclose(ours, PTFedProxLoss(mu=mu)(a, b).float(), rtol=1e-5, atol=1e-8)


def test_store_round_trip_site_check_and_version(tmp_path):
    store = PersonalStore(tmp_path / "p" / "site-1.pt", site="site-1")
    assert store.load() is None
    store.save(method="dca", round=3, keys={"x": torch.ones(2)}, model=None)
    state = store.load()
    assert state["round"] == 3 and torch.equal(state["keys"]["x"], torch.ones(2)) and state["model"] is None
    assert not list((tmp_path / "p").glob("*.tmp*"))  # written through a temporary file and renamed
    with pytest.raises(FedSegNetError, match="site-1.*not 'site-2'"):
        PersonalStore(store.path, site="site-2").load()
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(FedSegNetError, match="other.pt"):
        PersonalStore(tmp_path / "other.pt").load()


# ------------------------------------------------------------------------------ SiteTrainer
def test_dca_site_sends_only_shared_keys_and_keeps_its_queries_across_a_restart(organs, tmp_path):
    t = _trainer(organs / "site-1", PersonalConfig(method="dca"), tmp_path)
    global_w = t.get_weights()
    update, _ = t.train_round(global_w, round=0)
    assert t.personal_keys and not set(update) & set(t.personal_keys)
    assert set(update) | set(t.personal_keys) == set(global_w)
    mine = {k: t.get_weights()[k] for k in t.personal_keys}
    assert any(not np.allclose(mine[k], global_w[k]) for k in mine)  # the queries trained
    # the next round: the server's (never trained) query values are replaced by the site's own
    t.train_round(global_w, round=1)
    after_restart = _trainer(organs / "site-1", PersonalConfig(method="dca"), tmp_path)
    assert after_restart.rounds_done == 2
    for k in t.personal_keys:
        assert np.array_equal(after_restart.with_personal_keys(global_w)[k].numpy(), t.get_weights()[k])


def test_a_stored_state_of_another_method_is_refused_by_name(organs, tmp_path):
    _trainer(organs / "site-1", PersonalConfig(method="dca"), tmp_path).train_round(
        _trainer(organs / "site-1", PersonalConfig()).get_weights(), round=0)  # fmt: skip
    with pytest.raises(FedSegNetError, match="site-1.pt.*'dca'"):
        _trainer(organs / "site-1", PersonalConfig(method="fedbn"), tmp_path)


def test_ditto_trains_a_personal_model_towards_the_global_one(organs, tmp_path):
    t = _trainer(organs / "site-1", PersonalConfig(method="ditto", ditto_lambda=0.5), tmp_path)
    global_w = t.get_weights()
    update, stats = t.train_round(global_w, round=0)
    assert set(update) == set(global_w)  # Ditto shares the whole exchanged model
    assert stats["personal_loss_mean"] is not None
    personal = t.personal_weights(global_w)
    local = t.get_weights()
    assert any(not np.allclose(personal[k].numpy(), local[k]) for k in local)  # a second, separate model
    assert any(not np.allclose(personal[k].numpy(), global_w[k]) for k in local)
    restarted = _trainer(organs / "site-1", PersonalConfig(method="ditto", ditto_lambda=0.5), tmp_path)
    again = restarted.personal_weights(global_w)
    assert all(torch.equal(again[k], personal[k]) for k in personal)


def test_finetune_starts_from_the_global_model_and_leaves_the_training_model(organs, tmp_path):
    t = _trainer(organs / "site-1", PersonalConfig(method="finetune", personal_steps=2), tmp_path)
    global_w = t.get_weights()
    assert all(np.array_equal(t.personal_weights(global_w)[k], global_w[k]) for k in global_w)  # not yet tuned
    before = t.get_weights()
    stats = t.finetune(global_w)
    assert stats["steps"] == 2
    tuned = t.personal_weights(global_w)
    assert any(not np.allclose(tuned[k].numpy(), global_w[k]) for k in global_w)
    assert all(np.array_equal(t.get_weights()[k], before[k]) for k in before)
    assert PersonalStore(tmp_path / "site-1.pt").load()["model"] is not None


def test_boundary_loss_joins_every_training_step(organs):
    plain = _trainer(organs / "site-1", PersonalConfig())
    pbl = _trainer(organs / "site-1", PersonalConfig(boundary_weight=1.0))
    assert plain.boundary_loss is None and pbl.boundary_loss is not None
    w = plain.get_weights()
    _, a = plain.train_round(w, round=0)
    _, b = pbl.train_round(w, round=0)
    assert b["loss_first"] > a["loss_first"]  # same crops and weights, plus a positive boundary term


def test_site_test_split_scores_the_personal_model(organs, tmp_path):
    t = _trainer(organs / "site-2", PersonalConfig(method="fedbn"), tmp_path, network="hybrid_unetr")
    w = t.get_weights()
    t.train_round(w, round=0)
    result = t.evaluate(weights=t.personal_weights(w), split="test", max_cases=0)
    assert result.n_cases == 1 and result.dice_mean is not None


def test_state_dict_for_exchange_is_what_personal_keys_name():
    net = _net()
    assert set(personal_key_names(net, PersonalConfig(method="dca"))) <= set(state_dict_for_exchange(net))


# ------------------------------------------------------------------------------ a user at one site
def _global_file(path, network="dca_unetr"):
    from fedsegnet.training.spec import build_from_spec, model_spec

    spec = model_spec(build_train_config(preset="tiny", network=network).preset, in_channels=1, num_classes=3)
    torch.manual_seed(0)
    torch.save({"model": state_dict_for_exchange(build_from_spec(spec)), "train_conf": {"fedsegnet": spec}}, path)
    return path


def test_eval_personal_scores_the_sites_personalised_model(organs, tmp_path, capsys):
    import json

    from fedsegnet.cli import main
    from fedsegnet.training.spec import load_model_file
    from fedsegnet.training.personal import apply_personal_state

    model_path = _global_file(tmp_path / "FL_global_model.pt")
    t = _trainer(organs / "site-1", PersonalConfig(method="dca"), tmp_path / "personal")
    global_w = {k: v.numpy() for k, v in load_model_file(model_path)[0].state_dict().items()}
    t.train_round(global_w, round=0)
    state = tmp_path / "personal" / "site-1.pt"
    model, _ = load_model_file(model_path)
    summary = apply_personal_state(model, state)
    assert summary == {"site": "site-1", "method": "dca", "round": 0, "n_keys": len(t.personal_keys), "whole_model": False}
    for k in t.personal_keys:
        assert np.array_equal(model.state_dict()[k].numpy(), t.get_weights()[k])
    args = ["eval", "--model", str(model_path), "--data", str(organs / "site-1"), "--split", "test", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(args + ["--personal", str(state)]) == 0
    mine = json.loads(capsys.readouterr().out)
    assert plain["n_cases"] == mine["n_cases"] == 1 and mine["dice_mean"] is not None
    assert main(args[:-1] + ["--personal", str(state)]) == 0
    assert "personalised for site-1 (dca, round 0" in capsys.readouterr().out


def test_personal_state_of_another_network_or_missing_file_is_named(organs, tmp_path):
    from fedsegnet.training.spec import load_model_file
    from fedsegnet.training.personal import apply_personal_state

    t = _trainer(organs / "site-1", PersonalConfig(method="dca"), tmp_path / "personal")
    t.train_round(t.get_weights(), round=0)
    model, _ = load_model_file(_global_file(tmp_path / "hybrid.pt", network="hybrid_unetr"))
    with pytest.raises(FedSegNetError, match="site-1.pt: does not fit the model"):
        apply_personal_state(model, tmp_path / "personal" / "site-1.pt")
    with pytest.raises(FedSegNetError, match="nope.pt: no such personal state file"):
        apply_personal_state(model, tmp_path / "nope.pt")


def test_infer_personal_segments_with_the_sites_model(organs, tmp_path, capsys):
    import nibabel as nib

    from fedsegnet.cli import main
    from fedsegnet.data.datalist import load_datalist
    from fedsegnet.training.spec import load_model_file

    model_path = _global_file(tmp_path / "FL_global_model.pt")
    t = _trainer(organs / "site-1", PersonalConfig(method="dca"), tmp_path / "personal")
    t.train_round({k: v.numpy() for k, v in load_model_file(model_path)[0].state_dict().items()}, round=0)
    image = load_datalist(organs / "site-1").test[0]["image"]
    out = tmp_path / "seg.nii.gz"
    assert main(["infer", "--model", str(model_path), "--image", str(image), "--out", str(out),
                 "--personal", str(tmp_path / "personal" / "site-1.pt")]) == 0  # fmt: skip
    assert "personalised for site-1 (dca, round 0)" in capsys.readouterr().out
    assert nib.load(out).shape == nib.load(image).shape[:3]
