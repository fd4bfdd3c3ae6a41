"""A site's own privacy budget, from its FLARE privacy policy (``local/privacy.json``), enforced
whatever the job says.

A site that must not release more than epsilon ``B`` about its patients puts one filter in the scope
its jobs run under, twice (``poc/privacy_dp.json`` is an example):

- in ``task_data_filters``: ``SiteDPBudget(budget=B)`` hands ``B`` to the Learner before it trains
  (:data:`SITE_DP_BUDGET_PROP`): a job without ``dp='patient'`` is refused with one line naming the
  policy, and a round that would take the site's epsilon past ``min(B, the job's dp_budget)`` is
  not trained (the same refusal as the job's budget, marked ``fedsegnet.dp_refused``);
- in ``task_result_filters``: ``SiteDPBudget(budget=B, stage="result")`` checks what actually
  leaves: an update with no privacy report, or whose reported epsilon is above ``B``, is replaced
  by an error reply naming the policy, so no code path of the job can send it.

FLARE runs a site's scope filters before the job's own (``nvflare.apis.utils.task_utils.get_filters``),
so the result check sees the Learner's update and its privacy report; what the job's filters do
after it is limited to the classes the site's allow-list admits (``fedsegnet.flare.``, see
:mod:`fedsegnet.flare.ops.policy`): jobs bring no code of their own.
"""

from __future__ import annotations

import math

from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReturnCode, Shareable, make_reply

from fedsegnet.errors import ConfigError
from fedsegnet.flare.constants import ERROR_HEADER, UpdateMeta

SITE_DP_BUDGET_PROP = "fedsegnet.site_dp_budget"
"""Client FLContext prop (private, not sticky) set by :class:`SiteDPBudget` on a task's data: the
site policy's epsilon budget, read by the Learner."""

STAGES = ("task", "result")


class SiteDPBudget(Filter):
    """The site privacy policy's epsilon budget on train tasks (``stage="task"``) or on their results
    (``stage="result"``).

    Args:
        budget: the most epsilon this site may spend in all, > 0.
        stage: ``"task"`` (a task-data filter: hands the budget to the Learner) or ``"result"``
            (a task-result filter: refuses an update that carries no privacy report or one above
            the budget). Defaults to ``"task"``.

    Raises:
        ConfigError: naming ``budget`` or ``stage``.
    """

    def __init__(self, budget: float, stage: str = "task"):
        super().__init__()
        ok = not isinstance(budget, bool) and isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0
        if not ok:
            raise ConfigError("budget", budget, "the site policy's epsilon budget must be a finite number > 0")
        if stage not in STAGES:
            raise ConfigError("stage", stage, "unknown filter stage", options=STAGES)
        self.budget = float(budget)
        self.stage = stage

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if self.stage == "task":
            fl_ctx.set_prop(SITE_DP_BUDGET_PROP, self.budget, private=True, sticky=False)
            return shareable
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return shareable
        if dxo.data_kind not in (DataKind.WEIGHT_DIFF, DataKind.WEIGHTS) or not dxo.data:
            return shareable
        report = dxo.get_meta_prop(UpdateMeta.DP)
        site = fl_ctx.get_identity_name()
        epsilon = report.get("epsilon") if isinstance(report, dict) else None
        if epsilon is None:
            why = "it was trained without differential privacy (set the job arg dp='patient')"
        elif not epsilon <= self.budget * (1 + 1e-9):
            why = f"it reports epsilon {epsilon:.3f}"
        else:
            return shareable
        message = (f"site {site}: the site privacy policy allows updates only under DP with epsilon <= {self.budget:g}; "
                   f"this update is not sent: {why}")  # fmt: skip
        self.log_error(fl_ctx, message)
        reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_header(ERROR_HEADER, message)
        return reply
