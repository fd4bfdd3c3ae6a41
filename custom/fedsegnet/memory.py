"""Resident memory (RSS) of this process and of the process that started it, for the per-round records.

In FLARE a job runs in its own process (the server's or the site's *job process*), started by the
long-lived parent that holds the connection; both are measured, because a leak in either ends a
long run.
"""

from __future__ import annotations

import os

import psutil

_MB = 1024.0 * 1024.0


def rss_mb(pid: int | None = None) -> float | None:
    """Resident set size of process ``pid`` (default: this process) in MiB; None when it cannot be read."""
    try:
        return psutil.Process(pid or os.getpid()).memory_info().rss / _MB
    except (psutil.Error, OSError):
        return None


def job_and_parent_rss_mb() -> dict:
    """``{"rss_mb": this process, "parent_rss_mb": its parent}`` in MiB (None where unreadable)."""
    return {"rss_mb": rss_mb(), "parent_rss_mb": rss_mb(os.getppid())}
