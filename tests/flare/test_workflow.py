"""ResumableScatterAndGather: a round waits for every site unless drop_stragglers; who gave no answer, and why."""

import time

import pytest
from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask, Task, TaskCompletionStatus
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from fedsegnet.errors import ConfigError
from fedsegnet.flare.workflow import ROUND_SITES_EVENT, ROUND_SITES_PROP, ResumableScatterAndGather, unanswered_sites


def _task(targets, answered=(), fetched=(), status=TaskCompletionStatus.OK, name="train"):
    """A closed broadcast task: sent to ``fetched`` (and ``answered``), results from ``answered``."""
    task = Task(name=name, data=Shareable())
    task.targets = list(targets)
    for site in dict.fromkeys([*answered, *fetched]):
        ct = ClientTask(Client(site, token=site), task)
        ct.result_received_time = time.time() if site in answered else None
        task.client_tasks.append(ct)
    task.completion_status = status
    return task


def test_a_site_without_a_result_is_named_with_the_reason():
    sites = ["site-1", "site-2", "site-3", "site-4"]
    late = _task(sites, answered=["site-1", "site-2"], fetched=["site-3"])
    out = unanswered_sites(late, min_clients=2, wait_after_min_clients=10)
    assert list(out) == ["site-3", "site-4"] and {w["reason"] for w in out.values()} == {"late"}
    assert "10 s after 2 updates were in (drop_stragglers); its result is refused as late" in out["site-3"]["detail"]
    assert "it had not fetched the task" in out["site-4"]["detail"]

    timed_out = unanswered_sites(_task(sites[:2], answered=["site-1"], status=TaskCompletionStatus.TIMEOUT), train_timeout=60)
    assert timed_out == {"site-2": {"reason": "timeout", "detail": "no update within train_timeout=60 s"}}

    dead = _task(sites[:3], answered=["site-1"], fetched=["site-2"], status=TaskCompletionStatus.CLIENT_DEAD)
    assert {s: w["reason"] for s, w in unanswered_sites(dead).items()} == {"site-2": "dead", "site-3": "dead"}
    one_dead = unanswered_sites(_task(sites[:2], answered=["site-1"], status=TaskCompletionStatus.TIMEOUT), lambda s: s == "site-2")
    assert one_dead["site-2"]["reason"] == "dead"

    assert unanswered_sites(_task(sites, answered=sites)) == {}


class _Communicator:
    """Stands in for FLARE's WFCommServer: records the broadcast and answers with ``answered``."""

    def __init__(self, answered, disconnected=()):
        self.answered, self.disconnected, self.calls = answered, set(disconnected), []

    def broadcast_and_wait(self, task, fl_ctx, targets, min_responses, wait_time_after_min_received, abort_signal):
        self.calls.append((task.name, min_responses, wait_time_after_min_received))
        closed = _task(["site-1", "site-2", "site-3"], answered=self.answered, name=task.name)
        task.targets, task.client_tasks, task.completion_status = closed.targets, closed.client_tasks, closed.completion_status

    def get_client_disconnect_time(self, site):
        return 1.0 if site in self.disconnected else None


class _Events:
    def __init__(self):
        self.fired = []

    def fire_event(self, event_type, fl_ctx):
        self.fired.append((event_type, fl_ctx.get_prop(ROUND_SITES_PROP)))


@pytest.mark.parametrize("drop", [False, True])
def test_the_train_task_waits_for_every_site_unless_drop_stragglers(drop, monkeypatch):
    wf = ResumableScatterAndGather(min_clients=2, wait_time_after_min_received=10, drop_stragglers=drop)
    wf.communicator = _Communicator(answered=["site-1", "site-2"])
    events = _Events()
    monkeypatch.setattr(wf, "fire_event", events.fire_event)
    wf.broadcast_and_wait(Task(name="train", data=Shareable()), FLContext(), min_responses=2, wait_time_after_min_received=10,
                          abort_signal=Signal())  # fmt: skip
    assert wf.communicator.calls == [("train", 2 if drop else 0, 10)]
    (event, sites), = events.fired
    assert event == ROUND_SITES_EVENT and sites["asked"] == ["site-1", "site-2", "site-3"]
    assert sites["unanswered"]["site-3"]["reason"] == "late"
    assert ("drop_stragglers" in sites["unanswered"]["site-3"]["detail"]) == drop


def test_other_tasks_are_flares_broadcast():
    wf = ResumableScatterAndGather()
    wf.communicator = _Communicator(answered=["site-1"])
    wf.broadcast_and_wait(Task(name="validate", data=Shareable()), FLContext(), min_responses=1)
    assert wf.communicator.calls == [("validate", 1, 0)]


def test_bad_values_name_the_job_arg():
    with pytest.raises(ConfigError, match="drop_stragglers='yes': must be true or false"):
        ResumableScatterAndGather(drop_stragglers="yes")
    with pytest.raises(ConfigError, match="wait_after_min_clients=-1: must be an integer >= 0"):
        ResumableScatterAndGather(wait_time_after_min_received=-1)


def _refusal():
    from nvflare.apis.shareable import ReturnCode, make_reply

    from fedsegnet.flare.constants import DP_REFUSED_HEADER

    reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    reply.set_header(DP_REFUSED_HEADER, True)
    return reply


class _RefusingCommunicator(_Communicator):
    """Every answering site's result is a privacy-budget refusal, passed to the workflow's result check."""

    def __init__(self, wf, answered, refusing):
        super().__init__(answered)
        self.wf, self.refusing = wf, set(refusing)

    def broadcast_and_wait(self, task, fl_ctx, targets, min_responses, wait_time_after_min_received, abort_signal):
        super().broadcast_and_wait(task, fl_ctx, targets, min_responses, wait_time_after_min_received, abort_signal)
        for site in self.answered:
            result = _refusal() if site in self.refusing else Shareable()
            if site in self.refusing:
                assert self.wf._accept_train_result(site, result, fl_ctx) is False


@pytest.mark.parametrize("ignore_result_error", [None, False, True])
def test_a_budget_refusal_is_no_failure_and_when_every_site_refuses_the_round_is_the_last(ignore_result_error, monkeypatch):
    wf = ResumableScatterAndGather(num_rounds=5, ignore_result_error=ignore_result_error)
    # FLARE's error rule would panic (end the job abnormally) for False / None: it must not be reached
    monkeypatch.setattr(wf, "system_panic", lambda *a, **k: pytest.fail("a budget refusal was treated as an error"))
    monkeypatch.setattr(wf, "fire_event", _Events().fire_event)
    wf._current_round, wf._start_round = 2, 0
    sites = ["site-1", "site-2", "site-3"]
    wf.communicator = _RefusingCommunicator(wf, answered=sites, refusing=["site-1", "site-2"])
    wf.broadcast_and_wait(Task(name="train", data=Shareable()), FLContext(), abort_signal=Signal())
    assert wf._num_rounds == 5  # site-3 trained: the job goes on
    wf.communicator = _RefusingCommunicator(wf, answered=sites, refusing=sites)
    wf.broadcast_and_wait(Task(name="train", data=Shareable()), FLContext(), abort_signal=Signal())
    assert wf._start_round + wf._num_rounds == 3  # round 2 is the last
