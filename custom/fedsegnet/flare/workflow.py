"""Server workflow: FLARE's ``ScatterAndGather`` that continues where a resumed job stopped.

With the persistor's ``resume_from`` set (see :mod:`fedsegnet.flare.resume`), the persistor loads the
interrupted job's global model and reports how many rounds it completed; this workflow then runs the
remaining rounds, numbered as in the interrupted job, so ``num_rounds`` stays the total of the
federation and the per-round records continue without a gap or a repeat.
"""

from __future__ import annotations

from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather


class ResumableScatterAndGather(ScatterAndGather):
    """``ScatterAndGather`` (same arguments) that starts after the rounds its persistor reports as done.

    The persistor's ``rounds_completed`` attribute (FedSegNet's ``SegModelPersistor``) is read after
    the global model is loaded; a persistor without it behaves as in FLARE.
    """

    def start_controller(self, fl_ctx: FLContext) -> None:
        super().start_controller(fl_ctx)
        done = int(getattr(self.persistor, "rounds_completed", 0) or 0)
        if done <= self._start_round:
            return
        total = self._start_round + self._num_rounds
        self._start_round = done
        self._num_rounds = max(0, total - done)
        fl_ctx.set_prop(AppConstants.START_ROUND, self._start_round, private=True, sticky=True)
        fl_ctx.set_prop(AppConstants.NUM_ROUNDS, self._num_rounds, private=True, sticky=False)
        if self._num_rounds:
            self.log_info(fl_ctx, f"resumed: {done} round(s) already done; running rounds {done}..{total - 1}")
        else:
            self.log_info(fl_ctx, f"resumed: all {total} round(s) already done; no training round left")
