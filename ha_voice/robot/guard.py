"""The single gate to the robot: nothing reaches it unless this node leads with a valid lease.

Invariants:
- The lease is checked immediately before every call to the robot, with nothing awaited in
  between, and must still hold `send_margin_s` later (default 25 ms: the time a call may take
  to reach the robot on a loaded host), so a call arrives before the sender's lease ends; the
  lease itself ends a heartbeat interval before anyone else may lead (cluster/timers.py).
- Every call carries the fencing token (term, index, node) and the sender's lease expiry; the
  index is the journal index of the command being carried out (for a takeover, of the new
  primary's first entry), so the robot's log can be matched against the journal.
- A motion is a stream of MOVE at `stream_hz` for its duration, then STOP_MOVE. The stream ends
  the moment the lease is gone (nothing more is sent: the robot's own watchdog halts it within
  ~1 s), on `stop()` (which then sends STOP_MOVE), or on `halt()`.
- `stop()` preempts: the stream and every command still waiting for its turn are cancelled, and
  so is every command of an earlier journal index that has not begun (journal order, not the
  order the tasks happen to run in). Preemption does not rest on cancellation alone: a stream
  looks at the stop epoch before each call, because Python before 3.12 can lose a cancellation
  (`asyncio.wait_for` returns its inner result when the cancel lands as the inner call ends,
  cpython gh-86296) and a lost one let a 30 s walk run on after its stop.
- After `take_over()` — STOP_MOVE, then BALANCE_STAND if the robot stands — and only then,
  commands are accepted; stepping down (`halt`) closes the gate again.
- A posture command reaches its posture from every posture the robot can be in: the guard reads
  the robot's mode and sends the calls `posture_plan` lists (SIT: RISE_SIT, then the stand), all
  under the command's token. The Go2 refuses a posture call outside its modes (3203), so this
  table, not the caller, knows the way; STAND_UP ends with BALANCE_STAND, so the robot can walk.
  Each call after the first waits until the robot reports the mode the one before leads to (at
  most `posture_settle_s`); `stop()` ends the plan between two calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from ha_voice import clock
from ha_voice.errors import HAVoiceError
from ha_voice.robot.base import (
    Action,
    Command,
    FencingToken,
    Mode,
    Robot,
    RobotError,
    RobotState,
)

__all__ = [
    "POSTURE_GOALS",
    "Guard",
    "LeaseView",
    "NotLeading",
    "Outcome",
    "posture_plan",
]

log = logging.getLogger(__name__)

# Unitree: Move must be repeated at 10-20 Hz or the robot stops after ~1-2 s
# (docs/design.md "The Go2").
DEFAULT_STREAM_HZ = 15.0
# A call that waited past the lease it was sent under, and was not sent, is judged again under
# the lease as it is then (renewed, or gone: NotLeading), at most this many times in all.
_SEND_ATTEMPTS = 3
DEFAULT_SEND_MARGIN_S = 0.025
_STANDING = frozenset({Mode.BALANCE_STAND, Mode.LOCOMOTION, Mode.JOINT_LOCK, Mode.POSE})

# --- postures ---------------------------------------------------------------------------------

_LIE, _DAMP, _LOCK = Mode.LIE_DOWN, Mode.DAMPING, Mode.JOINT_LOCK
_BALANCE, _WALK, _SIT = Mode.BALANCE_STAND, Mode.LOCOMOTION, Mode.SIT
_STAND_UP, _BALANCE_UP = Action.STAND_UP, Action.BALANCE_STAND

# The posture each posture command ends in. The robot can walk only from a balanced stand, so
# every "stand" ends there.
POSTURE_GOALS: Final[Mapping[Action, Mode]] = {
    Action.STAND_UP: _BALANCE,
    Action.BALANCE_STAND: _BALANCE,
    Action.RECOVERY_STAND: _BALANCE,
    Action.RISE_SIT: _BALANCE,
    Action.SIT: _SIT,
    Action.STAND_DOWN: _LIE,
    Action.DAMP: _DAMP,
}

# Posture command -> {mode: the calls that take the robot from that mode to the command's goal}.
# The Go2 accepts Sit only from a balanced stand, RiseSit only from sitting, StandUp and
# StandDown not while walking or sitting, StandDown not when damped, BalanceStand not lying
# (docs/design.md "The Go2"; sim.TRANSITIONS holds the same rules and refuses the rest with 3203).
# A mode not listed takes the command itself (`_DIRECT`).
_PLANS: Final[Mapping[Action, Mapping[Mode, tuple[Action, ...]]]] = {
    Action.STAND_UP: {_WALK: (Action.STOP_MOVE,), _SIT: (Action.RISE_SIT,)},
    Action.BALANCE_STAND: {
        _LIE: (_STAND_UP, _BALANCE_UP),
        _DAMP: (_STAND_UP, _BALANCE_UP),
        _SIT: (Action.RISE_SIT,),
    },
    Action.RECOVERY_STAND: {
        _LOCK: (_BALANCE_UP,),
        _WALK: (Action.STOP_MOVE,),
        _SIT: (Action.RISE_SIT,),
    },
    Action.RISE_SIT: {
        _LIE: (_STAND_UP, _BALANCE_UP),
        _DAMP: (_STAND_UP, _BALANCE_UP),
        _LOCK: (_BALANCE_UP,),
        _WALK: (Action.STOP_MOVE,),
    },
    Action.SIT: {
        _LIE: (_STAND_UP, _BALANCE_UP, Action.SIT),
        _DAMP: (_STAND_UP, _BALANCE_UP, Action.SIT),
        _LOCK: (_BALANCE_UP, Action.SIT),
        _WALK: (Action.STOP_MOVE, Action.SIT),
    },
    Action.STAND_DOWN: {
        _DAMP: (_STAND_UP, Action.STAND_DOWN),
        _WALK: (Action.STOP_MOVE, Action.STAND_DOWN),
        _SIT: (Action.RISE_SIT, Action.STAND_DOWN),
    },
}
# StandUp locks the joints; BalanceStand after it lets the robot walk.
_DIRECT: Final[Mapping[Action, tuple[Action, ...]]] = {_STAND_UP: (_STAND_UP, _BALANCE_UP)}
# The mode each call of a plan leads to (sim.TRANSITIONS); the next call waits for it.
_LEADS_TO: Final[Mapping[Action, Mode]] = {
    Action.STOP_MOVE: _BALANCE,
    _STAND_UP: _LOCK,
    _BALANCE_UP: _BALANCE,
    Action.RECOVERY_STAND: _BALANCE,
    Action.RISE_SIT: _BALANCE,
    Action.SIT: _SIT,
    Action.STAND_DOWN: _LIE,
    Action.DAMP: _DAMP,
}
# A call returns once the robot accepted it, before the motion ends; the next call of a plan is
# sent when the robot reports the mode the last one leads to, or after this long at most (a bound
# on the wait, far above a posture change's duration; the robot's 3203 then tells the truth).
DEFAULT_POSTURE_SETTLE_S = 3.0


def posture_plan(action: Action, mode: Mode | None) -> tuple[Action, ...]:
    """The calls that carry out `action` from `mode` (None: unknown, the command as asked)."""
    direct = _DIRECT.get(action, (action,))
    if mode is None:
        return direct
    return _PLANS.get(action, {}).get(mode, direct)


class LeaseView(Protocol):
    """What the guard needs of the election (`cluster.election.Election` provides it)."""

    @property
    def term(self) -> int: ...

    @property
    def lease_expiry(self) -> float: ...

    def lease_valid(self, now: float) -> bool: ...


class NotLeading(HAVoiceError):
    """This node may not command the robot now; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    """What became of one command."""

    status: Literal["done", "stopped", "failed"]
    token: FencingToken | None
    detail: str = ""
    moves_sent: int = 0


class Guard:
    """Serialises commands to one robot under this node's lease."""

    def __init__(
        self,
        robot: Robot,
        lease: LeaseView,
        node_id: str,
        *,
        stream_hz: float = DEFAULT_STREAM_HZ,
        send_margin_s: float = DEFAULT_SEND_MARGIN_S,
        posture_settle_s: float = DEFAULT_POSTURE_SETTLE_S,
        now: Callable[[], float] = clock.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._robot = robot
        self._lease = lease
        self._node_id = node_id
        self._period_s = 1.0 / stream_hz
        self._send_margin_s = send_margin_s
        self._posture_settle_s = posture_settle_s
        self._now = now
        self._sleep = sleep
        self._turn = asyncio.Lock()
        self._ready_term: int | None = None
        # The newest term the robot said it follows when it refused one of our calls (FENCED),
        # None until it has: above our term, another primary commands the robot.
        self.robot_term: int | None = None
        self._epoch = 0  # bumped by stop() and halt(): commands of an older epoch are dropped
        # The journal index of the newest stop run: a command of an earlier index that has not
        # begun yet is preempted by it (0: none; index 0 is a call outside the journal).
        self._stopped_at = 0
        self._stream: asyncio.Task[Outcome] | None = None

    @property
    def ready(self) -> bool:
        return self._ready_term == self._lease.term and self._lease.lease_valid(self._now())

    async def take_over(
        self, on_takeover: Literal["stop", "none"] = "stop", index: int = 0
    ) -> None:
        """Bring the robot to its safe state for this term, then open the gate."""
        term = self._lease.term
        async with self._turn:
            if on_takeover == "stop":
                await self._send(Command(Action.STOP_MOVE), index)
                if (await self._robot.state()).mode in _STANDING:
                    await self._send(Command(Action.BALANCE_STAND), index)
            self._ready_term = term
        log.info("term %d: robot safe, accepting commands", term)

    async def robot_state(self) -> RobotState:
        """What the robot reports (its mode is mirrored into the journal with each outcome)."""
        return await self._robot.state()

    def halt(self, reason: str) -> None:
        """Stop commanding at once (the lease is gone): cancel everything, send nothing."""
        self._ready_term = None
        self._epoch += 1
        if self._stream is not None:
            self._stream.cancel()
        log.info("robot commands halted: %s", reason)

    async def stop(self, index: int = 0) -> Outcome:
        """Preempt whatever runs or waits (and every command of a journal index below `index`
        that has not begun), then STOP_MOVE; NotLeading if we may not command."""
        self._epoch += 1
        self._stopped_at = max(self._stopped_at, index)
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream
        async with self._turn:
            return await self._once(Command(Action.STOP_MOVE), index)

    async def execute(
        self, command: Command, *, duration_s: float | None = None, index: int = 0
    ) -> Outcome:
        """Run one command, or a MOVE stream of `duration_s`; raises NotLeading if we may not."""
        if command.action is Action.STOP_MOVE:
            return await self.stop(index)
        epoch = self._epoch
        async with self._turn:
            if epoch != self._epoch:
                return Outcome("stopped", None, "preempted by stop")
            if 0 < index < self._stopped_at:
                return Outcome(
                    "stopped", None, f"preempted by the stop at journal index {self._stopped_at}"
                )
            if not self.ready:
                raise NotLeading(self._why_not())
            if command.action is Action.MOVE:
                return await self._run_stream(command, duration_s or 0.0, index, epoch)
            if command.action in POSTURE_GOALS:
                return await self._reach_posture(command, index, epoch)
            return await self._once(command, index)

    async def _run_stream(
        self, command: Command, duration_s: float, index: int, epoch: int
    ) -> Outcome:
        stream = asyncio.ensure_future(self._move(command, duration_s, index, epoch))
        self._stream = stream
        try:
            await asyncio.wait([stream])
        finally:
            self._stream = None
            if not stream.done():  # our caller was cancelled: the motion must not go on
                stream.cancel()
        if stream.cancelled():
            return Outcome("stopped", None, "motion stopped")
        return stream.result()

    async def _once(self, command: Command, index: int) -> Outcome:
        try:
            token = await self._send(command, index)
        except RobotError as exc:
            return Outcome("failed", None, str(exc))
        return Outcome("done", token)

    async def _reach_posture(self, command: Command, index: int, epoch: int) -> Outcome:
        """The calls `posture_plan` lists from the robot's mode now, each after the robot got
        where the last one leads; a refusal or a stop ends it. A route other than the command
        alone is named in the outcome's detail."""
        mode = await self._mode_or_none()
        plan = posture_plan(command.action, mode)
        first: FencingToken | None = None
        for position, step in enumerate(plan):
            if position and not await self._settled(_ahead(plan[position - 1 :]), epoch):
                return Outcome("stopped", first, f"preempted by stop before {step.value}")
            try:
                token = await self._send(Command(step), index)
            except RobotError as exc:
                return Outcome("failed", first, f"{step.value} (from {_name(mode)}): {exc}")
            first = first or token
        if plan == _DIRECT.get(command.action, (command.action,)):
            return Outcome("done", first)
        return Outcome("done", first, f"from {_name(mode)}: {', '.join(a.value for a in plan)}")

    async def _settled(self, modes: frozenset[Mode], epoch: int) -> bool:
        """Wait (polling at the stream rate) until the robot reports one of `modes`, reports
        none, or `posture_settle_s` passed; False at once if a stop came meanwhile."""
        deadline = self._now() + self._posture_settle_s
        while epoch == self._epoch:
            mode = await self._mode_or_none()
            if mode is None or mode in modes or self._now() >= deadline:
                return True
            await self._sleep(self._period_s)
        return False

    async def _mode_or_none(self) -> Mode | None:
        """The robot's mode now, or None if it has reported none (then the command goes as is)."""
        try:
            return (await self._robot.state()).mode
        except RobotError:
            return None

    async def _move(self, command: Command, duration_s: float, index: int, epoch: int) -> Outcome:
        end = self._now() + duration_s
        sent = 0
        first: FencingToken | None = None
        try:
            while self._now() < end:
                if epoch != self._epoch:  # a stop, even if its cancellation got lost
                    return Outcome("stopped", first, "motion stopped", sent)
                token = await self._send(command, index)
                first = first or token
                sent += 1
                await self._sleep(min(self._period_s, max(0.0, end - self._now())))
            await self._send(Command(Action.STOP_MOVE), index)
        except NotLeading as exc:
            return Outcome("stopped", first, f"lease lost: {exc.reason}", sent)
        except RobotError as exc:
            return Outcome("failed", first, str(exc), sent)
        return Outcome("done", first, moves_sent=sent)

    async def _send(self, command: Command, index: int) -> FencingToken:
        """The only place a command leaves for the robot."""
        for attempt in range(_SEND_ATTEMPTS):
            now = self._now()
            if not self._lease.lease_valid(now + self._send_margin_s):
                raise NotLeading(
                    "this node holds no valid lease (or it ends before a call arrives)"
                )
            token = FencingToken(self._lease.term, index, self._node_id)
            try:
                await self._robot.execute(command, token, lease_expiry_s=self._lease.lease_expiry)
            except RobotError as exc:
                if exc.seen_term is not None:  # fenced: the robot follows a newer term
                    self.robot_term = max(self.robot_term or 0, exc.seen_term)
                # Held (behind the robot's other calls) past the lease it was sent under, and
                # never sent: the lease may have been renewed meanwhile; judge it again.
                if exc.not_sent and attempt + 1 < _SEND_ATTEMPTS:
                    continue
                raise
            return token
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _why_not(self) -> str:
        if not self._lease.lease_valid(self._now()):
            return "not the primary (no valid lease)"
        return "taking over: the robot is not in its safe state yet"


def _ahead(calls: tuple[Action, ...]) -> frozenset[Mode]:
    """The modes that show the first of `calls` took effect: where it leads, or further on (a
    robot may chain calls itself)."""
    return frozenset(_LEADS_TO[call] for call in calls)


def _name(mode: Mode | None) -> str:
    return "an unknown mode" if mode is None else mode.name.lower()
