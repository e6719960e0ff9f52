"""A simulated Go2: its posture rules, its Move watchdog, fencing, and a journal that can be judged.

Invariants:
- The posture changes only through `TRANSITIONS`: an action is legal exactly in the modes listed
  for it and leads to the mode listed there. Anything else raises
  RobotError(NOT_AVAILABLE_IN_MODE) — the Go2's 3203 — and changes nothing but the journal.
- The robot moves only in LOCOMOTION, which only `MOVE` enters, and LOCOMOTION ends by itself
  `move_timeout_s` after the last accepted `MOVE` (the watchdog). Time is read lazily from the
  injected `now` at every call, never by a background task, so the stop happens at the instant
  it was due even when nobody looks until later, and a test can step time by hand.
- Fencing: with `enforce_fencing` (the default) a token whose term is lower than the highest term
  the robot has seen is refused with FENCED. "Seen" includes commands refused for their mode:
  their token still proves a newer term exists. Without fencing the simulator behaves like the
  real Go2, whose firmware checks no token: then only `check()` catches a deposed primary.
- Every command that reaches the robot is journaled, accepted or refused, in arrival order, with
  its arrival time on the injected clock. A command sent while the robot is unreachable never
  arrives and is not journaled. A watchdog stop is journaled as the robot's own event, stamped
  with the instant it happened.
- `check_journal` is a pure function of a journal; `SimGo2.check()` applies it to this one.

Sources: docs/design.md "The Go2" (postures, Move watchdog, error codes) and "The replicated
journal and exactly-once commands"
(posture commands may be retried, so a repeated posture command is accepted as a no-op);
unitree_sdk2py `go2/sport/sport_client.py` (the calls); Unitree's sport-service notes (StandUp
and StandDown lock the joints, BalanceStand unlocks them, RecoveryStand ends in balance stand).
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final, NamedTuple

from ha_voice.clock import monotonic
from ha_voice.robot.base import (
    Action,
    Command,
    ErrorCode,
    FencingToken,
    Mode,
    RobotError,
    RobotState,
)

__all__ = [
    "BODY_HEIGHT_M",
    "DEFAULT_MOVE_TIMEOUT_S",
    "POSTURES",
    "TRANSITIONS",
    "EntryKind",
    "JournalEntry",
    "SimGo2",
    "Verdict",
    "Violation",
    "ViolationKind",
    "check_journal",
    "entry_from_json",
    "entry_to_json",
    "state_from_json",
    "state_to_json",
    "verdict_from_json",
    "verdict_to_json",
]

# docs/design.md "The Go2": "the robot walks only about 1–2 s per call"; 1 s is the
# conservative end.
DEFAULT_MOVE_TIMEOUT_S: Final = 1.0

_LIE, _DAMP, _LOCK = Mode.LIE_DOWN, Mode.DAMPING, Mode.JOINT_LOCK
_BALANCE, _WALK, _SIT = Mode.BALANCE_STAND, Mode.LOCOMOTION, Mode.SIT

# The modes the simulator can be in; it starts lying down, as a Go2 does after power-on.
POSTURES: Final = (_LIE, _DAMP, _LOCK, _BALANCE, _WALK, _SIT)


def _to(target: Mode, *sources: Mode) -> dict[Mode, Mode]:
    return dict.fromkeys(sources, target)


def _stay(*modes: Mode) -> dict[Mode, Mode]:
    return {mode: mode for mode in modes}


# Action -> {mode it is legal in: mode it leads to}. A posture command repeated in the posture it
# leads to is a legal no-op: a new primary may retry it (docs/design.md, "The replicated
# journal and exactly-once commands").
TRANSITIONS: Final[Mapping[Action, Mapping[Mode, Mode]]] = {
    # Damp cuts the motors wherever the robot is: the emergency posture.
    Action.DAMP: _to(_DAMP, *POSTURES),
    # StandUp lifts a lying robot into a joint-locked stand, from which it cannot walk; on a
    # balancing robot it locks the joints again.
    Action.STAND_UP: _to(_LOCK, _LIE, _DAMP, _LOCK, _BALANCE),
    # RecoveryStand gets a fallen or lying robot up into a balanced stand.
    Action.RECOVERY_STAND: _to(_BALANCE, _LIE, _DAMP, _BALANCE),
    # BalanceStand unlocks the joints: only after it will the robot walk. While walking it halts.
    Action.BALANCE_STAND: _to(_BALANCE, _LOCK, _BALANCE, _WALK),
    # Move walks, but never while lying, sitting or joint-locked (docs/design.md "The Go2").
    Action.MOVE: _to(_WALK, _BALANCE, _WALK),
    # StopMove is always accepted and only ever ends walking: the safe command for a takeover.
    Action.STOP_MOVE: {**_stay(*POSTURES), _WALK: _BALANCE},
    # Sit only from a balanced stand, and RiseSit only back from sitting.
    Action.SIT: _to(_SIT, _BALANCE, _SIT),
    Action.RISE_SIT: _to(_BALANCE, _SIT, _BALANCE),
    # StandDown lies a standing robot down ("ga liggen"); not while walking or sitting.
    Action.STAND_DOWN: _to(_LIE, _LOCK, _BALANCE, _LIE),
    Action.SPEED_LEVEL: _stay(_BALANCE, _WALK),
    # Tricks run from a balanced stand and end in it.
    Action.HELLO: _stay(_BALANCE),
    Action.STRETCH: _stay(_BALANCE),
    Action.DANCE1: _stay(_BALANCE),
    Action.DANCE2: _stay(_BALANCE),
}

# Approximate body heights: the Go2 stands at its nominal 0.32 m, sits on its haunches, and lies
# (or collapses when damped) on its belly.
BODY_HEIGHT_M: Final[Mapping[Mode, float]] = {
    _LIE: 0.08,
    _DAMP: 0.08,
    _LOCK: 0.32,
    _BALANCE: 0.32,
    _WALK: 0.32,
    _SIT: 0.20,
}


class EntryKind(enum.Enum):
    """What a journal entry records: a command that arrived, or the robot stopping by itself."""

    COMMAND = "command"
    WATCHDOG_STOP = "watchdog_stop"


@dataclass(frozen=True)
class JournalEntry:
    """One command as it reached the robot (token set), or one thing the robot did by itself."""

    kind: EntryKind
    arrival_s: float
    action: Action
    params: Mapping[str, float] = field(default_factory=dict)
    token: FencingToken | None = None
    accepted: bool = True
    code: int | None = None
    # The sender's own claim: its lease runs out at this monotonic time.
    lease_expiry_s: float | None = None
    # For an accepted MOVE: until when it drove the robot; None while it still does.
    drives_until_s: float | None = None

    @property
    def node(self) -> str | None:
        """The sender, or None for the robot's own events."""
        return None if self.token is None else self.token.node


class ViolationKind(enum.Enum):
    """The ways a journal can show that the one-writer rule was broken."""

    OVERLAPPING_WRITERS = "overlapping_writers"
    STALE_TERM = "stale_term"
    AFTER_LEASE = "after_lease"


@dataclass(frozen=True)
class Violation:
    """One broken rule: the offending entry and the one it conflicts with (journal positions)."""

    kind: ViolationKind
    entry: int
    other: int | None
    detail: str


@dataclass(frozen=True)
class Verdict:
    """What `check_journal` found, with the counts that show it looked at something."""

    violations: tuple[Violation, ...]
    commands: int
    accepted: int
    fenced: int
    watchdog_stops: int
    senders: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def of_kind(self, kind: ViolationKind) -> tuple[Violation, ...]:
        """The violations of one kind, in journal order."""
        return tuple(v for v in self.violations if v.kind is kind)


class _Pose(NamedTuple):
    x_m: float
    y_m: float
    heading_rad: float


_STILL: Final = (0.0, 0.0, 0.0)


def _drive(pose: _Pose, twist: tuple[float, float, float], dt_s: float) -> _Pose:
    """The pose after `dt_s` at a constant body-frame twist (vx, vy, vyaw), integrated exactly."""
    vx, vy, vyaw = twist
    start = pose.heading_rad
    if abs(vyaw) < 1e-9:  # straight on; the arc formula would divide by ~0
        cos, sin = math.cos(start), math.sin(start)
        dx_m, dy_m = (vx * cos - vy * sin) * dt_s, (vx * sin + vy * cos) * dt_s
        return _Pose(pose.x_m + dx_m, pose.y_m + dy_m, start)
    end = start + vyaw * dt_s
    # Integrals of the body-to-world rotation over a constant turn rate.
    d_sin, d_cos = math.sin(end) - math.sin(start), math.cos(end) - math.cos(start)
    return _Pose(
        pose.x_m + (vx * d_sin + vy * d_cos) / vyaw,
        pose.y_m + (vy * d_sin - vx * d_cos) / vyaw,
        end,
    )


async def _maybe_sleep(delay_s: float) -> None:
    """Sleep `delay_s` on the event loop; not at all for 0, so unit tests never sleep."""
    if delay_s > 0:
        await asyncio.sleep(delay_s)


class SimGo2:
    """The simulated Go2, in process; implements `Robot` (execute also takes a lease claim)."""

    def __init__(
        self,
        *,
        now: Callable[[], float] = monotonic,
        move_timeout_s: float = DEFAULT_MOVE_TIMEOUT_S,
        latency_s: float = 0.002,
        timeout_s: float = 0.05,
        enforce_fencing: bool = True,
    ) -> None:
        self._now = now
        self._move_timeout_s = move_timeout_s
        self._latency_s = latency_s
        self._timeout_s = timeout_s
        self._enforce_fencing = enforce_fencing
        self._mode = Mode.LIE_DOWN
        self._twist = _STILL
        self._pose = _Pose(0.0, 0.0, 0.0)
        self._pose_at_s = now()
        self._last_move_s: float | None = None
        self._highest_term: int | None = None
        self._journal: list[JournalEntry] = []
        self._connected = False
        self._reachable = True

    async def connect(self) -> None:
        """Open the channel; the simulator is always there to connect to."""
        self._connected = True

    async def close(self) -> None:
        """Close the channel; further calls raise RobotError(NOT_CONNECTED)."""
        self._connected = False

    async def execute(
        self, command: Command, token: FencingToken, *, lease_expiry_s: float | None = None
    ) -> None:
        """Deliver one command under `token`; raises RobotError if the robot refuses it."""
        await self._arrive()
        self._receive(command, token, lease_expiry_s)

    async def state(self) -> RobotState:
        """The robot's state now, as `rt/sportmodestate` would report it."""
        await self._arrive()
        self._advance(self._now())
        return self._snapshot()

    async def reachable(self) -> bool:
        """Whether the channel is open and the robot answers; never raises."""
        return self._connected and self._reachable

    def set_reachable(self, reachable: bool) -> None:
        """Simulate the robot (or the link to it) going away and coming back."""
        self._reachable = reachable

    def journal(self) -> tuple[JournalEntry, ...]:
        """Every entry so far, MOVEs with their driving intervals, up to the present."""
        self._advance(self._now())
        return _with_driving_intervals(self._journal)

    def check(self) -> Verdict:
        """The verdict on the journal so far (see `check_journal`)."""
        return check_journal(self.journal())

    async def _arrive(self) -> None:
        """The trip to the robot: NOT_CONNECTED, TIMEOUT after `timeout_s`, or the latency."""
        if not self._connected:
            raise RobotError(ErrorCode.NOT_CONNECTED, "the simulated Go2 is not connected")
        if not self._reachable:
            await _maybe_sleep(self._timeout_s)
            raise RobotError(ErrorCode.TIMEOUT, "the simulated Go2 does not answer")
        await _maybe_sleep(self._latency_s)

    def _receive(self, command: Command, token: FencingToken, lease_expiry_s: float | None) -> None:
        """Journal the command that just arrived, then apply it or raise the refusal."""
        now = self._now()
        self._advance(now)
        refusal = self._refusal(command, token)
        self._journal.append(
            JournalEntry(
                EntryKind.COMMAND,
                now,
                command.action,
                dict(command.params),
                token,
                accepted=refusal is None,
                code=None if refusal is None else refusal.code,
                lease_expiry_s=lease_expiry_s,
            )
        )
        if self._highest_term is None or token.term > self._highest_term:
            self._highest_term = token.term
        if refusal is not None:
            raise refusal
        self._apply(command, now)

    def _refusal(self, command: Command, token: FencingToken) -> RobotError | None:
        """Why the robot refuses `command` now, fencing first; None if it accepts it."""
        highest = self._highest_term
        if self._enforce_fencing and highest is not None and token.term < highest:
            return RobotError(
                ErrorCode.FENCED,
                f"term {token.term} < term {highest} already seen",
                seen_term=highest,
            )
        if self._mode not in TRANSITIONS[command.action]:
            return RobotError(
                ErrorCode.NOT_AVAILABLE_IN_MODE,
                f"{command.action.value} is not available in mode {self._mode.name}",
            )
        return None

    def _apply(self, command: Command, now: float) -> None:
        """Move to the posture the table says; MOVE sets the velocity and feeds the watchdog."""
        self._mode = TRANSITIONS[command.action][self._mode]
        if command.action is Action.MOVE:
            params = command.params
            self._twist = (params.get("vx", 0.0), params.get("vy", 0.0), params.get("vyaw", 0.0))
            self._last_move_s = now
        elif self._mode is not Mode.LOCOMOTION:
            self._halt()

    def _advance(self, now: float) -> None:
        """Bring the simulation up to `now`: walk, and stop at the watchdog's instant if due."""
        if self._last_move_s is not None:
            due_s = self._last_move_s + self._move_timeout_s
            if due_s <= now:
                self._integrate_to(due_s)
                self._halt()
                self._mode = Mode.BALANCE_STAND
                self._journal.append(JournalEntry(EntryKind.WATCHDOG_STOP, due_s, Action.STOP_MOVE))
        self._integrate_to(now)

    def _halt(self) -> None:
        self._twist = _STILL
        self._last_move_s = None

    def _integrate_to(self, when_s: float) -> None:
        if when_s > self._pose_at_s:
            self._pose = _drive(self._pose, self._twist, when_s - self._pose_at_s)
            self._pose_at_s = when_s

    def _snapshot(self) -> RobotState:
        vx, vy, _ = self._twist
        cos, sin = math.cos(self._pose.heading_rad), math.sin(self._pose.heading_rad)
        height_m = BODY_HEIGHT_M[self._mode]
        # rt/sportmodestate reports velocity and position in the world frame.
        return RobotState(
            mode=self._mode,
            body_height_m=height_m,
            velocity=(vx * cos - vy * sin, vx * sin + vy * cos, 0.0),
            position=(self._pose.x_m, self._pose.y_m, height_m),
        )


def _with_driving_intervals(journal: Sequence[JournalEntry]) -> tuple[JournalEntry, ...]:
    """The journal with each accepted MOVE ending at the next accepted entry (command or stop)."""
    result = list(journal)
    next_change_s: float | None = None
    for position in reversed(range(len(result))):
        entry = result[position]
        if entry.kind is EntryKind.COMMAND and entry.action is Action.MOVE and entry.accepted:
            result[position] = replace(entry, drives_until_s=next_change_s)
        if entry.accepted:
            next_change_s = entry.arrival_s
    return tuple(result)


_Sent = tuple[int, JournalEntry, FencingToken]


def check_journal(journal: Sequence[JournalEntry]) -> Verdict:
    """Judge a journal against the one-writer rules; positions refer to `journal`.

    (a) OVERLAPPING_WRITERS. Among accepted commands in arrival order, let node A send r, and
        let A's previous accepted command be p. If some other node B had an accepted command s
        between p and r with s.term >= r.term, then A resumed driving after B had started, without
        a newer term than B's: both drove the robot over [s, r]. If instead r.term > s.term, A
        won an election after B's term, which deposed B: one writer after the other. Refused
        commands drove nothing and do not count here; (c) is what catches a late one.
    (b) STALE_TERM. An accepted command whose term is lower than that of any earlier command:
        fencing let a deposed primary through.
    (c) AFTER_LEASE. Any command, accepted or not, that arrived after the lease expiry its sender
        claimed. Arrival and expiry are both monotonic seconds, which compare only when sender
        and robot share a host (one CLOCK_MONOTONIC): across hosts this check means nothing.
    """
    sent = [(i, e, e.token) for i, e in enumerate(journal) if e.token is not None]
    violations = sorted(
        [*_overlapping_writers(sent), *_stale_terms(sent), *_after_lease(sent)],
        key=lambda violation: (violation.entry, violation.kind.value),
    )
    accepted = [token for _, entry, token in sent if entry.accepted]
    return Verdict(
        violations=tuple(violations),
        commands=len(sent),
        accepted=len(accepted),
        fenced=sum(entry.code == ErrorCode.FENCED for _, entry, _ in sent),
        watchdog_stops=sum(entry.kind is EntryKind.WATCHDOG_STOP for entry in journal),
        senders=tuple(sorted({token.node for _, _, token in sent})),
    )


def _overlapping_writers(sent: Sequence[_Sent]) -> Iterator[Violation]:
    accepted = [item for item in sent if item[1].accepted]
    previous: dict[str, int] = {}  # node -> index in `accepted` of its latest command
    for k, (position, _, token) in enumerate(accepted):
        since = previous.get(token.node)
        previous[token.node] = k
        if since is None:
            continue
        for other_position, _, other in accepted[since + 1 : k]:
            if other.node != token.node and other.term >= token.term:
                yield Violation(
                    ViolationKind.OVERLAPPING_WRITERS,
                    position,
                    other_position,
                    f"{token.node} (term {token.term}) sent again after {other.node} "
                    f"(term {other.term}) had taken over: both drove the robot",
                )
                break


def _stale_terms(sent: Sequence[_Sent]) -> Iterator[Violation]:
    highest: tuple[int, int] | None = None  # (term, position) of the newest term so far
    for position, entry, token in sent:
        if entry.accepted and highest is not None and token.term < highest[0]:
            yield Violation(
                ViolationKind.STALE_TERM,
                position,
                highest[1],
                f"{token.node} term {token.term} accepted after term {highest[0]}",
            )
        if highest is None or token.term > highest[0]:
            highest = (token.term, position)


def _after_lease(sent: Sequence[_Sent]) -> Iterator[Violation]:
    for position, entry, token in sent:
        expiry_s = entry.lease_expiry_s
        if expiry_s is not None and entry.arrival_s > expiry_s:
            yield Violation(
                ViolationKind.AFTER_LEASE,
                position,
                None,
                f"{token.node} (term {token.term}) sent {entry.action.value} "
                f"{entry.arrival_s - expiry_s:.3f} s after its lease ran out",
            )


# JSON forms, for the wire (sim_server.py) and for keeping a journal as a test artefact.


def state_to_json(state: RobotState) -> dict[str, Any]:
    """The JSON object for a state (`mode_name` for people; readers use `mode`)."""
    return {
        "mode": int(state.mode),
        "mode_name": state.mode.name,
        "body_height_m": state.body_height_m,
        "velocity": list(state.velocity),
        "position": list(state.position),
    }


def state_from_json(data: Mapping[str, Any]) -> RobotState:
    """The state `state_to_json` wrote; KeyError, TypeError or ValueError if malformed."""
    vx, vy, vz = (float(v) for v in data["velocity"])
    x, y, z = (float(p) for p in data["position"])
    return RobotState(Mode(data["mode"]), float(data["body_height_m"]), (vx, vy, vz), (x, y, z))


def entry_to_json(entry: JournalEntry) -> dict[str, Any]:
    """The JSON object for a journal entry; node, term and index are null for robot events."""
    token = entry.token
    return {
        "kind": entry.kind.value,
        "arrival_s": entry.arrival_s,
        "action": entry.action.value,
        "params": dict(entry.params),
        "node": None if token is None else token.node,
        "term": None if token is None else token.term,
        "index": None if token is None else token.index,
        "accepted": entry.accepted,
        "code": entry.code,
        "lease_expiry_s": entry.lease_expiry_s,
        "drives_until_s": entry.drives_until_s,
    }


def entry_from_json(data: Mapping[str, Any]) -> JournalEntry:
    """The entry `entry_to_json` wrote; KeyError or ValueError if malformed."""
    node = data["node"]
    token = None if node is None else FencingToken(data["term"], data["index"], node)
    return JournalEntry(
        kind=EntryKind(data["kind"]),
        arrival_s=data["arrival_s"],
        action=Action(data["action"]),
        params=data["params"],
        token=token,
        accepted=data["accepted"],
        code=data["code"],
        lease_expiry_s=data["lease_expiry_s"],
        drives_until_s=data["drives_until_s"],
    )


def verdict_to_json(verdict: Verdict) -> dict[str, Any]:
    """The JSON object for a verdict, with `ok` spelled out."""
    return {
        **asdict(verdict),
        "ok": verdict.ok,
        "violations": [{**asdict(v), "kind": v.kind.value} for v in verdict.violations],
        "senders": list(verdict.senders),
    }


def verdict_from_json(data: Mapping[str, Any]) -> Verdict:
    """The verdict `verdict_to_json` wrote; KeyError or ValueError if malformed."""
    violations = tuple(
        Violation(ViolationKind(v["kind"]), v["entry"], v["other"], v["detail"])
        for v in data["violations"]
    )
    return Verdict(
        violations=violations,
        commands=data["commands"],
        accepted=data["accepted"],
        fenced=data["fenced"],
        watchdog_stops=data["watchdog_stops"],
        senders=tuple(data["senders"]),
    )
