"""A site of each label kind trains with its own loss: box and tag sites draw pseudo-labels from the
received global model, a partial site uses the marginal + exclusion losses; weak-label cases are
not scored, and the AAM agreement signal says None where it cannot be measured."""

import numpy as np
import pytest

from fedsegnet.config import build_train_config
from fedsegnet.data.synth import synthesize
from fedsegnet.training.site import SiteTrainer
from fedsegnet.training.weak_losses import WeakSupervisionLoss


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    synthesize(root, sites=4, cases=3, size=24, seed=2, test_cases=0,
               label_kinds="site-2:box,site-3:tag,site-4:partial:2", orientation={"site-2": "LPS"})  # fmt: skip
    return root


@pytest.mark.parametrize("site, kind", [("site-1", "voxel"), ("site-2", "box"), ("site-3", "tag"), ("site-4", "partial")])
def test_each_kind_trains_a_round(mixed, site, kind):
    config = build_train_config(preset="tiny", local_steps=2, seed=0, amp=False, num_workers=0, patch_size=16)
    trainer = SiteTrainer(mixed / site, config, site=site, device="cpu", weak_loss={"ramp_rounds": 0})
    assert trainer.datalist.label_kind == kind
    assert isinstance(trainer.loss_fn, WeakSupervisionLoss) == (kind != "voxel")
    if kind == "partial":
        assert trainer.loss_fn.annotated == (2,)
    weights = trainer.get_weights()
    update, stats = trainer.train_round(weights, round=3)
    assert stats["steps"] == 2 and np.isfinite(stats["loss_mean"])
    assert any(np.abs(v).sum() > 0 for v in update.values())
    assert (stats["agreement"] is None) == (kind in ("box", "tag"))
    result = trainer.evaluate()
    assert result.n_cases == (0 if kind in ("box", "tag") else 1)
