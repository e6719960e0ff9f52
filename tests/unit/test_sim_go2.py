"""The simulated Go2: posture rules, the Move watchdog, fencing, reachability and the checker.

No sockets and no sleeps: the simulator runs on a hand-stepped clock with zero latency, and each
call is one `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Mapping

import pytest

from ha_voice.robot.base import (
    Action,
    Command,
    ErrorCode,
    FencingToken,
    Mode,
    Robot,
    RobotError,
)
from ha_voice.robot.base import RobotState as State
from ha_voice.robot.sim import (
    BODY_HEIGHT_M,
    POSTURES,
    TRANSITIONS,
    EntryKind,
    JournalEntry,
    SimGo2,
    ViolationKind,
    check_journal,
    entry_from_json,
    entry_to_json,
    verdict_from_json,
    verdict_to_json,
)

L, D, J, B, W, S = (
    Mode.LIE_DOWN,
    Mode.DAMPING,
    Mode.JOINT_LOCK,
    Mode.BALANCE_STAND,
    Mode.LOCOMOTION,
    Mode.SIT,
)

# The Go2's rules written out by hand, independently of sim.TRANSITIONS (docs/design.md "The Go2"):
# action -> {mode it is legal in: mode it leads to}.
GO2_RULES: dict[Action, dict[Mode, Mode]] = {
    Action.DAMP: {L: D, D: D, J: D, B: D, W: D, S: D},
    Action.STAND_UP: {L: J, D: J, J: J, B: J},
    Action.RECOVERY_STAND: {L: B, D: B, B: B},
    Action.BALANCE_STAND: {J: B, B: B, W: B},
    Action.MOVE: {B: W, W: W},
    Action.STOP_MOVE: {L: L, D: D, J: J, B: B, W: B, S: S},
    Action.SIT: {B: S, S: S},
    Action.RISE_SIT: {S: B, B: B},
    Action.STAND_DOWN: {J: L, B: L, L: L},
    Action.SPEED_LEVEL: {B: B, W: W},
    Action.HELLO: {B: B},
    Action.STRETCH: {B: B},
    Action.DANCE1: {B: B},
    Action.DANCE2: {B: B},
}

# How to get from power-on (lying down) into each posture.
PATHS: dict[Mode, tuple[Action, ...]] = {
    L: (),
    D: (Action.DAMP,),
    J: (Action.STAND_UP,),
    B: (Action.STAND_UP, Action.BALANCE_STAND),
    W: (Action.STAND_UP, Action.BALANCE_STAND, Action.MOVE),
    S: (Action.STAND_UP, Action.BALANCE_STAND, Action.SIT),
}

PARAMS: dict[Action, dict[str, float]] = {
    Action.MOVE: {"vx": 0.5},
    Action.SPEED_LEVEL: {"level": 1},
}


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, dt_s: float) -> None:
        self.now_s += dt_s


class Driver:
    """A connected SimGo2 on a fake clock; every call is one asyncio.run."""

    def __init__(self, *, move_timeout_s: float = 1.0, enforce_fencing: bool = True) -> None:
        self.clock = FakeClock()
        self.sim = SimGo2(
            now=self.clock,
            move_timeout_s=move_timeout_s,
            latency_s=0.0,
            timeout_s=0.0,
            enforce_fencing=enforce_fencing,
        )
        self.index = 0
        asyncio.run(self.sim.connect())

    def send(
        self,
        action: Action,
        params: Mapping[str, float] | None = None,
        *,
        node: str = "n1",
        term: int = 1,
        lease_expiry_s: float | None = None,
    ) -> None:
        self.index += 1
        command = Command(action, PARAMS.get(action, {}) if params is None else params)
        token = FencingToken(term, self.index, node)
        asyncio.run(self.sim.execute(command, token, lease_expiry_s=lease_expiry_s))

    def refusal(self, action: Action, *, node: str = "n1", term: int = 1) -> int:
        """The error code the robot refuses `action` with (fails the test if it accepts it)."""
        with pytest.raises(RobotError) as info:
            self.send(action, node=node, term=term)
        return info.value.code

    def walk_to(self, mode: Mode) -> None:
        for action in PATHS[mode]:
            self.send(action)
        assert self.state().mode is mode

    def state(self) -> State:
        return asyncio.run(self.sim.state())


# --- Postures ---------------------------------------------------------------------------------


def test_the_simulator_is_a_robot() -> None:
    robot: Robot = SimGo2()  # mypy checks the protocol; the rest checks the promises
    assert not asyncio.run(robot.reachable())


def test_the_transition_table_is_the_go2_rules() -> None:
    assert {a: dict(row) for a, row in TRANSITIONS.items()} == GO2_RULES
    assert set(TRANSITIONS) == set(Action)


@pytest.mark.parametrize(
    ("start", "action"),
    list(itertools.product(POSTURES, Action)),
    ids=lambda value: value.name if isinstance(value, Mode) else value.value,
)
def test_every_action_in_every_posture(start: Mode, action: Action) -> None:
    robot = Driver()
    robot.walk_to(start)
    before = robot.state()
    expected = GO2_RULES[action].get(start)
    if expected is None:
        assert robot.refusal(action) == ErrorCode.NOT_AVAILABLE_IN_MODE
        assert robot.state() == before
        last = robot.sim.journal()[-1]
        assert (last.action, last.accepted, last.code) == (action, False, 3203)
    else:
        robot.send(action)
        assert robot.state().mode is expected
        assert robot.sim.journal()[-1].accepted


def test_no_walking_while_lying_down_or_before_balance_stand() -> None:
    robot = Driver()
    assert robot.refusal(Action.MOVE) == ErrorCode.NOT_AVAILABLE_IN_MODE
    robot.send(Action.STAND_UP)
    assert robot.state().mode is Mode.JOINT_LOCK
    assert robot.refusal(Action.MOVE) == ErrorCode.NOT_AVAILABLE_IN_MODE
    robot.clock.advance(0.5)
    assert robot.state().position[:2] == (0.0, 0.0)
    robot.send(Action.BALANCE_STAND)
    robot.send(Action.MOVE)
    assert robot.state().mode is Mode.LOCOMOTION


def test_sit_only_from_standing_and_rise_only_from_sitting() -> None:
    robot = Driver()
    assert robot.refusal(Action.SIT) == ErrorCode.NOT_AVAILABLE_IN_MODE  # lying
    assert robot.refusal(Action.RISE_SIT) == ErrorCode.NOT_AVAILABLE_IN_MODE
    robot.send(Action.STAND_UP)
    assert robot.refusal(Action.SIT) == ErrorCode.NOT_AVAILABLE_IN_MODE  # joints locked
    robot.send(Action.BALANCE_STAND)
    robot.send(Action.MOVE)
    assert robot.refusal(Action.SIT) == ErrorCode.NOT_AVAILABLE_IN_MODE  # walking
    robot.send(Action.STOP_MOVE)
    robot.send(Action.SIT)
    assert robot.state().mode is Mode.SIT
    assert robot.refusal(Action.MOVE) == ErrorCode.NOT_AVAILABLE_IN_MODE
    assert robot.refusal(Action.STAND_DOWN) == ErrorCode.NOT_AVAILABLE_IN_MODE
    robot.send(Action.RISE_SIT)
    assert robot.state().mode is Mode.BALANCE_STAND


@pytest.mark.parametrize("mode", POSTURES, ids=lambda mode: mode.name)
def test_body_height_follows_the_posture(mode: Mode) -> None:
    robot = Driver()
    robot.walk_to(mode)
    state = robot.state()
    assert state.body_height_m == BODY_HEIGHT_M[mode] == state.position[2]
    assert (state.body_height_m > 0.25) == (mode in (J, B, W))


@pytest.mark.parametrize("mode", POSTURES, ids=lambda mode: mode.name)
def test_stop_move_is_always_accepted_and_idempotent(mode: Mode) -> None:
    robot = Driver()
    robot.walk_to(mode)
    robot.send(Action.STOP_MOVE)
    once = robot.state()
    robot.send(Action.STOP_MOVE)
    assert robot.state() == once
    assert once.mode is (Mode.BALANCE_STAND if mode is Mode.LOCOMOTION else mode)
    assert once.velocity == (0.0, 0.0, 0.0)


# --- Walking and the watchdog ------------------------------------------------------------------


def walking_robot(*, move_timeout_s: float = 1.0) -> Driver:
    robot = Driver(move_timeout_s=move_timeout_s)
    robot.walk_to(Mode.BALANCE_STAND)
    return robot


def test_the_watchdog_halts_the_robot_one_second_after_the_last_move() -> None:
    robot = walking_robot()
    start_s = robot.clock.now_s
    robot.send(Action.MOVE, {"vx": 0.5})
    robot.clock.advance(0.5)
    halfway = robot.state()
    assert halfway.mode is Mode.LOCOMOTION
    assert halfway.velocity == pytest.approx((0.5, 0.0, 0.0))
    assert halfway.position[0] == pytest.approx(0.25)
    robot.clock.advance(0.6)  # 1.1 s after the move: stopped at 1.0 s
    stopped = robot.state()
    assert stopped.mode is Mode.BALANCE_STAND
    assert stopped.velocity == (0.0, 0.0, 0.0)
    assert stopped.position[0] == pytest.approx(0.5)
    robot.clock.advance(5.0)
    assert robot.state().position == stopped.position
    move, stop = robot.sim.journal()[-2:]
    assert stop.kind is EntryKind.WATCHDOG_STOP
    assert stop.arrival_s == move.drives_until_s == pytest.approx(start_s + 1.0)


def test_a_stream_of_moves_walks_until_one_second_after_it_ends() -> None:
    robot = walking_robot()
    for _ in range(20):  # 2 s at 10 Hz
        robot.send(Action.MOVE, {"vx": 1.0})
        robot.clock.advance(0.1)
    assert robot.state().mode is Mode.LOCOMOTION
    robot.clock.advance(2.0)
    state = robot.state()
    assert state.mode is Mode.BALANCE_STAND
    # The last move came at 1.9 s, so the robot walked 1.9 + 1.0 s at 1 m/s.
    assert state.position[0] == pytest.approx(2.9)
    journal = robot.sim.journal()
    assert [e.kind for e in journal].count(EntryKind.WATCHDOG_STOP) == 1
    moves = [e for e in journal if e.action is Action.MOVE]
    assert all(e.drives_until_s == pytest.approx(e.arrival_s + 0.1) for e in moves[:-1])


def test_the_move_timeout_is_configurable() -> None:
    robot = walking_robot(move_timeout_s=0.3)
    robot.send(Action.MOVE, {"vx": 1.0})
    robot.clock.advance(0.29)
    assert robot.state().mode is Mode.LOCOMOTION
    robot.clock.advance(0.02)
    assert robot.state().mode is Mode.BALANCE_STAND
    assert robot.state().position[0] == pytest.approx(0.3)


def test_a_turn_follows_the_arc() -> None:
    robot = walking_robot(move_timeout_s=10.0)
    # A quarter circle of radius 2/pi in one second: ends at (r, r), facing +y.
    robot.send(Action.MOVE, {"vx": 1.0, "vyaw": math.pi / 2})
    robot.clock.advance(1.0)
    state = robot.state()
    radius = 2 / math.pi
    assert state.position[:2] == pytest.approx((radius, radius))
    assert state.velocity == pytest.approx((0.0, 1.0, 0.0), abs=1e-9)


def test_stop_move_ends_the_move_interval_and_the_walk() -> None:
    robot = walking_robot()
    robot.send(Action.MOVE, {"vx": 1.0})
    robot.clock.advance(0.4)
    robot.send(Action.STOP_MOVE)
    robot.clock.advance(2.0)
    assert robot.state().position[0] == pytest.approx(0.4)
    move, stop = robot.sim.journal()[-2:]
    assert stop.action is Action.STOP_MOVE
    assert stop.kind is EntryKind.COMMAND
    assert move.drives_until_s == stop.arrival_s
    assert robot.sim.check().watchdog_stops == 0


def test_a_move_still_driving_has_an_open_interval() -> None:
    robot = walking_robot()
    robot.send(Action.MOVE, {"vx": 1.0})
    robot.clock.advance(0.5)
    assert robot.sim.journal()[-1].drives_until_s is None


def test_damp_while_walking_stops_at_once() -> None:
    robot = walking_robot()
    robot.send(Action.MOVE, {"vx": 1.0})
    robot.clock.advance(0.2)
    robot.send(Action.DAMP)
    robot.clock.advance(2.0)
    state = robot.state()
    assert (state.mode, state.velocity) == (Mode.DAMPING, (0.0, 0.0, 0.0))
    assert state.position[0] == pytest.approx(0.2)


# --- Fencing, reachability, connection ---------------------------------------------------------


def test_fencing_refuses_an_older_term_and_changes_nothing() -> None:
    robot = walking_robot()
    robot.send(Action.MOVE, {"vx": 1.0}, term=1)
    robot.send(Action.STOP_MOVE, node="n2", term=2)
    before = robot.state()
    assert robot.refusal(Action.MOVE, node="n1", term=1) == ErrorCode.FENCED
    assert robot.state() == before
    last = robot.sim.journal()[-1]
    assert (last.node, last.accepted, last.code) == ("n1", False, 4001)
    robot.send(Action.SIT, node="n2", term=2)  # the same term is still good
    robot.send(Action.RISE_SIT, node="n3", term=3)  # and a newer one
    verdict = robot.sim.check()
    assert verdict.ok, verdict.violations
    assert verdict.fenced == 1


def test_a_term_seen_in_a_command_refused_for_its_mode_still_fences() -> None:
    robot = Driver()
    assert robot.refusal(Action.MOVE, node="n2", term=5) == ErrorCode.NOT_AVAILABLE_IN_MODE
    assert robot.refusal(Action.STAND_UP, node="n1", term=4) == ErrorCode.FENCED


def test_without_fencing_a_stale_term_gets_through_and_the_checker_says_so() -> None:
    # The real Go2 checks no token: the checker is then the only witness.
    robot = Driver(enforce_fencing=False)
    robot.send(Action.STAND_UP, node="n1", term=1)
    robot.send(Action.BALANCE_STAND, node="n2", term=2)
    robot.send(Action.MOVE, node="n1", term=1)
    verdict = robot.sim.check()
    kinds = {v.kind for v in verdict.violations}
    assert kinds == {ViolationKind.STALE_TERM, ViolationKind.OVERLAPPING_WRITERS}
    assert all(v.entry == 2 for v in verdict.violations)


def test_an_unreachable_robot_times_out_and_journals_nothing() -> None:
    robot = walking_robot()
    robot.send(Action.MOVE, {"vx": 1.0})
    robot.sim.set_reachable(False)
    assert not asyncio.run(robot.sim.reachable())
    assert robot.refusal(Action.STOP_MOVE) == ErrorCode.TIMEOUT
    with pytest.raises(RobotError) as info:
        robot.state()
    assert info.value.code == ErrorCode.TIMEOUT
    robot.clock.advance(3.0)  # the robot is still there: its watchdog stops it
    robot.sim.set_reachable(True)
    assert asyncio.run(robot.sim.reachable())
    assert robot.state().mode is Mode.BALANCE_STAND
    assert robot.state().position[0] == pytest.approx(1.0)
    assert [e.action for e in robot.sim.journal()[-2:]] == [Action.MOVE, Action.STOP_MOVE]
    assert robot.sim.journal()[-1].kind is EntryKind.WATCHDOG_STOP


def test_calls_need_an_open_channel() -> None:
    clock = FakeClock()
    sim = SimGo2(now=clock, latency_s=0.0)
    command, token = Command(Action.STOP_MOVE), FencingToken(1, 1, "n1")
    for attempt in (sim.execute(command, token), sim.state()):
        with pytest.raises(RobotError) as info:
            asyncio.run(attempt)
        assert info.value.code == ErrorCode.NOT_CONNECTED
    assert not asyncio.run(sim.reachable())
    asyncio.run(sim.connect())
    asyncio.run(sim.execute(command, token))
    asyncio.run(sim.close())
    with pytest.raises(RobotError):
        asyncio.run(sim.execute(command, token))
    assert len(sim.journal()) == 1


def test_latency_and_timeout_are_awaited_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(delay_s: float) -> None:
        slept.append(delay_s)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    sim = SimGo2(now=FakeClock(), latency_s=0.02, timeout_s=0.3)
    asyncio.run(sim.connect())
    asyncio.run(sim.execute(Command(Action.STAND_UP), FencingToken(1, 1, "n1")))
    sim.set_reachable(False)
    with pytest.raises(RobotError):
        asyncio.run(sim.state())
    assert slept == [0.02, 0.3]


# --- The checker -------------------------------------------------------------------------------


def sent(
    node: str,
    term: int,
    at_s: float,
    *,
    accepted: bool = True,
    code: int | None = None,
    lease_expiry_s: float | None = None,
    action: Action = Action.MOVE,
) -> JournalEntry:
    return JournalEntry(
        EntryKind.COMMAND,
        at_s,
        action,
        token=FencingToken(term, int(at_s * 10), node),
        accepted=accepted,
        code=code,
        lease_expiry_s=lease_expiry_s,
    )


def test_a_clean_handover_passes() -> None:
    journal = [
        sent("a", 3, 0.0),
        sent("a", 3, 0.1),
        JournalEntry(EntryKind.WATCHDOG_STOP, 1.1, Action.STOP_MOVE),
        sent("b", 4, 2.0),
        sent("a", 3, 2.1, accepted=False, code=ErrorCode.FENCED),  # refused: drove nothing
        sent("b", 4, 2.2),
    ]
    verdict = check_journal(journal)
    assert verdict.ok, verdict.violations
    assert (verdict.commands, verdict.accepted, verdict.fenced) == (5, 4, 1)
    assert (verdict.watchdog_stops, verdict.senders) == (1, ("a", "b"))


def test_two_writers_in_one_term_overlap() -> None:
    journal = [sent("a", 3, 0.0), sent("b", 3, 0.1), sent("a", 3, 0.2), sent("b", 3, 0.3)]
    overlaps = check_journal(journal).of_kind(ViolationKind.OVERLAPPING_WRITERS)
    assert [(v.entry, v.other) for v in overlaps] == [(2, 1), (3, 2)]
    assert "a (term 3) sent again after b (term 3)" in overlaps[0].detail


def test_a_writer_resuming_without_a_newer_term_overlaps() -> None:
    # b took over in term 4; a sends again still claiming term 4 (or never heard of 5).
    journal = [sent("a", 3, 0.0), sent("b", 4, 0.1), sent("b", 4, 0.2), sent("a", 4, 0.3)]
    verdict = check_journal(journal)
    assert [(v.kind, v.entry, v.other) for v in verdict.violations] == [
        (ViolationKind.OVERLAPPING_WRITERS, 3, 1)
    ]


def test_a_writer_elected_again_later_is_a_handback_not_an_overlap() -> None:
    journal = [sent("a", 3, 0.0), sent("b", 4, 0.1), sent("a", 5, 0.2), sent("a", 5, 0.3)]
    assert check_journal(journal).ok


def test_a_stale_term_accepted_is_fencing_broken() -> None:
    journal = [sent("a", 2, 0.0), sent("b", 3, 0.1, accepted=False, code=3203), sent("a", 2, 0.2)]
    verdict = check_journal(journal)
    stale = verdict.of_kind(ViolationKind.STALE_TERM)
    assert [(v.entry, v.other) for v in stale] == [(2, 1)]
    assert "term 2 accepted after term 3" in stale[0].detail


def test_a_command_after_its_senders_lease_is_flagged_accepted_or_not() -> None:
    journal = [
        sent("a", 1, 5.0, lease_expiry_s=5.0),  # on the dot: still inside
        sent("a", 1, 5.2, lease_expiry_s=5.1),
        sent("a", 1, 5.3, lease_expiry_s=5.1, accepted=False, code=ErrorCode.FENCED),
    ]
    late = check_journal(journal).of_kind(ViolationKind.AFTER_LEASE)
    assert [v.entry for v in late] == [1, 2]
    assert "0.100 s after its lease ran out" in late[0].detail


def test_an_empty_journal_passes() -> None:
    verdict = check_journal([])
    assert verdict.ok
    assert verdict.commands == 0


def test_a_live_takeover_with_a_late_old_primary_is_caught_by_its_lease() -> None:
    robot = walking_robot()
    lease_s = robot.clock.now_s + 0.3
    robot.send(Action.MOVE, {"vx": 1.0}, term=1, lease_expiry_s=lease_s)
    robot.clock.advance(0.5)
    robot.send(Action.STOP_MOVE, node="n2", term=2, lease_expiry_s=robot.clock.now_s + 1.0)
    with pytest.raises(RobotError):
        robot.send(Action.MOVE, {"vx": 1.0}, node="n1", term=1, lease_expiry_s=lease_s)
    verdict = robot.sim.check()
    assert [(v.kind, v.entry) for v in verdict.violations] == [
        (ViolationKind.AFTER_LEASE, len(robot.sim.journal()) - 1)
    ]


def test_journal_and_verdict_survive_json() -> None:
    robot = Driver(enforce_fencing=False)
    robot.send(Action.STAND_UP, term=2, lease_expiry_s=2000.0)
    robot.send(Action.BALANCE_STAND, term=1)
    robot.send(Action.MOVE, {"vx": 0.5, "vyaw": -0.2})
    robot.clock.advance(2.0)
    journal = robot.sim.journal()
    again = tuple(entry_from_json(entry_to_json(e)) for e in journal)
    assert again == journal
    assert [e.node for e in again] == [e.node for e in journal]
    verdict = robot.sim.check()
    assert not verdict.ok
    assert verdict_from_json(verdict_to_json(verdict)) == verdict
