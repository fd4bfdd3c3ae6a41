"""Differential privacy at a site: patient-level DP-SGD with Opacus, its accountant and budget.

- :mod:`~fedsegnet.privacy.settings`: :class:`DPSettings` from the job args ``dp*``, the default delta.
- :mod:`~fedsegnet.privacy.sampling`: Poisson sampling of training cases (the privacy unit), the
  DP training loader.
- :mod:`~fedsegnet.privacy.accountant`: :class:`PrivacyAccountant` (Opacus RDP), the noise for a
  target epsilon, the budget check.
- :mod:`~fedsegnet.privacy.dp_sgd`: :class:`PrivateTraining` (one clipped gradient per case,
  Opacus's ``DPOptimizer``), the layer check.

No FLARE here; ``docs/privacy.md`` describes the mechanism and what it protects.
"""

from fedsegnet.privacy.accountant import ACCOUNTANT, PrivacyAccountant, noise_for_target_epsilon
from fedsegnet.privacy.dp_sgd import PrivateTraining, check_private_model, per_sample_gradients, replace_batchnorm
from fedsegnet.privacy.sampling import build_case_loader, case_sampler, cases_per_step, sample_rate, secret_generator
from fedsegnet.privacy.settings import DPSettings, default_delta

__all__ = [
    "ACCOUNTANT",
    "DPSettings",
    "PrivacyAccountant",
    "PrivateTraining",
    "build_case_loader",
    "case_sampler",
    "cases_per_step",
    "check_private_model",
    "default_delta",
    "noise_for_target_epsilon",
    "per_sample_gradients",
    "replace_batchnorm",
    "sample_rate",
    "secret_generator",
]
