"""DPSettings: every bad setting the issue lists is refused naming its job arg; the default delta."""

import pytest

from fedsegnet.config import JOB_ARGS
from fedsegnet.errors import ConfigError
from fedsegnet.privacy import DPSettings, default_delta
from fedsegnet.privacy.settings import DP_JOB_ARGS

BAD = [
    (dict(mode="patient", noise=0.0), "dp_noise=0.0: must be a number > 0"),
    (dict(mode="patient", noise=-1.0), "dp_noise=-1.0: must be a number > 0"),
    (dict(mode="patient", noise=1.0, clip=0.0), "dp_clip=0.0: must be a number > 0"),
    (dict(mode="patient", noise=1.0, clip=-2.0), "dp_clip=-2.0: must be a number > 0"),
    (dict(mode="patient", noise=1.0, delta=0.0), "dp_delta=0.0: must be a number > 0"),
    (dict(mode="patient", noise=1.0, delta=1.0), "dp_delta=1.0: must be < 1"),
    (dict(mode="patient", noise=1.0, delta=1.5), "dp_delta=1.5: must be a number > 0 and <= 1"),
    (dict(mode="patient", target_epsilon=0.0), "dp_target_epsilon=0.0: must be a number > 0"),
    (dict(mode="patient", noise=1.0, budget=-1.0), "dp_budget=-1.0: must be a number > 0 or 0 (off)"),
    (dict(mode="patient"), "dp_noise=None: dp='patient' needs dp_noise (a noise multiplier) or dp_target_epsilon"),
    (dict(mode="patient", noise=1.0, target_epsilon=3.0), "dp_target_epsilon=3.0: give dp_noise or dp_target_epsilon, not both"),
    (dict(mode="none", noise=1.0), "dp_noise=1.0: is set but dp='none'"),
    (dict(mode="none", budget=8.0), "dp_budget=8.0: is set but dp='none'"),
    (dict(mode="sample"), "dp='sample': unknown value (valid: none, patient)"),
]


@pytest.mark.parametrize("values,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_settings_are_refused_naming_the_job_arg(values, message):
    with pytest.raises(ConfigError) as e:
        DPSettings(**values)
    assert message in str(e.value)
    assert e.value.field == message.split("=")[0]


def test_settings_from_job_args_take_the_declared_defaults():
    assert set(DP_JOB_ARGS.values()) <= set(JOB_ARGS)
    off = DPSettings.from_job_args({"num_rounds": 3})
    assert not off.enabled and off == DPSettings()
    assert DPSettings.from_job_args({}).clip == JOB_ARGS["dp_clip"].default
    on = DPSettings.from_job_args({"dp": "patient", "dp_target_epsilon": 8, "dp_budget": 10, "dp_clip": 2})
    assert on.enabled and on.target_epsilon == 8.0 and on.budget == 10.0 and on.clip == 2.0 and on.noise is None


@pytest.mark.parametrize("n_cases,expected", [(1, 1e-5), (40, 1e-5), (10_000, 1e-5), (100_000, 1e-6)])
def test_default_delta_is_a_tenth_of_one_over_the_cases_or_less(n_cases, expected):
    assert default_delta(n_cases) == pytest.approx(expected)
    assert default_delta(n_cases) <= 0.1 / n_cases
    assert DPSettings(mode="patient", noise=1.0).delta_for(n_cases) == default_delta(n_cases)
    assert DPSettings(mode="patient", noise=1.0, delta=1e-7).delta_for(n_cases) == 1e-7


def test_default_delta_refuses_no_cases():
    with pytest.raises(ConfigError, match="n_cases=0"):
        default_delta(0)
