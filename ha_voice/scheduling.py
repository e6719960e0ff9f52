"""Leaving the real-time policy the unit gives the node, for work that must not have it.

The units start the node at SCHED_RR (`CPUSchedulingPolicy=rr`): its heartbeats then leave on
time beside busy processes (docs/benchmarks.md, "Heartbeats beside CPU hogs"). What the node
starts inherits the policy; the speech workers, which keep a core busy for seconds, leave it
here as they start, so that they never hold a core against the rest of the machine; the
programs it runs (the notify hook, tegrastats) leave it before they run (`normal_in_child`).

Invariants: nothing here raises; moving to SCHED_OTHER is always allowed (sched(7)).
"""

from __future__ import annotations

import contextlib
import logging
import os

__all__ = ["leave_realtime", "normal_in_child"]

_log = logging.getLogger(__name__)


def leave_realtime() -> bool:
    """Move the calling thread, and so the threads and processes it starts later, from a
    real-time policy to SCHED_OTHER; True if it was real-time. Call it before starting any."""
    if os.sched_getscheduler(0) not in (os.SCHED_RR, os.SCHED_FIFO):
        return False
    try:
        # pid 0 is the calling thread, not the whole process (sched_setscheduler(2)).
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError as exc:
        _log.warning("could not leave the real-time policy: %s", exc)
        return False
    return True


def normal_in_child() -> None:
    """SCHED_OTHER for a program the node starts: `preexec_fn` of subprocess, which runs in the
    forked child before exec. Only the one system call, no lock taken (no logging), so it is
    safe in a child forked from a threaded process; a refusal leaves the policy as it was."""
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
