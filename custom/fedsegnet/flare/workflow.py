"""Server workflow: FLARE's ``ScatterAndGather`` that waits for every site and continues a resumed job.

**When a round closes.** FLARE's ``ScatterAndGather`` broadcasts the train task to the sites of the
job and closes the round ``wait_time_after_min_received`` seconds after ``min_clients`` results are
in; a site still training then is dropped, and FLARE refuses its result as late (the site's work is
lost). So a site that is always a little slower never contributes. By default (``drop_stragglers``
false) this workflow closes a round only when every site the train task went to has answered, when
``train_timeout`` has passed (0 = no limit), or when FLARE has found every site still awaited
disconnected (its dead-client rule). With ``drop_stragglers`` it is FLARE's rule. Either way the
workflow publishes, when the round closes, which sites were asked and why any gave no answer
(:data:`ROUND_SITES_EVENT`); ``RoundRecorder`` writes it into the round record.

**Resume.** With the persistor's ``resume_from`` set (see :mod:`fedsegnet.flare.resume`), the
persistor loads the interrupted job's global model and reports how many rounds it completed; this
workflow then runs the remaining rounds, numbered as in the interrupted job, so ``num_rounds`` stays
the total of the federation and the per-round records continue without a gap or a repeat.

**Privacy budgets.** A site whose next round would pass its ``dp_budget`` answers the train task
with an error reply marked :data:`~fedsegnet.flare.constants.DP_REFUSED_HEADER`. That reply is not
a failure: it never counts against ``ignore_result_error``, the round goes on with the other
sites, and when every site asked in a round refused for its budget, that round is the last one:
the job ends with the global model as it was (the round's aggregate is empty), and the persistor
saves it as usual.
"""

from __future__ import annotations

from nvflare.apis.controller_spec import Task, TaskCompletionStatus
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

from fedsegnet.config import check_job_args
from fedsegnet.flare.constants import DP_REFUSED_HEADER

ROUND_SITES_EVENT = "fedsegnet.round_sites"
"""Server event fired by :class:`ResumableScatterAndGather` when a round's train task closes."""
ROUND_SITES_PROP = "fedsegnet.round_sites"
"""FLContext prop of that event: ``{"asked": [site, ...], "unanswered": {site: {"reason", "detail"}}}``."""

MISSED_REASONS = ("late", "timeout", "dead", "failed", "refused", "budget")
"""Why a site asked in a round did not contribute: no result when the round closed (``late``: the
round closed after ``min_clients`` with ``drop_stragglers``; ``timeout``: ``train_timeout`` passed;
``dead``: FLARE found the site disconnected), an error reply (``failed``), an update the server
refused (``refused``), or a round the site did not train because it would pass its privacy budget
(``budget``)."""


def unanswered_sites(task: Task, is_disconnected=lambda site: False, train_timeout: int = 0,
                     min_clients: int = 0, wait_after_min_clients: int = 0) -> dict[str, dict]:  # fmt: skip
    """The sites a closed broadcast task went to that gave no result, and why.

    Args:
        task: the train task after ``broadcast_and_wait`` returned (its ``targets``, ``client_tasks``
            and ``completion_status``).
        is_disconnected: ``site -> bool``, whether FLARE deems the site disconnected. Defaults to
            never.
        train_timeout: the task's timeout in seconds, for the message. Defaults to 0.
        min_clients: with ``drop_stragglers``, the results that let the round close; 0 when the
            round waits for every site. Defaults to 0.
        wait_after_min_clients: with ``drop_stragglers``, the wait after ``min_clients``. Defaults to 0.

    Returns:
        ``{site: {"reason": one of "late", "timeout", "dead", "detail": text}}``, by site name.
    """
    answered = {ct.client.name for ct in task.client_tasks if ct.result_received_time is not None}
    fetched = {ct.client.name for ct in task.client_tasks}
    out = {}
    for site in sorted(set(task.targets or ()) - answered):
        if task.completion_status == TaskCompletionStatus.CLIENT_DEAD or is_disconnected(site):
            reason, detail = "dead", "FLARE found the site disconnected"
        elif task.completion_status == TaskCompletionStatus.TIMEOUT:
            reason, detail = "timeout", f"no update within train_timeout={train_timeout} s"
        elif min_clients:
            reason = "late"
            detail = (f"no update {wait_after_min_clients} s after {min_clients} updates were in (drop_stragglers); "
                      + ("its result is refused as late" if site in fetched else "it had not fetched the task"))  # fmt: skip
        else:
            reason, detail = "late", f"no update when the round closed ({getattr(task.completion_status, 'value', None)})"
        out[site] = {"reason": reason, "detail": detail}
    return out


class ResumableScatterAndGather(ScatterAndGather):
    """``ScatterAndGather`` that waits for every site unless told to drop stragglers, and starts after
    the rounds its persistor reports as done.

    The persistor's ``rounds_completed`` attribute (FedSegNet's ``SegModelPersistor``) is read after
    the global model is loaded; a persistor without it behaves as in FLARE. Arguments are FLARE's
    (same meaning) except for these defaults and ``drop_stragglers``.

    Args:
        min_clients: sites needed to close a round with ``drop_stragglers`` (the job's ``meta.json``
            decides how many it needs to start). Defaults to 2.
        num_rounds: rounds in all. Defaults to 5.
        start_round: first round. Defaults to 0.
        wait_time_after_min_received: with ``drop_stragglers``: seconds a round waits for more sites
            once ``min_clients`` updates are in. Defaults to 10.
        aggregator_id, persistor_id, shareable_generator_id, train_task_name: component ids and the
            task name, as FLARE's.
        train_timeout: seconds a round waits for the sites (0 = no limit). Defaults to 0.
        ignore_result_error: a site's error reply is skipped (True), ends the job (False), or FLARE's
            rule (None: skipped while ``min_clients`` can still answer). Defaults to True.
        drop_stragglers: False: a round closes when every site of the job has answered, at
            ``train_timeout``, or when FLARE finds the sites still awaited disconnected; True:
            FLARE's rule (``wait_time_after_min_received`` after ``min_clients`` results). Defaults
            to False.
        allow_empty_global_weights, task_check_period, persist_every_n_rounds, snapshot_every_n_rounds,
            memory_gc_rounds, enable_tensor_disk_offload: FLARE's (same defaults).

    Raises:
        ConfigError: a bad ``min_clients``, ``num_rounds``, ``train_timeout``,
            ``wait_time_after_min_received``, ``ignore_result_error`` or ``drop_stragglers``, naming the job arg.
    """

    def __init__(
        self,
        min_clients: int = 2,
        num_rounds: int = 5,
        start_round: int = 0,
        wait_time_after_min_received: int = 10,
        aggregator_id: str = AppConstants.DEFAULT_AGGREGATOR_ID,
        persistor_id: str = "",
        shareable_generator_id: str = AppConstants.DEFAULT_SHAREABLE_GENERATOR_ID,
        train_task_name: str = AppConstants.TASK_TRAIN,
        train_timeout: int = 0,
        ignore_result_error: bool | None = True,
        drop_stragglers: bool = False,
        allow_empty_global_weights: bool = False,
        task_check_period: float = 0.5,
        persist_every_n_rounds: int = 1,
        snapshot_every_n_rounds: int = 1,
        memory_gc_rounds: int = 1,
        enable_tensor_disk_offload: bool = False,
    ):
        check_job_args(
            dict(min_clients=min_clients, num_rounds=num_rounds, train_timeout=train_timeout,
                 wait_after_min_clients=wait_time_after_min_received, ignore_result_error=ignore_result_error,
                 drop_stragglers=drop_stragglers)
        )  # fmt: skip
        super().__init__(
            min_clients=min_clients, num_rounds=num_rounds, start_round=start_round,
            wait_time_after_min_received=wait_time_after_min_received, aggregator_id=aggregator_id,
            persistor_id=persistor_id, shareable_generator_id=shareable_generator_id, train_task_name=train_task_name,
            train_timeout=train_timeout, ignore_result_error=ignore_result_error,
            allow_empty_global_weights=allow_empty_global_weights, task_check_period=task_check_period,
            persist_every_n_rounds=persist_every_n_rounds, snapshot_every_n_rounds=snapshot_every_n_rounds,
            memory_gc_rounds=memory_gc_rounds, enable_tensor_disk_offload=enable_tensor_disk_offload,
        )  # fmt: skip
        self.drop_stragglers = drop_stragglers
        self._budget_refused = set()  # sites of the current round that refused it for their privacy budget

    def _accept_train_result(self, client_name: str, result, fl_ctx: FLContext, is_unknown_task: bool = False) -> bool:
        """FLARE's, except that a privacy-budget refusal is noted and skipped, never treated as an error."""
        if result is not None and result.get_header(DP_REFUSED_HEADER):
            self._budget_refused.add(client_name)
            return False
        return super()._accept_train_result(client_name, result, fl_ctx, is_unknown_task)

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

    def broadcast_and_wait(self, task: Task, fl_ctx: FLContext, targets=None, min_responses: int = 1,
                           wait_time_after_min_received: int = 0, abort_signal=None):  # fmt: skip
        """FLARE's ``broadcast_and_wait``; for the train task without ``drop_stragglers``, it waits for
        every target (FLARE's ``min_responses=0``), and afterwards it publishes who gave no answer
        (``RoundRecorder`` logs and records it)."""
        if task.name != self.train_task_name:
            return super().broadcast_and_wait(task, fl_ctx, targets, min_responses, wait_time_after_min_received, abort_signal)
        if not self.drop_stragglers:
            min_responses = 0  # FLARE's broadcast: "all targets" (until the task's timeout or the targets are dead)
        self._budget_refused = set()
        super().broadcast_and_wait(task, fl_ctx, targets, min_responses, wait_time_after_min_received, abort_signal)
        if abort_signal is not None and abort_signal.triggered:
            return
        asked = set(task.targets or ())
        if asked and asked <= self._budget_refused:
            self.log_warning(
                fl_ctx, f"round {self._current_round}: every site asked ({', '.join(sorted(asked))}) would pass its "
                "privacy budget (dp_budget); no site can train, so this is the last round and the job ends with the "
                "global model as it is",
            )  # fmt: skip
            self._num_rounds = self._current_round + 1 - self._start_round
        unanswered = unanswered_sites(
            task, lambda site: bool(self.communicator.get_client_disconnect_time(site)), self._train_timeout,
            min_responses, wait_time_after_min_received,
        )  # fmt: skip
        fl_ctx.set_prop(ROUND_SITES_PROP, {"asked": sorted(task.targets or ()), "unanswered": unanswered}, private=True, sticky=False)
        self.fire_event(ROUND_SITES_EVENT, fl_ctx)
