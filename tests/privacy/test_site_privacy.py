"""DP-SGD inside SiteTrainer: every round is private and counted, the accountant survives a restart,
the budget stops a round before anything changes, and what DP cannot train is refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsegnet.config import PersonalConfig, build_train_config
from fedsegnet.errors import ConfigError
from fedsegnet.privacy import DPSettings, cases_per_step
from fedsegnet.privacy.site import PrivacyBudgetSpent
from fedsegnet.training.site import SiteTrainer


def _config(steps=3):
    return build_train_config(preset="tiny", local_steps=steps, seed=0, amp=False, num_workers=0, patch_size=16)


def _trainer(site_dir, dp, **kw):
    return SiteTrainer(site_dir, _config(kw.pop("steps", 3)), site="site-1", device="cpu", run_preflight=False, dp=dp, **kw)


def test_a_private_round_is_counted_and_saved_and_a_restart_goes_on_from_it(dp_site, tmp_path):
    state = tmp_path / "privacy" / "site-1.json"
    dp = DPSettings(mode="patient", noise=1.0, clip=1.0)
    trainer = _trainer(dp_site, dp, privacy_file=state)
    assert trainer.agreement_batches == 0  # the agreement signal reads training cases outside the accountant
    weights = trainer.get_weights()
    update, stats = trainer.train_round(weights, round=0)
    assert stats["agreement"] is None and stats["steps"] == 3
    assert any(np.abs(v).max() > 0 for v in update.values())
    report = stats["dp"]
    assert report["steps"] == 3 and report["epsilon"] > 0 and report["noise_multiplier"] == 1.0
    q = cases_per_step(trainer.config.preset) / trainer.n_train  # the rate the case loader draws
    assert report["sample_rate"] == pytest.approx(q) and trainer.n_train == 6
    saved = json.loads(state.read_text())
    assert saved["site"] == "site-1" and saved["round"] == 0 and saved["accountant"]["history"] == [[1.0, q, 3]]

    # a restarted site (same state file) continues from the epsilon spent, never from zero
    again = _trainer(dp_site, dp, privacy_file=state)
    assert again.privacy.restored_from == str(state)
    assert again.privacy.report()["epsilon"] == pytest.approx(report["epsilon"])
    _, stats2 = again.train_round(weights, round=1)
    assert stats2["dp"]["steps"] == 6 and stats2["dp"]["epsilon"] > report["epsilon"]


def test_the_budget_refuses_a_round_before_anything_changes(dp_site, tmp_path):
    state = tmp_path / "site-1.json"
    probe = _trainer(dp_site, DPSettings(mode="patient", noise=1.0), privacy_file=None)
    one_round = probe.privacy.training.accountant.epsilon_after(3, 1.0, probe.privacy.training.sample_rate)
    two_rounds = probe.privacy.training.accountant.epsilon_after(6, 1.0, probe.privacy.training.sample_rate)
    budget = (one_round + two_rounds) / 2  # room for one round, not two
    trainer = _trainer(dp_site, DPSettings(mode="patient", noise=1.0, budget=budget), privacy_file=state)
    weights = trainer.get_weights()
    trainer.train_round(weights, round=0)
    before_model = {k: v.copy() for k, v in trainer.get_weights().items()}
    before_state = state.read_text()
    with pytest.raises(PrivacyBudgetSpent) as err:
        trainer.train_round(weights, round=1)
    text = str(err.value)
    assert "site 'site-1'" in text and f"dp_budget={budget:g}" in text and "not training" in text
    assert state.read_text() == before_state  # nothing counted for a round that did not train
    assert all(np.array_equal(before_model[k], v) for k, v in trainer.get_weights().items())
    assert trainer.rounds_done == 1


def test_a_target_epsilon_is_spent_over_the_planned_rounds(dp_site):
    trainer = _trainer(dp_site, DPSettings(mode="patient", target_epsilon=4.0), planned_rounds=2, steps=2)
    weights = trainer.get_weights()
    for rnd in range(2):
        _, stats = trainer.train_round(weights, round=rnd)
    assert 4.0 - 0.02 <= stats["dp"]["epsilon"] <= 4.0


def test_an_unreadable_or_foreign_state_file_stops_the_site_and_is_kept(dp_site, tmp_path):
    dp = DPSettings(mode="patient", noise=1.0)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"dp_state=.*bad\.json.*cannot be read.*from zero"):
        _trainer(dp_site, dp, privacy_file=bad)
    assert bad.read_text() == "{not json"
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"site": "site-9", "accountant": {"mechanism": "rdp", "history": []}}))
    with pytest.raises(ConfigError, match="belongs to site 'site-9', not 'site-1'"):
        _trainer(dp_site, dp, privacy_file=foreign)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"proximal_loss": lambda a, b: 0.0}, "fedprox_mu"),
        ({"personal": PersonalConfig(method="ditto")}, "personalization"),
        ({"personal": PersonalConfig(boundary_weight=0.5)}, "boundary_weight"),
    ],
)
def test_what_dp_cannot_train_is_refused_naming_the_job_arg(dp_site, kw, field):
    with pytest.raises(ConfigError) as err:
        _trainer(dp_site, DPSettings(mode="patient", noise=1.0), **kw)
    assert err.value.field == field and "site 'site-1'" in str(err.value)


def test_a_weak_label_site_is_refused_naming_its_label_kind(tmp_path):
    from fedsegnet.data.synth import synthesize

    synthesize(tmp_path, sites=2, cases=2, size=24, seed=0, test_cases=0, label_kinds="site-2:box")
    with pytest.raises(ConfigError, match="site 'site-2'.*label kind 'box'"):
        SiteTrainer(tmp_path / "site-2", _config(), site="site-2", device="cpu", run_preflight=False,
                    dp=DPSettings(mode="patient", noise=1.0))  # fmt: skip


def test_the_server_knowing_the_job_seed_cannot_replay_the_noise(dp_site):
    """Playing the server: it knows the job seed (and here even the site's data), so it can re-run the
    site's round; without DP it gets the site's update exactly, with DP it does not, so it cannot
    subtract the noise from what the site sent."""

    def one_round(dp):
        trainer = _trainer(dp_site, dp, steps=2)
        return trainer.train_round(trainer.get_weights(), round=0)[0]

    plain_a, plain_b = one_round(None), one_round(None)
    assert all(np.array_equal(plain_a[k], plain_b[k]) for k in plain_a)  # the replay works without DP
    dp = DPSettings(mode="patient", noise=1.0)
    private_a, private_b = one_round(dp), one_round(dp)
    assert any(not np.allclose(private_a[k], private_b[k]) for k in private_a)
