"""What a node says about itself follows what it can do: the pieces, without sockets."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ha_voice.cluster.events import (
    HardState,
    RobotReachability,
    RobotTermSeen,
    Role,
    StopRobot,
    Tick,
)
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import Resign
from ha_voice.cluster.view import PRIMARY_WITHOUT_LEASE, NodeView, PeerInfo
from ha_voice.metrics import ClusterSnapshot, Metrics
from ha_voice.problem_log import ProblemLog
from ha_voice.robot.base import Action, Command, ErrorCode, FencingToken, RobotError
from ha_voice.robot.sim import SimGo2
from tests.unit.election_harness import Harness


def _settled() -> Harness:
    h = Harness(["n1", "n2", "n3"])
    h.run(2.0)
    return h


def test_a_primary_the_robot_fenced_resigns_and_moves_to_the_robots_term() -> None:
    h = _settled()
    primary = h.only_primary()
    effects = h.step(primary, RobotTermSeen(7, h.now))
    election = h.nodes[primary]
    assert election.role is Role.BACKUP
    assert election.term == 7
    assert effects.persist == HardState(7, None)  # the term is durable before anyone hears it
    assert any(isinstance(a, StopRobot) for a in effects.actions)
    assert any(isinstance(o.message, Resign) for o in effects.send)
    h.deliver()
    h.run(h.now + 3.0)
    assert h.nodes[h.only_primary()].term > 7  # the next primary's term is above the robot's


def test_a_term_the_node_has_passed_or_cannot_believe_moves_nothing() -> None:
    h = _settled()
    primary = h.only_primary()
    term = h.nodes[primary].term
    h.step(primary, RobotTermSeen(term, h.now))
    h.step(primary, RobotTermSeen(term + 2**33, h.now))
    assert h.nodes[primary].role is Role.PRIMARY
    assert h.nodes[primary].term == term
    assert h.nodes[primary].stats.implausible_terms == 1


def test_an_unreachable_robot_is_fault_with_the_backends_reason() -> None:
    h = _settled()
    backup = next(n for n, e in h.nodes.items() if e.role is Role.BACKUP)
    h.step(backup, RobotReachability(False, h.now, "4003: No module named 'unitree_sdk2py'"))
    election = h.nodes[backup]
    assert election.role is Role.FAULT
    assert election.fault_reason == "robot unreachable: 4003: No module named 'unitree_sdk2py'"
    h.step(backup, Tick(h.now))
    h.step(backup, RobotReachability(True, h.now))
    assert h.nodes[backup].fault_reason == ""


def _view(role: Role, **kw: object) -> NodeView:
    membership = Membership.from_config("n1", ["n2", "n3"])
    fields: dict[str, object] = {
        "node_id": "n1",
        "role": role,
        "term": 3,
        "leader": None,
        "lease_expiry": float("-inf"),
        "accepting": False,
        "eligible": True,
        "fault_reason": "",
        "robot_reachable": True,
        "membership": membership,
    }
    fields.update(kw)
    return NodeView(**fields)  # type: ignore[arg-type]


def test_no_primary_names_each_peer_not_heard_and_where_it_was_looked_for() -> None:
    peers = {
        "n2": PeerInfo("n2", ("10.0.0.2", 7405), static=True, last_heard_at=1.0),
        "n3": PeerInfo("n3", None),
    }
    view = _view(Role.BACKUP, peers=peers)
    assert view.no_primary_reason(100.0, 2.0, mdns=True) == (
        "no quorum: 0 of 2 peers heard; n2 not heard at 10.0.0.2:7405; n3 not found by mDNS"
    )
    assert "n3 has no address (mDNS off)" in str(view.no_primary_reason(100.0, 2.0, mdns=False))
    assert view.no_primary_reason(2.5, 2.0, mdns=True) == (
        "no primary yet: election under way in term 3 (1 of 2 peers heard)"
    )
    assert _view(Role.BACKUP, leader="n2").no_primary_reason(100.0, 2.0, mdns=True) is None


def test_a_primary_is_shown_as_one_only_while_its_lease_is_valid() -> None:
    view = _view(Role.PRIMARY, leader="n1", lease_expiry=10.0)
    assert view.shown_role(9.9) == "primary"
    assert view.shown_role(10.0) == PRIMARY_WITHOUT_LEASE
    assert _view(Role.BACKUP).shown_role(0.0) == "backup"


def _is_primary(lease_remaining_s: float) -> str:
    metrics = Metrics("n1")
    metrics.attach(lambda: ClusterSnapshot((), lease_remaining_s, 0, 0, 0, 0))
    line = next(
        line
        for line in metrics.render().decode().splitlines()
        if line.startswith("ha_voice_is_primary ")
    )
    return line.split()[1]


def test_is_primary_is_read_from_the_lease_at_scrape_time() -> None:
    assert _is_primary(0.3) == "1.0"
    assert _is_primary(-0.001) == "0.0"
    assert _is_primary(float("-inf")) == "0.0"


def test_a_lasting_problem_is_logged_when_it_starts_while_it_lasts_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    problems = ProblemLog(logging.getLogger("t"), "no primary", repeat_s=30.0, grace_s=2.0)
    with caplog.at_level(logging.INFO, "t"):
        for now in (0.0, 1.0, 2.0, 3.0, 31.9, 32.0, 40.0):
            problems.check("no quorum: 0 of 2 peers heard", now)
        problems.check(None, 41.0)
        problems.check(None, 42.0)
    assert [r.getMessage() for r in caplog.records] == [
        "no quorum: 0 of 2 peers heard",
        "no quorum: 0 of 2 peers heard (for 32 s)",
        "no primary: resolved after 41.0 s",
    ]


def test_a_problem_shorter_than_its_grace_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    problems = ProblemLog(logging.getLogger("t"), "no primary", grace_s=2.0)
    with caplog.at_level(logging.INFO, "t"):
        problems.check("no quorum", 0.0)
        problems.check(None, 1.0)
    assert caplog.records == []


def test_a_fenced_refusal_names_the_term_the_robot_has_seen() -> None:
    async def run() -> RobotError:
        robot = SimGo2()
        await robot.connect()
        await robot.execute(Command(Action.STOP_MOVE), FencingToken(7, 3, "old"))
        with pytest.raises(RobotError) as refused:
            await robot.execute(Command(Action.STOP_MOVE), FencingToken(1, 1, "n1"))
        return refused.value

    refused = asyncio.run(run())
    assert refused.code == ErrorCode.FENCED
    assert refused.seen_term == 7
