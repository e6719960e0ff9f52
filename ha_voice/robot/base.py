"""What every robot backend offers, and the Go2 facts the rest of ha-voice builds on.

Invariants:
- One `Action` per Go2 sport-API call ha-voice uses, each with its API id and whether repeating
  it is harmless (`idempotent`: postures and stops) or not (moves and tricks): a command whose
  outcome is unknown after a failover may be re-executed only if its action is idempotent.
- `MOVE` is one velocity set-point; the robot walks only ~1–2 s on it. Walking for a duration is
  a stream of `MOVE` at 10–20 Hz followed by `STOP_MOVE`, which is the guard's job, not a
  backend's.
- Every call carries a `FencingToken` (term, journal index, node): backends that can check it
  (the simulator) refuse a token older than one they have already accepted.
- Backends raise `RobotError` with the SDK's numeric codes, and nothing else, for robot faults.

Sources: unitree_sdk2py `go2/sport/sport_api.py` (API ids), Unitree's sport-mode docs
(modes of `rt/sportmodestate`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from ha_voice.errors import RemoteError

__all__ = [
    "ACTIONS",
    "Action",
    "ActionSpec",
    "Command",
    "ErrorCode",
    "FencingToken",
    "Mode",
    "Robot",
    "RobotError",
    "RobotState",
]


class Action(enum.Enum):
    """The robot actions ha-voice can ask for."""

    DAMP = "damp"
    BALANCE_STAND = "balance_stand"
    STOP_MOVE = "stop_move"
    STAND_UP = "stand_up"
    STAND_DOWN = "stand_down"  # lie down
    RECOVERY_STAND = "recovery_stand"
    SIT = "sit"
    RISE_SIT = "rise_sit"
    MOVE = "move"
    HELLO = "hello"
    STRETCH = "stretch"
    DANCE1 = "dance1"
    DANCE2 = "dance2"
    SPEED_LEVEL = "speed_level"


@dataclass(frozen=True)
class ActionSpec:
    """How an action maps to the Go2 and how it may be retried."""

    action: Action
    api_id: int
    idempotent: bool
    # Parameters the action takes, with their bounds (inclusive).
    params: Mapping[str, tuple[float, float]] = field(default_factory=dict)


# Velocity bounds are the Go2's sport-mode limits (m/s, rad/s); speed levels -1, 0, 1.
ACTIONS: Final[dict[Action, ActionSpec]] = {
    spec.action: spec
    for spec in (
        ActionSpec(Action.DAMP, 1001, idempotent=True),
        ActionSpec(Action.BALANCE_STAND, 1002, idempotent=True),
        ActionSpec(Action.STOP_MOVE, 1003, idempotent=True),
        ActionSpec(Action.STAND_UP, 1004, idempotent=True),
        ActionSpec(Action.STAND_DOWN, 1005, idempotent=True),
        ActionSpec(Action.RECOVERY_STAND, 1006, idempotent=True),
        ActionSpec(
            Action.MOVE,
            1008,
            idempotent=False,
            params={"vx": (-2.5, 3.8), "vy": (-1.0, 1.0), "vyaw": (-4.0, 4.0)},
        ),
        ActionSpec(Action.SIT, 1009, idempotent=True),
        ActionSpec(Action.RISE_SIT, 1010, idempotent=True),
        ActionSpec(Action.SPEED_LEVEL, 1015, idempotent=True, params={"level": (-1, 1)}),
        ActionSpec(Action.HELLO, 1016, idempotent=False),
        ActionSpec(Action.STRETCH, 1017, idempotent=False),
        ActionSpec(Action.DANCE1, 1022, idempotent=False),
        ActionSpec(Action.DANCE2, 1023, idempotent=False),
    )
}


class Mode(enum.IntEnum):
    """`mode` of `rt/sportmodestate` (the values ha-voice reads)."""

    IDLE = 0
    BALANCE_STAND = 1
    POSE = 2  # from the handheld controller
    LOCOMOTION = 3
    LIE_DOWN = 5
    JOINT_LOCK = 6  # after StandUp, before BalanceStand: standing but cannot walk
    DAMPING = 7
    RECOVERY_STAND = 8
    SIT = 10
    FRONT_FLIP = 11
    FRONT_JUMP = 12
    FRONT_POUNCE = 13


class ErrorCode(enum.IntEnum):
    """The SDK's client error codes, and the robot's 'not in this mode'."""

    SEND_FAILED = 3102
    TIMEOUT = 3104
    NOT_AVAILABLE_IN_MODE = 3203
    # ha-voice's own, in a range the SDK does not use:
    FENCED = 4001  # the fencing token is older than one already seen
    BAD_PARAMETER = 4002
    NOT_CONNECTED = 4003


class RobotError(RemoteError):
    """The robot refused or did not answer; `code` is an `ErrorCode` value. A FENCED refusal
    carries `seen_term`, the newest term the robot has accepted, when the backend knows it;
    `not_sent` says that nothing of the call left this process (the lease it was sent under
    ended while it waited), so it may be sent again under a lease that is valid now."""

    def __init__(
        self,
        code: int,
        detail: str = "",
        *,
        seen_term: int | None = None,
        not_sent: bool = False,
    ) -> None:
        name = ErrorCode(code).name.lower() if code in ErrorCode._value2member_map_ else "error"
        super().__init__(name, f"{code}: {detail}" if detail else str(code))
        self.code = code
        self.seen_term = seen_term
        self.not_sent = not_sent


@dataclass(frozen=True, order=True)
class FencingToken:
    """(term, journal index) of the command, and who sent it; ordered by term then index."""

    term: int
    index: int
    node: str = field(compare=False)


@dataclass(frozen=True)
class Command:
    """One backend call: an action and its parameters."""

    action: Action
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = ACTIONS[self.action]
        unknown = set(self.params) - set(spec.params)
        if unknown:
            raise RobotError(ErrorCode.BAD_PARAMETER, f"{self.action.value} takes no {unknown}")
        for name, (low, high) in spec.params.items():
            value = self.params.get(name, 0.0)
            if not low <= value <= high:
                raise RobotError(
                    ErrorCode.BAD_PARAMETER,
                    f"{self.action.value} {name}={value} outside {low}..{high}",
                )

    @property
    def idempotent(self) -> bool:
        return ACTIONS[self.action].idempotent


@dataclass(frozen=True)
class RobotState:
    """What `rt/sportmodestate` (or the simulator) says about the robot."""

    mode: Mode
    body_height_m: float
    velocity: tuple[float, float, float]
    position: tuple[float, float, float]


class Robot(Protocol):
    """A robot backend: the real Go2 (`go2.py`), the simulator (`sim.py`), or none."""

    async def connect(self) -> None:
        """Open the channel; raises RobotError(NOT_CONNECTED) with the reason if it cannot."""

    async def execute(
        self, command: Command, token: FencingToken, *, lease_expiry_s: float | None = None
    ) -> None:
        """Make one SDK call under `token`; returns when the robot accepted it, else raises.

        `lease_expiry_s` is the sender's lease end on its monotonic clock: the simulator uses it
        to prove that no command arrives after its sender's lease (on one host only).
        """

    async def state(self) -> RobotState:
        """The latest state the robot reported; raises RobotError if none is known."""

    async def reachable(self) -> bool:
        """Whether the robot answers now (a cheap probe; never raises)."""

    async def close(self) -> None:
        """Release the channel; further calls raise RobotError(NOT_CONNECTED)."""
