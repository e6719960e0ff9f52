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
- `stop()` preempts: the stream and every command still waiting for its turn are cancelled.
- After `take_over()` — STOP_MOVE, then BALANCE_STAND if the robot stands — and only then,
  commands are accepted; stepping down (`halt`) closes the gate again.
- STAND_UP is followed by BALANCE_STAND on every backend, so that the robot can walk after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

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

__all__ = ["Guard", "LeaseView", "NotLeading", "Outcome"]

log = logging.getLogger(__name__)

# Unitree: Move must be repeated at 10-20 Hz or the robot stops after ~1-2 s (DESIGN.md).
DEFAULT_STREAM_HZ = 15.0
DEFAULT_SEND_MARGIN_S = 0.025
_STANDING = frozenset({Mode.BALANCE_STAND, Mode.LOCOMOTION, Mode.JOINT_LOCK, Mode.POSE})


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
        now: Callable[[], float] = clock.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._robot = robot
        self._lease = lease
        self._node_id = node_id
        self._period_s = 1.0 / stream_hz
        self._send_margin_s = send_margin_s
        self._now = now
        self._sleep = sleep
        self._turn = asyncio.Lock()
        self._ready_term: int | None = None
        self._epoch = 0  # bumped by stop() and halt(): commands of an older epoch are dropped
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
        """Preempt whatever runs or waits, then STOP_MOVE; NotLeading if we may not command."""
        self._epoch += 1
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
            if not self.ready:
                raise NotLeading(self._why_not())
            if command.action is Action.MOVE:
                return await self._run_stream(command, duration_s or 0.0, index)
            outcome = await self._once(command, index)
            if command.action is Action.STAND_UP and outcome.status == "done":
                await self._once(Command(Action.BALANCE_STAND), index)
            return outcome

    async def _run_stream(self, command: Command, duration_s: float, index: int) -> Outcome:
        stream = asyncio.ensure_future(self._move(command, duration_s, index))
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

    async def _move(self, command: Command, duration_s: float, index: int) -> Outcome:
        end = self._now() + duration_s
        sent = 0
        first: FencingToken | None = None
        try:
            while self._now() < end:
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
        now = self._now()
        if not self._lease.lease_valid(now + self._send_margin_s):
            raise NotLeading("this node holds no valid lease (or it ends before a call arrives)")
        token = FencingToken(self._lease.term, index, self._node_id)
        await self._robot.execute(command, token, lease_expiry_s=self._lease.lease_expiry)
        return token

    def _why_not(self) -> str:
        if not self._lease.lease_valid(self._now()):
            return "not the primary (no valid lease)"
        return "taking over: the robot is not in its safe state yet"
