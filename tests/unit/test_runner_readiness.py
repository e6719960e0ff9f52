"""The core's shell tells the core a started node is ready to lead only once its loop has kept
time for `_CALM_S` since start-up ended; a late wake starts the count again (runner.py).

Time is given, not read: the probe's observations and `_maybe_ready` take `now`.
"""

from __future__ import annotations

import random

from ha_voice.cluster.election import Election
from ha_voice.cluster.events import HardState, Readiness
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.runner import _CALM_LEASE_SHARE, _CALM_S, CoreRunner
from ha_voice.cluster.storage import MemoryStore
from ha_voice.cluster.timers import timers_for
from ha_voice.metrics import Metrics
from tests.unit.test_runner_fence import Sink, codec

TIMERS = timers_for("wired")
BOUND = TIMERS.lease_timeout_s * _CALM_LEASE_SHARE


def starting_runner() -> CoreRunner:
    election = Election(
        membership=Membership.from_config("me", ["a", "b"]),
        timers=TIMERS,
        priority=100,
        hard_state=HardState(3),
        rng=random.Random(1),
        now=0.0,
        ready=False,
        preempt=True,
    )
    return CoreRunner(
        election=election,
        codec=codec("me"),
        store=MemoryStore(),
        metrics=Metrics("me"),
        sink=Sink(),
        static_peers={"a": ("a", 1), "b": ("b", 2)},
        stall_s=2.0,
    )


def wake(core: CoreRunner, at: float, lag: float) -> None:
    core.lag_probe.due = at - lag
    core.lag_probe.observe(at)


def told(core: CoreRunner) -> list[bool]:
    return [r.event.ready for r in core._inbox if isinstance(r.event, Readiness)]


def test_a_starting_node_does_not_offer_to_lead_and_says_so_in_its_acks() -> None:
    core = starting_runner()
    assert core.election.eligible
    assert not core.election.offers_to_lead
    core._maybe_ready(100.0)  # not started: nothing, however calm
    assert told(core) == []


def test_ready_only_after_a_calm_span_since_start_and_a_late_wake_restarts_it() -> None:
    core = starting_runner()
    core._set_started()
    t0 = core._started_at
    wake(core, t0 + 0.1, 0.001)
    core._maybe_ready(t0 + 0.1)
    assert told(core) == []  # not calm for long enough yet
    wake(core, t0 + 0.5, BOUND * 2)  # e.g. the last collection of start-up
    core._maybe_ready(t0 + 0.5)
    wake(core, t0 + _CALM_S + 0.2, 0.001)
    core._maybe_ready(t0 + _CALM_S + 0.2)
    assert told(core) == [], "the late wake must restart the calm span"
    wake(core, t0 + 0.5 + 2 * _CALM_S, 0.001)
    core._maybe_ready(t0 + 0.5 + 2 * _CALM_S)
    assert told(core) == [True]
    core._maybe_ready(t0 + 10.0)
    assert told(core) == [True], "told once"


def test_a_lag_within_the_bound_does_not_hold_readiness_back() -> None:
    core = starting_runner()
    core._set_started()
    t0 = core._started_at
    wake(core, t0 + 0.5, BOUND * 0.9)
    core._maybe_ready(t0 + 0.5)
    core._maybe_ready(t0 + _CALM_S + 0.01)
    assert told(core) == [True]
