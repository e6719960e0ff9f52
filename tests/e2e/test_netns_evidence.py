"""Failover by evidence of death with real processes in network namespaces: SIGKILL of the
primary is noticed by the voters' own probes (the takeover's cause is "evidence"), SIGSTOP is
not (the cause is the timeout, and the new primary's lease starts only after the old lease
could have ended). Three nodes, and two nodes with a witness; the floating IP and a robot
command through it show what a client sees."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from ha_voice.cluster.timers import timers_for
from tests.e2e.evidence_rig import Rig, evidence_rig
from tests.integration.netns import NetnsUnavailable

TIMERS = timers_for("wired")
SHAPES = {"3n": (3, False), "2n+witness": (2, True)}


@pytest.fixture(params=sorted(SHAPES))
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    nodes, witness = SHAPES[request.param]
    subnet = "10.218.0.0/24" if witness else "10.219.0.0/24"
    try:
        with evidence_rig(nodes, witness=witness, subnet=subnet, prefix="hvev") as made:
            yield made
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_is_seen_by_evidence_and_sigstop_goes_through_the_lease(rig: Rig) -> None:
    killed = rig.fail(signal.SIGKILL)
    assert killed.new not in (None, killed.old), (killed, rig.logs())
    assert killed.cause == "evidence", (killed, rig.logs())
    assert killed.accepted_s is not None, "no robot command accepted through the floating IP"
    assert killed.connected_s is not None

    paused = rig.fail(signal.SIGSTOP)
    assert paused.new not in (None, paused.old), (paused, rig.logs())
    assert paused.cause == "timeout", (paused, rig.logs())
    assert paused.accepted_s is not None
    # From the old primary last heard to the new lease: past any lease the old one held.
    assert paused.duration_s is not None
    assert paused.duration_s > TIMERS.lease_timeout_s, paused
