"""Fault injection filters: SlowSite holds only the listed sites' tasks in the listed rounds."""

import time

import pytest
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from fedsegnet.flare.faults import SlowSite


def _held(fault, site, rnd) -> float:
    ctx = FLContext()
    ctx.put(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    task = Shareable()
    task.set_header(AppConstants.CURRENT_ROUND, rnd)
    start = time.monotonic()
    assert fault.process(task, ctx) is task
    return time.monotonic() - start


def test_slow_site_holds_the_listed_sites_in_the_listed_rounds():
    fault = SlowSite(sites=["site-3"], rounds=[1], seconds=0.2)
    assert _held(fault, "site-3", 1) >= 0.2
    assert _held(fault, "site-3", 0) < 0.1 and _held(fault, "site-1", 1) < 0.1
    assert _held(SlowSite(seconds=0.2), "site-1", 4) >= 0.2


@pytest.mark.parametrize("seconds", [0, -1, True, "5"])
def test_slow_site_refuses_a_bad_hold(seconds):
    with pytest.raises(ValueError, match=f"seconds={seconds!r}: must be a number > 0"):
        SlowSite(seconds=seconds)
