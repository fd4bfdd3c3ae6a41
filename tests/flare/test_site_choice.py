"""No harm at a site: after the job, the site keeps whichever of the server's model, its personalised
model and its last local model scores best on its validation split, and that model file loads like
the server's."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants, ValidateType

from fedsegnet.config import build_train_config
from fedsegnet.data.synth import synthesize
from fedsegnet.errors import ConfigError
from fedsegnet.flare.constants import CHOICE_DIR
from fedsegnet.flare.learner import SegLearner
from fedsegnet.training.choice import CHOICE_FILE, choose, read_choice, save_choice
from fedsegnet.training.loop import state_dict_for_exchange
from fedsegnet.training.site import build_model_for
from fedsegnet.training.spec import load_model_file
from tests.flare.test_compression_filters import _ctx, _Engine


def test_the_best_validation_dice_wins_and_ties_keep_the_global_model():
    assert choose({"global": 0.5, "personal": 0.7, "local": 0.6}) == "personal"
    assert choose({"global": 0.6, "personal": 0.6, "local": 0.6}) == "global"
    assert choose({"global": None, "local": 0.1}) == "local"
    assert choose({"global": None, "local": math.nan}) == "global"  # nothing scored: the server's model
    with pytest.raises(ConfigError, match="candidate='best': unknown model candidate"):
        choose({"best": 1.0})


def test_choices_of_several_server_models_are_kept_side_by_side(tmp_path):
    w = {"a": np.ones(2, dtype=np.float32)}
    save_choice(tmp_path, "site-1", "SRV_FL_global_model.pt", {"global": 0.4, "local": 0.5}, "local", w, None)
    save_choice(tmp_path, "site-1", "SRV_best_FL_global_model.pt", {"global": 0.6}, "global", w, None)
    record = read_choice(tmp_path)
    assert record["models"]["SRV_FL_global_model.pt"] == {"chosen": "local", "val_dice": {"global": 0.4, "local": 0.5},
                                                          "file": "site-1_SRV_FL_global_model.pt"}  # fmt: skip
    assert record["models"]["SRV_best_FL_global_model.pt"]["chosen"] == "global"
    (tmp_path / CHOICE_FILE).write_text("[]")
    with pytest.raises(ConfigError, match="not a site's model-choice record"):
        read_choice(tmp_path)


@pytest.fixture(scope="module")
def site_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("choice_sites")
    synthesize(root, sites=1, cases=5, size=32, seed=2, test_cases=0)
    return root


def test_the_learner_keeps_the_best_model_after_validating_the_servers_model(site_data, tmp_path):
    learner = SegLearner(data_root=str(site_data), preset="tiny", local_steps=3, val_max_cases=2, analytic_sender_id="",
                         agreement_batches=0)  # fmt: skip
    ctx = _ctx(_Engine(tmp_path / "site-1"), "site-1")
    learner.initialize({}, ctx)
    assert learner.init_error is None, learner.init_error
    untrained = {k: v.numpy() for k, v in state_dict_for_exchange(build_model_for(build_train_config(preset="tiny"), 1, 3)).items()}
    task = DXO(DataKind.WEIGHTS, data=untrained).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 0)
    learner.train(task, ctx, Signal())  # the site now has a local model
    task.set_header(AppConstants.VALIDATE_TYPE, ValidateType.MODEL_VALIDATE)
    task.set_header(AppConstants.MODEL_OWNER, "SRV_FL_global_model.pt")
    metrics = from_shareable(learner.validate(task, ctx, Signal())).data
    choice = metrics["site_choice"]
    scores = choice["val_dice"]
    assert set(scores) == {"global", "local"} and choice["chosen"] == choose(scores)
    folder = tmp_path / "site-1" / "job-1" / CHOICE_DIR
    record = json.loads((folder / CHOICE_FILE).read_text())
    assert record["models"]["SRV_FL_global_model.pt"]["chosen"] == choice["chosen"]
    model, spec = load_model_file(folder / choice["file"])  # what `fedsegnet eval` / `infer --model` read
    kept = learner.trainer.get_weights() if choice["chosen"] == "local" else untrained
    state = {k: v.numpy() for k, v in state_dict_for_exchange(model).items()}
    assert all(np.array_equal(state[k], kept[k]) for k in kept) and spec["network"] == "hybrid_unetr"
    # a site model sent for someone else's evaluation gets no choice: only the server's models do
    task.set_header(AppConstants.MODEL_OWNER, "site-2")
    assert "site_choice" not in from_shareable(learner.validate(task, ctx, Signal())).data


def test_the_chosen_model_is_found_from_the_site_job_folder_or_refused_naming_what_is_missing(tmp_path):
    from fedsegnet.training.choice import chosen_model

    w = {"a": np.ones(2, dtype=np.float32)}
    folder = tmp_path / "site-1" / "job-1" / "fedsegnet_choice"
    save_choice(folder, "site-1", "SRV_FL_global_model.pt", {"global": 0.4, "local": 0.5}, "local", w, None)
    for given in (folder.parent, folder):
        path, info = chosen_model(given)
        assert path == folder / "site-1_SRV_FL_global_model.pt" and info["chosen"] == "local" and info["site"] == "site-1"
    with pytest.raises(ConfigError, match=r"no choice made from SRV_best_FL_global_model.pt \(it has: SRV_FL_global_model.pt\)"):
        chosen_model(folder, "best")
    with pytest.raises(ConfigError, match="choice.json.*cannot be read"):
        chosen_model(tmp_path)
    (folder / "site-1_SRV_FL_global_model.pt").unlink()
    with pytest.raises(ConfigError, match="the chosen model file is missing"):
        chosen_model(folder)
    record = read_choice(folder)
    record["models"]["SRV_FL_global_model.pt"]["file"] = "../../../etc/passwd"  # a record never points outside its folder
    (folder / CHOICE_FILE).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="the chosen model file is missing"):
        chosen_model(folder)
