"""SegLearner options of the AAM issue: FedProx (FLARE's PTFedProxLoss) and the label-agreement signal in the update."""

import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

from fedsegnet.data.synth import synthesize
from fedsegnet.flare.constants import UpdateMeta
from fedsegnet.flare.learner import SegLearner


def test_negative_fedprox_mu_is_named():
    """A bad job arg never raises out of the constructor (FLARE would show a traceback); the site
    answers every task with the message naming it."""
    learner = SegLearner(fedprox_mu=-0.1, analytic_sender_id="")
    ctx = FLContext()
    ctx.put(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=False)
    learner.initialize({}, ctx)
    assert learner.init_error == "fedprox_mu=-0.1: must be a number >= 0"
    assert learner.train(DXO(DataKind.WEIGHTS, data={}).to_shareable(), ctx, Signal()).get_return_code() != "OK"


def test_fedprox_and_agreement_reach_the_update(tmp_path):
    synthesize(tmp_path, sites=1, cases=3, size=32, seed=2, test_cases=0)
    learner = SegLearner(data_root=str(tmp_path), preset="tiny", local_steps=2, fedprox_mu=0.05, analytic_sender_id="")
    ctx = FLContext()
    ctx.put(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=False)
    learner.initialize({}, ctx)
    assert learner.init_error is None
    assert isinstance(learner.trainer.proximal_loss, PTFedProxLoss) and learner.trainer.proximal_loss.mu == 0.05
    task = DXO(DataKind.WEIGHTS, data=learner.trainer.get_weights()).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 0)
    dxo = from_shareable(learner.train(task, ctx, Signal()))
    assert dxo.data_kind == DataKind.WEIGHT_DIFF
    agreement = dxo.get_meta_prop(UpdateMeta.LABEL_AGREEMENT)
    assert agreement is None or 0.0 <= agreement <= 1.0
    assert UpdateMeta.LABEL_AGREEMENT in dxo.meta
