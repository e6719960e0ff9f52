"""The guard against the simulated Go2, on a clock the test moves: no real sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pytest

from ha_voice.robot.base import (
    Action,
    Command,
    ErrorCode,
    FencingToken,
    Mode,
    RobotError,
    RobotState,
)
from ha_voice.robot.guard import (
    DEFAULT_POSTURE_SETTLE_S,
    DEFAULT_STREAM_HZ,
    POSTURE_GOALS,
    Guard,
    NotLeading,
    Outcome,
    posture_plan,
)
from ha_voice.robot.sim import POSTURES, SimGo2

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


@dataclass
class Lease:
    """A lease the test holds or drops at will."""

    clock: Clock
    term: int = 3
    lease_expiry: float = float("inf")

    def lease_valid(self, now: float) -> bool:
        return now < self.lease_expiry


def setup() -> tuple[Clock, Lease, SimGo2, Guard]:
    clock = Clock()
    lease = Lease(clock)
    robot = SimGo2(now=clock, latency_s=0.0)
    guard = Guard(robot, lease, "n1", now=clock, sleep=clock.sleep)
    return clock, lease, robot, guard


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


def actions(robot: SimGo2) -> list[str]:
    return [e.action.value for e in robot.journal() if e.action is not None and e.accepted]


def stand(guard: Guard) -> None:
    run(guard.take_over())
    run(guard.execute(Command(Action.STAND_UP)))


def test_nothing_reaches_the_robot_without_a_lease() -> None:
    clock, lease, robot, guard = setup()
    run(robot.connect())
    lease.lease_expiry = clock.t - 1
    with pytest.raises(NotLeading):
        run(guard.take_over())
    with pytest.raises(NotLeading, match="no valid lease"):
        run(guard.execute(Command(Action.SIT)))
    assert robot.journal() == ()


def test_commands_wait_for_the_safe_state() -> None:
    _, _, robot, guard = setup()
    run(robot.connect())
    with pytest.raises(NotLeading, match="safe state"):
        run(guard.execute(Command(Action.STAND_UP)))
    assert robot.journal() == ()


def test_take_over_stops_then_balances_a_standing_robot() -> None:
    async def scenario() -> list[str]:
        _, _, robot, guard = setup()
        await robot.connect()
        await guard.take_over()
        await guard.execute(Command(Action.STAND_UP))
        before = len(actions(robot))
        await guard.take_over()  # a new term on the same robot
        return actions(robot)[before:]

    assert asyncio.run(scenario()) == ["stop_move", "balance_stand"]


def test_stand_up_is_followed_by_balance_stand_so_the_robot_can_walk() -> None:
    _, _, robot, guard = setup()
    run(robot.connect())
    stand(guard)
    assert actions(robot)[-2:] == ["stand_up", "balance_stand"]
    assert run(robot.state()).mode is Mode.BALANCE_STAND


def test_a_walk_is_a_stream_of_moves_then_a_stop() -> None:
    _, _, robot, guard = setup()
    run(robot.connect())
    stand(guard)
    walk = Command(Action.MOVE, {"vx": 0.3})
    outcome = run(guard.execute(walk, duration_s=2.0))
    assert outcome.status == "done"
    assert 28 <= outcome.moves_sent <= 31  # 15 Hz for 2 s
    sent = actions(robot)
    assert sent[-1] == "stop_move"
    assert sent.count("move") == outcome.moves_sent
    assert run(robot.state()).position[0] == pytest.approx(0.6, abs=0.05)
    assert robot.check().ok


def test_losing_the_lease_ends_the_stream_and_the_watchdog_halts_the_robot() -> None:
    async def scenario() -> tuple[int, int, tuple[float, float, float]]:
        clock, lease, robot, guard = setup()
        await robot.connect()
        await guard.take_over()
        await guard.execute(Command(Action.STAND_UP))
        lease.lease_expiry = clock.t + 0.5
        outcome = await guard.execute(Command(Action.MOVE, {"vx": 0.3}), duration_s=3.0)
        await clock.sleep(2.0)
        state = await robot.state()
        # Commands (not the robot's own watchdog stop) that arrived once the lease was over.
        late = [
            e for e in robot.journal() if e.token is not None and e.arrival_s >= lease.lease_expiry
        ]
        return outcome.moves_sent, len(late), state.velocity, robot.check().ok

    moves, late, velocity, verdict_ok = asyncio.run(scenario())
    assert 6 <= moves <= 9  # 15 Hz for the 0.5 s the lease lasted
    assert late == 0
    assert velocity == (0.0, 0.0, 0.0)  # the watchdog, not us, stopped it
    assert verdict_ok


def test_stop_preempts_a_walk_and_everything_queued() -> None:
    async def scenario() -> tuple[str, str, list[str]]:
        _, _, robot, guard = setup()
        await robot.connect()
        await guard.take_over()
        await guard.execute(Command(Action.STAND_UP))
        walk = asyncio.ensure_future(
            guard.execute(Command(Action.MOVE, {"vx": 0.3}), duration_s=10.0)
        )
        queued = asyncio.ensure_future(guard.execute(Command(Action.SIT)))
        for _ in range(5):
            await asyncio.sleep(0)
        stopped = await guard.stop()
        assert stopped.status == "done"
        return (await walk).status, (await queued).status, actions(robot)

    walk, queued, sent = asyncio.run(scenario())
    assert walk == "stopped"
    assert queued == "stopped"
    assert sent[-1] == "stop_move"
    assert "sit" not in sent


def test_halt_cancels_without_sending_and_closes_the_gate() -> None:
    async def scenario() -> tuple[str, list[str], list[str]]:
        _, _, robot, guard = setup()
        await robot.connect()
        await guard.take_over()
        await guard.execute(Command(Action.STAND_UP))
        walk = asyncio.ensure_future(
            guard.execute(Command(Action.MOVE, {"vx": 0.3}), duration_s=10.0)
        )
        for _ in range(5):
            await asyncio.sleep(0)
        before = actions(robot)
        guard.halt("stepped down")
        outcome = await walk
        return outcome.status, before, actions(robot)

    status, before, after = asyncio.run(scenario())
    assert status == "stopped"
    assert after == before  # not even a stop_move: without a lease nothing may be sent


def test_every_command_carries_term_index_and_lease() -> None:
    _, lease, robot, guard = setup()
    run(robot.connect())
    lease.lease_expiry = 10_000.0
    run(guard.take_over(index=40))
    run(guard.execute(Command(Action.STAND_UP), index=41))
    run(guard.execute(Command(Action.SIT), index=42))
    entries = [e for e in robot.journal() if e.token is not None]
    assert {e.token.term for e in entries} == {3}
    # The journal index of the command each call carries out; BalanceStand follows StandUp.
    assert [(e.action, e.token.index) for e in entries] == [
        (Action.STOP_MOVE, 40),
        (Action.STAND_UP, 41),
        (Action.BALANCE_STAND, 41),
        (Action.SIT, 42),
    ]
    assert {e.lease_expiry_s for e in entries} == {10_000.0}
    assert {e.node for e in entries} == {"n1"}


# --- postures: every posture command from every posture the simulated Go2 can be in ------------

_TOKEN = FencingToken(3, 0, "setup")
# Direct calls (not through the guard) that put the simulator in each of its postures.
_INTO: dict[Mode, tuple[Command, ...]] = {
    Mode.LIE_DOWN: (),
    Mode.DAMPING: (Command(Action.DAMP),),
    Mode.JOINT_LOCK: (Command(Action.STAND_UP),),
    Mode.BALANCE_STAND: (Command(Action.STAND_UP), Command(Action.BALANCE_STAND)),
    Mode.LOCOMOTION: (
        Command(Action.STAND_UP),
        Command(Action.BALANCE_STAND),
        Command(Action.MOVE, {"vx": 0.3}),
    ),
    Mode.SIT: (Command(Action.STAND_UP), Command(Action.BALANCE_STAND), Command(Action.SIT)),
}


def test_the_setup_covers_every_posture_of_the_simulator() -> None:
    assert set(_INTO) == set(POSTURES)


def in_posture(mode: Mode) -> tuple[SimGo2, Guard]:
    _, _, robot, guard = setup()
    run(robot.connect())
    run(guard.take_over())  # from lying: nothing but STOP_MOVE
    for command in _INTO[mode]:
        run(robot.execute(command, _TOKEN))
    assert run(robot.state()).mode is mode
    return robot, guard


@pytest.mark.parametrize("mode", POSTURES, ids=lambda m: m.name.lower())
@pytest.mark.parametrize("action", POSTURE_GOALS, ids=lambda a: a.value)
def test_a_posture_command_reaches_its_posture_from_every_posture(
    action: Action, mode: Mode
) -> None:
    robot, guard = in_posture(mode)
    before = len(robot.journal())
    outcome = run(guard.execute(Command(action), index=7))
    assert outcome.status == "done", outcome.detail
    assert run(robot.state()).mode is POSTURE_GOALS[action]
    sent = robot.journal()[before:]
    refused = [(e.action.value, e.code) for e in sent if not e.accepted]
    assert refused == []  # the guard asked only what the robot accepts in each mode
    assert {e.token for e in sent} == {FencingToken(3, 7, "n1")}
    assert [e.action for e in sent] == list(posture_plan(action, mode))


def test_sta_op_after_sitting_rises_and_says_how() -> None:
    robot, guard = in_posture(Mode.SIT)
    outcome = run(guard.execute(Command(Action.STAND_UP)))
    assert outcome.status == "done"
    assert outcome.detail == "from sit: rise_sit"
    assert run(robot.state()).mode is Mode.BALANCE_STAND
    run(guard.execute(Command(Action.MOVE, {"vx": 0.3}), duration_s=0.2))
    assert run(robot.state()).mode is Mode.BALANCE_STAND  # walked, then stopped


def test_a_refused_step_fails_the_command_and_names_the_step() -> None:
    robot, guard = in_posture(Mode.SIT)
    run(robot.execute(Command(Action.STOP_MOVE), FencingToken(9, 0, "other")))  # a newer term
    outcome = run(guard.execute(Command(Action.STAND_DOWN)))
    assert outcome.status == "failed"
    assert outcome.detail.startswith("rise_sit (from sit): ")
    assert "4001" in outcome.detail
    assert run(robot.state()).mode is Mode.SIT


def test_a_robot_without_a_known_mode_gets_the_command_as_asked() -> None:
    assert posture_plan(Action.SIT, None) == (Action.SIT,)
    assert posture_plan(Action.STAND_UP, None) == (Action.STAND_UP, Action.BALANCE_STAND)


class SlowToSettle(SimGo2):
    """A Go2 whose `rt/sportmodestate` shows a posture change only `polls` reads after the call
    was accepted, as a real motion takes time."""

    def __init__(self, polls: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.polls = polls
        self._shown: Mode | None = None
        self._hidden_for = 0

    async def execute(
        self, command: Command, token: FencingToken, *, lease_expiry_s: float | None = None
    ) -> None:
        before = (await super().state()).mode
        await super().execute(command, token, lease_expiry_s=lease_expiry_s)
        self._shown, self._hidden_for = before, self.polls

    async def state(self) -> RobotState:
        state = await super().state()
        if self._hidden_for > 0:
            self._hidden_for -= 1
            return replace(state, mode=self._shown or state.mode)
        return state


def sitting_slow_to_settle(polls: int) -> tuple[SlowToSettle, Guard]:
    """A sitting robot whose reports lag `polls` reads behind each call from now on."""
    clock = Clock()
    robot = SlowToSettle(0, now=clock, latency_s=0.0)
    guard = Guard(robot, Lease(clock), "n1", now=clock, sleep=clock.sleep)
    run(robot.connect())
    run(guard.take_over())
    for command in _INTO[Mode.SIT]:
        run(robot.execute(command, _TOKEN))
    robot.polls = polls
    return robot, guard


def test_each_call_of_a_plan_waits_until_the_robot_got_where_the_last_one_leads() -> None:
    robot, guard = sitting_slow_to_settle(3)
    before = len(robot.journal())
    outcome = run(guard.execute(Command(Action.STAND_DOWN)))
    assert outcome.status == "done", outcome.detail
    rise, down = robot.journal()[before:]
    assert (rise.action, down.action) == (Action.RISE_SIT, Action.STAND_DOWN)
    # Three reads still showed SIT: the guard polled at the stream rate until BALANCE_STAND.
    assert down.arrival_s - rise.arrival_s == pytest.approx(3 / DEFAULT_STREAM_HZ)
    assert run(SimGo2.state(robot)).mode is Mode.LIE_DOWN  # the simulator's own, no lag


def test_a_robot_that_never_reports_the_mode_gets_the_next_call_after_the_bound() -> None:
    robot, guard = sitting_slow_to_settle(10**6)
    before = len(robot.journal())
    outcome = run(guard.execute(Command(Action.STAND_DOWN)))
    assert outcome.status == "done"  # the simulator got there; its report only lagged
    rise, down = robot.journal()[before:]
    assert down.arrival_s - rise.arrival_s == pytest.approx(DEFAULT_POSTURE_SETTLE_S, abs=0.1)


def test_a_stop_ends_a_plan_between_two_calls() -> None:
    robot, guard = sitting_slow_to_settle(10**6)

    async def scenario() -> tuple[Outcome, Outcome]:
        plan = asyncio.ensure_future(guard.execute(Command(Action.STAND_DOWN)))
        for _ in range(5):
            await asyncio.sleep(0)
        stopped = await guard.stop()
        return await plan, stopped

    before = len(robot.journal())
    outcome, stopped = run(scenario())
    assert outcome.status == "stopped"
    assert stopped.status == "done"
    sent = [e.action for e in robot.journal()[before:]]
    assert sent == [Action.RISE_SIT, Action.STOP_MOVE]  # never StandDown after the stop


class ChainsItsStand(SimGo2):
    """A robot that balances by itself right after StandUp (firmware or adapter that chains)."""

    async def execute(
        self, command: Command, token: FencingToken, *, lease_expiry_s: float | None = None
    ) -> None:
        await super().execute(command, token, lease_expiry_s=lease_expiry_s)
        if command.action is Action.STAND_UP:
            await super().execute(Command(Action.BALANCE_STAND), token)


def test_a_robot_already_further_along_the_plan_is_not_waited_for() -> None:
    clock = Clock()
    robot = ChainsItsStand(now=clock, latency_s=0.0)
    guard = Guard(robot, Lease(clock), "n1", now=clock, sleep=clock.sleep)
    run(robot.connect())
    run(guard.take_over())
    started = clock.t
    assert run(guard.execute(Command(Action.STAND_UP))).status == "done"
    assert clock.t == started  # BALANCE_STAND reported instead of JOINT_LOCK: no wait
    assert run(robot.state()).mode is Mode.BALANCE_STAND


class HeldPastTheLease(SimGo2):
    """A robot client whose next `held` calls waited past the lease they were sent under (queued
    behind other calls) and were not sent, as the sim client and the Go2 adapter report it."""

    def __init__(self, held: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.held = held
        self.expiries: list[float | None] = []

    async def execute(
        self, command: Command, token: FencingToken, *, lease_expiry_s: float | None = None
    ) -> None:
        self.expiries.append(lease_expiry_s)
        if self.held > 0:
            self.held -= 1
            raise RobotError(ErrorCode.TIMEOUT, "lease ended, not sent", not_sent=True)
        await super().execute(command, token, lease_expiry_s=lease_expiry_s)


def _held_setup(held: int) -> tuple[Clock, Lease, HeldPastTheLease, Guard]:
    clock = Clock()
    lease = Lease(clock, lease_expiry=clock.t + 5.0)
    robot = HeldPastTheLease(held, now=clock, latency_s=0.0)
    guard = Guard(robot, lease, "n1", now=clock, sleep=clock.sleep)
    run(robot.connect())
    return clock, lease, robot, guard


def test_a_call_held_past_its_lease_is_sent_again_under_the_lease_renewed_meanwhile() -> None:
    _, lease, robot, guard = _held_setup(held=1)
    run(guard.take_over())
    assert actions(robot)[:1] == ["stop_move"]  # sent on the second attempt
    assert len(robot.expiries) >= 2
    lease.lease_expiry += 5.0  # renewed
    robot.held = 2
    outcome = run(guard.execute(Command(Action.STOP_MOVE)))
    assert outcome.status == "done"
    assert robot.expiries[-1] == lease.lease_expiry  # under the lease as it is now


def test_a_call_never_sent_is_not_retried_without_a_lease_nor_for_ever() -> None:
    clock, lease, robot, guard = _held_setup(held=0)
    run(guard.take_over())
    robot.held = 10
    outcome = run(guard.execute(Command(Action.STOP_MOVE)))
    assert outcome.status == "failed"  # three attempts, then the error as it came
    assert "lease ended, not sent" in outcome.detail
    robot.held = 1
    lease.lease_expiry = clock.t  # gone while it waited: judged again, not sent
    with pytest.raises(NotLeading):
        run(guard.execute(Command(Action.STOP_MOVE)))


class LosesOneCancel:
    """A robot whose call, cancelled as it ends, returns instead of raising — as
    `asyncio.wait_for` does before Python 3.12 (cpython gh-86296), which the sim robot's client
    and many SDK wrappers use. Once: the next cancellation is delivered as usual."""

    def __init__(self, robot: SimGo2) -> None:
        self._robot = robot
        self.lost = 0
        self.answered = asyncio.Event()  # set while a call has its answer, not yet returned

    def __getattr__(self, name: str) -> Any:
        return getattr(self._robot, name)

    async def execute(self, command: Command, token: FencingToken, **kwargs: Any) -> None:
        try:
            await self._robot.execute(command, token, **kwargs)
            self.answered.set()
            await asyncio.sleep(0)  # the call is over; a cancel landing now is the lost one
        except asyncio.CancelledError:
            if self.lost:
                raise
            self.lost += 1
        finally:
            self.answered.clear()


@pytest.mark.parametrize("how", ["stop", "halt"])
def test_a_lost_cancellation_does_not_let_a_walk_go_on(how: str) -> None:
    """CI, Python 3.10: a stop sent during a 30 s walk answered, and the walk ran to its end."""

    async def scenario() -> tuple[Outcome, list[str], list[str], int]:
        clock, lease, sim, _ = setup()
        robot = LosesOneCancel(sim)
        guard = Guard(robot, lease, "n1", now=clock, sleep=clock.sleep)  # type: ignore[arg-type]
        await sim.connect()
        await guard.take_over()
        await guard.execute(Command(Action.STAND_UP))
        walk = asyncio.ensure_future(
            guard.execute(Command(Action.MOVE, {"vx": 0.3}), duration_s=30.0, index=7)
        )
        await robot.answered.wait()  # the stream is in a call, just past the robot's answer
        before = actions(sim)
        if how == "stop":
            await guard.stop(index=8)
        else:
            guard.halt("lease gone")
        outcome = await asyncio.wait_for(walk, 5.0)
        return outcome, before, actions(sim), robot.lost

    outcome, before, after, lost = asyncio.run(scenario())
    assert lost == 1  # the cancellation was indeed lost
    assert outcome.status == "stopped"
    assert outcome.moves_sent < 30 * DEFAULT_STREAM_HZ
    added = after[len(before) :]
    if how == "stop":
        assert added[-1] == "stop_move"
        assert added.count("move") <= 1
    else:
        assert added == []  # halted: nothing more may be sent


def test_a_stop_preempts_the_commands_before_it_in_the_journal_not_yet_begun() -> None:
    """A stop committed after a command, that runs before the command's task gets its turn,
    still preempts it: journal order decides, not task order."""

    async def scenario() -> tuple[str, str, str, list[str]]:
        _, _, robot, guard = setup()
        await robot.connect()
        await guard.take_over()
        await guard.execute(Command(Action.STAND_UP), index=5)
        stopped = await guard.stop(index=12)
        walk = await guard.execute(Command(Action.MOVE, {"vx": 0.3}), duration_s=30.0, index=11)
        after = await guard.execute(Command(Action.SIT), index=13)
        return stopped.status, walk.status, after.status, actions(robot)

    stopped, walk, after, sent = asyncio.run(scenario())
    assert (stopped, walk, after) == ("done", "stopped", "done")
    assert "move" not in sent
    assert sent[-1] in ("rise_sit", "sit", "stand_down")
