"""DP-SGD through the FLARE Learner, on real FLARE objects: what the update meta says and leaves out,
the privacy state in the site's job workspace (taken over by a resumed job), the budget refusal."""

from __future__ import annotations

import json

import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.shareable import ReturnCode
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from fedsegnet.config import build_train_config
from fedsegnet.data.synth import synthesize
from fedsegnet.flare.constants import DP_REFUSED_HEADER, ERROR_HEADER, PRIVACY_DIR, UpdateMeta
from fedsegnet.flare.learner import SegLearner
from fedsegnet.training.loop import state_dict_for_exchange
from fedsegnet.training.site import build_model_for
from tests.flare.test_compression_filters import _ctx, _Engine

DP_ARGS = dict(preset="tiny", local_steps=2, val_max_cases=1, analytic_sender_id="", num_rounds=3, dp="patient", dp_noise=1.0)


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp_sites")
    synthesize(root, sites=1, cases=4, size=32, seed=1, test_cases=0)
    return root


def _site(sites, tmp_path, job="job-1", **kw):
    learner = SegLearner(data_root=str(sites), **{**DP_ARGS, **kw})
    ctx = _ctx(_Engine(tmp_path / "site-1"), "site-1")
    ctx.put(ReservedKey.RUN_NUM, job, private=True, sticky=False)
    learner.initialize({}, ctx)
    return learner, ctx


def _task(rnd=0):
    weights = {k: v.numpy() for k, v in state_dict_for_exchange(build_model_for(build_train_config(preset="tiny"), 1, 3)).items()}
    task = DXO(DataKind.WEIGHTS, data=weights).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, rnd)
    return task


def test_the_update_carries_epsilon_and_leaves_out_the_non_private_signals(sites, tmp_path):
    learner, ctx = _site(sites, tmp_path)
    assert learner.init_error is None, learner.init_error
    dxo = from_shareable(learner.train(_task(), ctx, Signal()))
    assert dxo.data_kind == DataKind.WEIGHT_DIFF
    report = dxo.get_meta_prop(UpdateMeta.DP)
    assert report["steps"] == 2 and report["epsilon"] > 0 and report["noise_multiplier"] == 1.0
    assert report["delta"] == pytest.approx(min(1e-5, 0.1 / learner.trainer.n_train))
    # computed from the training cases outside the accountant: not sent
    assert dxo.get_meta_prop(UpdateMeta.TRAIN_LOSS) is None and dxo.get_meta_prop(UpdateMeta.LABEL_AGREEMENT) is None
    assert dxo.get_meta_prop(UpdateMeta.TRAIN_SECONDS) is None
    assert dxo.get_meta_prop(UpdateMeta.N_TRAIN) == learner.trainer.n_train
    state = tmp_path / "site-1" / "job-1" / PRIVACY_DIR / "site-1.json"
    assert json.loads(state.read_text())["accountant"]["history"][0][2] == 2


def test_a_resumed_job_takes_the_spent_epsilon_over_and_keeps_the_earlier_file(sites, tmp_path):
    first, ctx = _site(sites, tmp_path)
    spent = from_shareable(first.train(_task(), ctx, Signal())).get_meta_prop(UpdateMeta.DP)["epsilon"]
    old = tmp_path / "site-1" / "job-1" / PRIVACY_DIR / "site-1.json"
    before = old.read_text()
    resumed, ctx2 = _site(sites, tmp_path, job="job-2", resume_from="job-1")
    assert resumed.init_error is None, resumed.init_error
    assert resumed.trainer.privacy.report()["epsilon"] == pytest.approx(spent)
    report = from_shareable(resumed.train(_task(1), ctx2, Signal())).get_meta_prop(UpdateMeta.DP)
    assert report["steps"] == 4 and report["epsilon"] > spent
    assert old.read_text() == before  # the earlier job's state is the earlier job's
    # a job that resumes nothing starts its own count
    fresh, _ = _site(sites, tmp_path, job="job-3")
    assert fresh.trainer.privacy.report()["steps"] == 0


def test_a_round_past_the_budget_is_answered_with_a_marked_refusal(sites, tmp_path):
    probe, _ = _site(sites, tmp_path / "probe")
    training = probe.trainer.privacy.training
    budget = (training.accountant.epsilon_after(2, 1.0, training.sample_rate) + training.accountant.epsilon_after(4, 1.0, training.sample_rate)) / 2
    learner, ctx = _site(sites, tmp_path, dp_budget=budget)
    assert from_shareable(learner.train(_task(0), ctx, Signal())).data_kind == DataKind.WEIGHT_DIFF
    reply = learner.train(_task(1), ctx, Signal())
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert reply.get_header(DP_REFUSED_HEADER) is True
    assert "site 'site-1': privacy budget" in reply.get_header(ERROR_HEADER) and f"dp_budget={budget:g}" in reply.get_header(ERROR_HEADER)


@pytest.mark.parametrize(
    "kw, text",
    [
        ({"dp_noise": None}, "dp_noise=None: dp='patient' needs dp_noise"),
        ({"dp": "none"}, "dp_noise=1.0: is set but dp='none'"),
        ({"dp_clip": 0}, "dp_clip=0"),
    ],
)
def test_bad_dp_job_args_are_reported_by_the_site_naming_the_arg(sites, tmp_path, kw, text):
    learner, ctx = _site(sites, tmp_path, **kw)
    assert learner.init_error and text in learner.init_error
    reply = learner.train(_task(), ctx, Signal())
    assert text in reply.get_header(ERROR_HEADER)


def test_a_site_policy_budget_wins_over_the_jobs_and_refuses_a_job_without_dp(sites, tmp_path):
    from fedsegnet.flare.privacy import SiteDPBudget

    probe, _ = _site(sites, tmp_path / "probe")
    training = probe.trainer.privacy.training
    one = training.accountant.epsilon_after(2, 1.0, training.sample_rate)
    two = training.accountant.epsilon_after(4, 1.0, training.sample_rate)
    policy = SiteDPBudget(budget=(one + two) / 2)
    # the job allows far more than the site's policy
    learner, ctx = _site(sites, tmp_path, dp_budget=100.0)
    for rnd, trains in ((0, True), (1, False)):
        task = policy.process(_task(rnd), ctx)
        reply = learner.train(task, ctx, Signal())
        assert (reply.get_return_code() == ReturnCode.OK) == trains
    assert reply.get_header(DP_REFUSED_HEADER) is True
    assert f"the site privacy policy's budget {policy.budget:g}" in reply.get_header(ERROR_HEADER)
    # a job without DP is refused at a site whose policy asks for it
    plain, ctx2 = _site(sites, tmp_path / "plain", dp="none", dp_noise=None)
    reply = plain.train(policy.process(_task(), ctx2), ctx2, Signal())
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert "site privacy policy allows updates only under DP" in reply.get_header(ERROR_HEADER)
    assert "dp='none'" in reply.get_header(ERROR_HEADER)


def test_the_policys_result_check_stops_an_update_without_dp_or_above_the_budget(sites, tmp_path):
    from fedsegnet.errors import ConfigError
    from fedsegnet.flare.privacy import SiteDPBudget

    check = SiteDPBudget(budget=2.0, stage="result")
    ctx = _ctx(_Engine(tmp_path / "site-1"), "site-1")
    update = {"w": __import__("numpy").ones(3, dtype="float32")}
    plain = DXO(DataKind.WEIGHT_DIFF, data=update).to_shareable()
    out = check.process(plain, ctx)
    assert out.get_return_code() == ReturnCode.EXECUTION_EXCEPTION and "without differential privacy" in out.get_header(ERROR_HEADER)
    above = DXO(DataKind.WEIGHT_DIFF, data=update, meta={UpdateMeta.DP: {"epsilon": 2.5}}).to_shareable()
    out = check.process(above, ctx)
    assert "reports epsilon 2.500" in out.get_header(ERROR_HEADER) and "epsilon <= 2" in out.get_header(ERROR_HEADER)
    within = DXO(DataKind.WEIGHT_DIFF, data=update, meta={UpdateMeta.DP: {"epsilon": 1.5}}).to_shareable()
    assert from_shareable(check.process(within, ctx)).data["w"].sum() == 3  # passes unchanged
    # a DP site's local model submitted for cross-site evaluation carries its report and passes
    learner, lctx = _site(sites, tmp_path)
    learner.train(_task(), lctx, Signal())
    submitted = learner.get_model_for_validation("site-1", lctx)
    assert from_shareable(SiteDPBudget(budget=100.0, stage="result").process(submitted, lctx)).data_kind == DataKind.WEIGHTS
    for bad in (dict(budget=0), dict(budget=float("inf")), dict(budget=1.0, stage="both")):
        with pytest.raises(ConfigError):
            SiteDPBudget(**bad)
