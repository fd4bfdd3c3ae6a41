"""The accountant: Opacus RDP against Google's dp-accounting, restart, noise for a target, budget."""

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import RDPAccountant

from fedsegnet.errors import ConfigError
from fedsegnet.privacy import PrivacyAccountant, noise_for_target_epsilon
from fedsegnet.privacy.accountant import EPSILON_TOLERANCE

# one setting: 2 of 40 cases per step, sigma 1.1, 500 steps (e.g. 10 rounds x 50 local steps)
Q, SIGMA, STEPS, DELTA = 0.05, 1.1, 500, 1e-5
REL_TOL = 1e-3
"""Opacus and dp-accounting compute the same RDP bound with different numerics: measured 6.9216
(Opacus) against 6.9247 (dp-accounting, same orders), 0.04 % apart."""


def _spent(steps, sigma=SIGMA, q=Q, delta=DELTA) -> PrivacyAccountant:
    acc = PrivacyAccountant(delta)
    for _ in range(steps):
        acc.step(sigma, q)
    return acc


def _event(steps, sigma=SIGMA, q=Q):
    return dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)


def test_epsilon_matches_dp_accounting_rdp_and_bounds_the_pld_epsilon():
    ours = _spent(STEPS).epsilon()
    reference = RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    reference.compose(_event(STEPS))
    assert ours == pytest.approx(reference.get_epsilon(DELTA), rel=REL_TOL)
    assert ours == pytest.approx(6.92, abs=0.01)
    tight = PLDAccountant()
    tight.compose(_event(STEPS))
    assert tight.get_epsilon(DELTA) < ours  # RDP is an upper bound of the tight (PLD) epsilon


def test_a_restored_accountant_continues_from_the_spent_epsilon():
    first = _spent(200)
    state = first.state_dict()
    assert state == {"mechanism": "rdp", "history": [[SIGMA, Q, 200]]}
    restarted = PrivacyAccountant(DELTA)
    restarted.load_state_dict(state)
    assert restarted.steps == 200 and restarted.epsilon() == pytest.approx(first.epsilon())
    for _ in range(300):
        restarted.step(SIGMA, Q)
    assert restarted.epsilon() == pytest.approx(_spent(STEPS).epsilon())
    assert restarted.epsilon() > first.epsilon() > 0
    assert PrivacyAccountant(DELTA).epsilon() == 0.0


@pytest.mark.parametrize("state", [{"mechanism": "prv", "history": []}, {"mechanism": "rdp", "history": [[0.0, Q, 3]]}, {"mechanism": "rdp", "history": [[1.0, 2.0, 3]]}, [1, 2]])
def test_a_bad_state_is_refused_and_changes_nothing(state):
    acc = _spent(3)
    with pytest.raises(ConfigError, match="dp_state"):
        acc.load_state_dict(state)
    assert acc.steps == 3


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_noise_for_a_target_epsilon_spends_it_over_the_planned_steps(target):
    sigma = noise_for_target_epsilon(target, DELTA, Q, STEPS)
    spent = PrivacyAccountant(DELTA).epsilon_after(STEPS, sigma, Q)
    assert target - EPSILON_TOLERANCE <= spent <= target


def test_a_target_the_planned_steps_cannot_reach_is_refused_naming_the_arg():
    with pytest.raises(ConfigError, match=r"dp_target_epsilon=1e-06: cannot be reached: 500 planned steps"):
        noise_for_target_epsilon(1e-6, DELTA, Q, STEPS)


def test_the_budget_refuses_the_round_that_would_pass_it():
    acc = _spent(450)
    budget = _spent(STEPS).epsilon() + 1e-6  # exactly 50 more steps fit
    assert acc.budget_refusal(budget, 50, SIGMA, Q) is None
    reason = acc.budget_refusal(budget, 51, SIGMA, Q)
    assert reason.startswith("privacy budget: 51 more steps would spend epsilon") and "dp_budget=" in reason
    assert "over 450 steps" in reason
    assert acc.budget_refusal(0.0, 10_000, SIGMA, Q) is None  # 0 = no budget
    assert acc.steps == 450  # looking ahead changes nothing


@pytest.mark.parametrize("args,field", [((0.0, Q), "noise_multiplier"), ((SIGMA, 0.0), "sample_rate"), ((SIGMA, 1.5), "sample_rate")])
def test_a_bad_step_is_refused(args, field):
    with pytest.raises(ConfigError) as e:
        PrivacyAccountant(DELTA).step(*args)
    assert e.value.field == field


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5])
def test_a_bad_delta_is_refused(delta):
    with pytest.raises(ConfigError, match="dp_delta"):
        PrivacyAccountant(delta)
