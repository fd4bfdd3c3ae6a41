"""Personalisation through the FLARE adapters, on real FLARE objects: what leaves a site, what the
server decodes and aggregates, the site-side validation, Ditto with FLARE's helper, restarts."""

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants, ValidateType
from nvflare.fuel.utils import fobs

from fedsegnet.compression import decode_payload
from fedsegnet.config import build_train_config
from fedsegnet.data.synth import synthesize
from fedsegnet.flare.aggregator import AAMAggregator
from fedsegnet.flare.compression import UpdateDecoder, UpdateEncoder
from fedsegnet.flare.constants import AAM_RECORD_PROP, PERSONAL_DIR, UpdateMeta
from fedsegnet.flare.learner import SegLearner
from fedsegnet.training.site import build_model_for
from fedsegnet.training.loop import state_dict_for_exchange
from tests.flare.test_compression_filters import _ctx, _Engine

NETWORK = {"dca": "dca_unetr", "fedbn": "hybrid_unetr", "ditto": "hybrid_unetr"}


@pytest.fixture(scope="module")
def organs(tmp_path_factory):
    root = tmp_path_factory.mktemp("organs")
    synthesize(root, sites=2, cases=3, size=32, seed=5, test_cases=1, scenario="organs")
    return root


class _ModelHolder:
    """Stands in for the server's persistor: the component that holds the job's network."""

    def __init__(self, model):
        self.model = model

    def handle_event(self, event_type, fl_ctx):
        pass


def _global(network, seed=9):
    config = build_train_config(preset="tiny", network=network, seed=seed)
    return {k: v.numpy() for k, v in state_dict_for_exchange(build_model_for(config, 1, 3)).items()}


def _site(organs, tmp_path, method, site="site-1"):
    learner = SegLearner(data_root=str(organs), preset="tiny", network=NETWORK[method], local_steps=2, val_max_cases=1,
                         agreement_batches=0, analytic_sender_id="", personalization=method)  # fmt: skip
    ctx = _ctx(_Engine(tmp_path / site), site)
    learner.initialize({}, ctx)
    assert learner.init_error is None, learner.init_error
    return learner, ctx


def _task(weights, rnd=0):
    task = DXO(DataKind.WEIGHTS, data=weights).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, rnd)
    return task


@pytest.mark.parametrize("method", ["dca", "fedbn"])
def test_personal_keys_never_leave_the_site_and_the_server_aggregates_the_rest(organs, tmp_path, method):
    learner, ctx = _site(organs, tmp_path, method)
    personal = set(learner.trainer.personal_keys)
    assert personal
    global_w = _global(NETWORK[method])
    result = learner.train(_task(global_w), ctx, Signal())
    dxo = from_shareable(result)
    assert not personal & set(dxo.data) and set(dxo.data) | personal == set(global_w)
    assert set(dxo.get_meta_prop(UpdateMeta.PERSONAL_KEYS)) == personal  # names, never values
    # what goes on the wire: the encoded payload, serialised as FLARE sends it
    wire = fobs.dumps(UpdateEncoder().process(result, ctx))
    sent = from_shareable(fobs.loads(wire))
    assert not personal & set(decode_payload(sent.data))
    # the server decodes against the shared keys and aggregates only those
    # the server knows the kept keys from its own job args and network (the persistor's), never from the site
    persistor = _ModelHolder(build_model_for(build_train_config(preset="tiny", network=NETWORK[method], seed=9), 1, 3))
    server = _ctx(_Engine(tmp_path / "server", {"persistor": persistor}), "server", peer="site-1",
                  **{AppConstants.GLOBAL_MODEL: make_model_learnable(global_w, {}), AppConstants.CURRENT_ROUND: 0})  # fmt: skip
    decoded = UpdateDecoder().process(fobs.loads(wire), server)
    assert not AAMAggregator().accept(decoded, server)  # a job that keeps nothing at the sites refuses it
    agg = AAMAggregator(personalization=method)
    assert agg.accept(decoded, server)
    combined = agg.aggregate_model().params
    assert combined and not personal & set(combined)
    assert server.get_prop(AAM_RECORD_PROP)["sites"]["site-1"]["personal_keys"] == len(personal)  # the round record
    # a site's model submitted for cross-site evaluation holds no personal key either
    submitted = from_shareable(learner.get_model_for_validation("site-1", ctx)).data
    assert submitted and not personal & set(submitted)


def test_a_site_that_names_unknown_personal_keys_is_refused(organs, tmp_path):
    learner, ctx = _site(organs, tmp_path, "dca")
    global_w = _global("dca_unetr")
    dxo = from_shareable(learner.train(_task(global_w), ctx, Signal()))
    dxo.set_meta_prop(UpdateMeta.PERSONAL_KEYS, ["no.such.key"])
    server = _ctx(_Engine(tmp_path / "server"), "server", peer="site-1",
                  **{AppConstants.GLOBAL_MODEL: make_model_learnable(global_w, {}), AppConstants.CURRENT_ROUND: 0})  # fmt: skip
    agg = AAMAggregator()
    assert not agg.accept(dxo.to_shareable(), server)
    record = agg.aggregate_model()
    assert record.params == {}  # the global model is unharmed


def test_personal_state_survives_a_site_restart_and_validation_scores_the_personal_model(organs, tmp_path):
    learner, ctx = _site(organs, tmp_path, "dca")
    global_w = _global("dca_unetr")
    learner.train(_task(global_w), ctx, Signal())
    mine = {k: learner.trainer.get_weights()[k] for k in learner.trainer.personal_keys}
    assert (tmp_path / "site-1" / "job-1" / PERSONAL_DIR / "site-1.pt").is_file()
    restarted, ctx2 = _site(organs, tmp_path, "dca")  # a new process: nothing in memory
    again = restarted.trainer.with_personal_keys(global_w)
    assert all(np.array_equal(again[k].numpy(), v) for k, v in mine.items())
    task = _task(global_w)
    task.set_header(AppConstants.VALIDATE_TYPE, ValidateType.MODEL_VALIDATE)
    task.set_header(AppConstants.MODEL_OWNER, "SRV_FL_global_model.pt")
    metrics = from_shareable(restarted.validate(task, ctx2, Signal())).data
    assert metrics["personal"]["split"] == "test" and metrics["personal"]["n_cases"] == 1
    assert metrics["personal"]["val_dice"] is not None


def test_ditto_runs_with_flares_helper_and_keeps_its_files(organs, tmp_path):
    from nvflare.app_opt.pt.ditto import PTDittoHelper

    learner, ctx = _site(organs, tmp_path, "ditto")
    helper = learner.trainer.ditto_helper
    assert isinstance(helper, PTDittoHelper) and helper.prox_criterion.mu == 0.1
    global_w = _global("hybrid_unetr")
    dxo = from_shareable(learner.train(_task(global_w), ctx, Signal()))
    assert set(dxo.data) == set(global_w) and UpdateMeta.PERSONAL_KEYS not in dxo.meta
    folder = tmp_path / "site-1" / "job-1" / PERSONAL_DIR
    assert (folder / "personalized_model.pt").is_file() and (folder / "best_personalized_model.pt").is_file()
    personal = learner.trainer.personal_weights(global_w)
    assert any(not np.allclose(personal[k].numpy(), global_w[k]) for k in global_w)


def test_bad_personalisation_is_reported_by_the_site_not_raised(organs, tmp_path):
    learner = SegLearner(data_root=str(organs), preset="tiny", analytic_sender_id="", personalization="dca")
    learner.initialize({}, _ctx(_Engine(tmp_path / "site-1"), "site-1"))
    assert "personalization 'dca' needs a network" in learner.init_error
