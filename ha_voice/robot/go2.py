"""The real Go2 through Unitree's unitree_sdk2py (sport client and `rt/sportmodestate`).

Invariants:
- unitree_sdk2py is imported only by `load_sdk()`, which `connect()` calls: every other module,
  and this one, imports without it (a witness or an STT-only node never needs it). A missing
  SDK becomes `RobotError(NOT_CONNECTED)` whose message says how to install it.
- `ChannelFactoryInitialize` runs at most once per process, and only ever for one network
  interface: the SDK's `ChannelFactory` is a process-wide singleton holding one DDS participant.
- Every `Action` maps to exactly one `SportClient` method in `SDK_METHODS`, and its parameters
  are passed positionally in the order of `SDK_PARAMETERS`; nothing else decides which SDK call
  an action makes.
- Every call into the SDK runs in a worker thread (`asyncio.to_thread`), never on the event
  loop: a call blocks until the robot answers or the client's timeout expires.
- A return code other than 0 raises `RobotError` with that code; an exception inside the SDK
  raises `RobotError(SEND_FAILED)`. Nothing else escapes `execute`.
- One action, one SDK call, as in the simulator: sequences (BalanceStand after StandUp, RiseSit
  before a stand from sitting) are planned in one place, the guard (`guard.posture_plan`).
- The fencing token is NOT checked by the Go2 firmware (the sport API has no field for it): it
  is logged at debug only. What keeps a deposed primary off the robot is `guard.py`.
- The state is the newest `rt/sportmodestate` sample with its receipt time on the injected
  clock. Samples arrive on an SDK thread and replace one immutable record in a single
  assignment, so a reader sees either the old record or the new one. A sample older than
  `STATE_FRESH_S` counts as none. Malformed samples are dropped and counted, logged once at
  warning and then at debug; nothing raises into the SDK's thread.

Sources: unitree_sdk2py `go2/sport/sport_client.py` (method names and signatures),
`rpc/internal.py` (error codes), `core/channel.py` (ChannelFactory, ChannelSubscriber).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

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
    "DDS_DOMAIN_ID",
    "INSTALL_HINT",
    "SDK_METHODS",
    "SDK_PARAMETERS",
    "STATE_FRESH_S",
    "STATE_TOPIC",
    "Go2Robot",
    "Go2Sdk",
    "SportClientLike",
    "SportModeStateLike",
    "StateSubscription",
    "load_sdk",
    "sdk_arguments",
]

_LOGGER = logging.getLogger(__name__)

# The Go2 publishes on DDS domain 0; Unitree's examples all initialise that domain.
DDS_DOMAIN_ID: Final = 0
STATE_TOPIC: Final = "rt/sportmodestate"
# The Go2 publishes sport-mode state at hundreds of Hz, so one second of silence means the
# robot (or the link to it) is gone, not that a sample was merely late.
STATE_FRESH_S: Final = 1.0

# The only place an Action becomes an SDK call (sport API ids in base.ACTIONS).
SDK_METHODS: Final[dict[Action, str]] = {
    Action.DAMP: "Damp",
    Action.BALANCE_STAND: "BalanceStand",
    Action.STOP_MOVE: "StopMove",
    Action.STAND_UP: "StandUp",
    Action.STAND_DOWN: "StandDown",
    Action.RECOVERY_STAND: "RecoveryStand",
    Action.SIT: "Sit",
    Action.RISE_SIT: "RiseSit",
    Action.MOVE: "Move",
    Action.HELLO: "Hello",
    Action.STRETCH: "Stretch",
    Action.DANCE1: "Dance1",
    Action.DANCE2: "Dance2",
    Action.SPEED_LEVEL: "SpeedLevel",
}

# Positional arguments of the methods that take any, in the SDK's order, with the Python type
# the SDK serialises: SpeedLevel sends its level as a JSON integer, Move its velocities as floats.
SDK_PARAMETERS: Final[dict[Action, tuple[tuple[str, type[int] | type[float]], ...]]] = {
    Action.MOVE: (("vx", float), ("vy", float), ("vyaw", float)),
    Action.SPEED_LEVEL: (("level", int),),
}

_KNOWN_CODES: Final = frozenset(
    {ErrorCode.SEND_FAILED, ErrorCode.TIMEOUT, ErrorCode.NOT_AVAILABLE_IN_MODE}
)

INSTALL_HINT: Final = (
    "unitree_sdk2py is not on PyPI. On the Jetson, build cyclonedds 0.10.x from source, export "
    "CYCLONEDDS_HOME to its install prefix, then run "
    "`git clone https://github.com/unitreerobotics/unitree_sdk2_python && "
    "pip install -e ./unitree_sdk2_python` in this Python environment; docs/jetson-install.md "
    'has every step. Without a Go2, set robot = "sim".'
)


class SportClientLike(Protocol):
    """The part of `SportClient` set up here (the SDK's names); actions are looked up by name."""

    def SetTimeout(self, timeout: float) -> None:
        """Seconds each later call waits for the robot, first to be found, then to answer."""

    def Init(self) -> None:
        """Register the sport API ids; calls made before this return 3103."""


class SportModeStateLike(Protocol):
    """The fields of `SportModeState_` read here."""

    mode: int
    body_height: float
    velocity: Sequence[float]
    position: Sequence[float]


class StateSubscription(Protocol):
    """A live subscription; `Close` stops the handler calls."""

    def Close(self) -> None:
        """Stop delivering samples."""


class Go2Sdk(Protocol):
    """Everything this module needs from unitree_sdk2py; tests pass an in-memory fake."""

    def init_channel(self, domain_id: int, network_interface: str) -> None:
        """`ChannelFactoryInitialize(domain_id, network_interface)`; raises if it fails."""

    def make_client(self) -> SportClientLike:
        """A new `SportClient()`, not yet timed out or initialised."""

    def subscribe(
        self, topic: str, handler: Callable[[SportModeStateLike], None]
    ) -> StateSubscription:
        """Call `handler` on an SDK thread with each `SportModeState_` sample on `topic`."""


class _UnitreeSdk:
    """`Go2Sdk` on the real unitree_sdk2py classes that `load_sdk` imported."""

    def __init__(self, channel: Any, sport: Any, messages: Any) -> None:
        self._channel = channel
        self._sport = sport
        self._messages = messages

    def init_channel(self, domain_id: int, network_interface: str) -> None:
        self._channel.ChannelFactoryInitialize(domain_id, network_interface)

    def make_client(self) -> SportClientLike:
        client: SportClientLike = self._sport.SportClient()
        return client

    def subscribe(
        self, topic: str, handler: Callable[[SportModeStateLike], None]
    ) -> StateSubscription:
        subscriber = self._channel.ChannelSubscriber(topic, self._messages.SportModeState_)
        # Queue length 0: the handler runs on the DDS listener thread with the newest sample.
        # With a queue, the SDK's BQueue drops the *newest* sample when full, so state would lag.
        subscriber.Init(handler, 0)
        subscription: StateSubscription = subscriber
        return subscription


def load_sdk() -> Go2Sdk:
    """Import unitree_sdk2py now; raises RobotError(NOT_CONNECTED) saying how to install it."""
    try:
        channel = importlib.import_module("unitree_sdk2py.core.channel")
        sport = importlib.import_module("unitree_sdk2py.go2.sport.sport_client")
        messages = importlib.import_module("unitree_sdk2py.idl.unitree_go.msg.dds_")
    except ImportError as exc:
        raise RobotError(ErrorCode.NOT_CONNECTED, f"{exc}. {INSTALL_HINT}") from exc
    except Exception as exc:
        # cyclonedds raises its own exception when libddsc cannot be loaded; any failure
        # inside a third-party import must still end as one clear robot error.
        raise RobotError(
            ErrorCode.NOT_CONNECTED,
            f"unitree_sdk2py failed to import ({exc!r}); check CYCLONEDDS_HOME and "
            "docs/jetson-install.md",
        ) from exc
    return _UnitreeSdk(channel, sport, messages)


class _ChannelOnce:
    """`ChannelFactoryInitialize` at most once per process, for one network interface."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._interface: str | None = None

    def ensure(self, sdk: Go2Sdk, network_interface: str) -> None:
        """Initialise the SDK's channel for `network_interface` unless that is done already."""
        with self._lock:
            if self._interface == network_interface:
                return
            if self._interface is not None:
                raise RobotError(
                    ErrorCode.NOT_CONNECTED,
                    f"the Unitree SDK is already bound to {self._interface!r} in this process "
                    f"and cannot also use {network_interface!r}: its channel factory is one "
                    "DDS participant per process; use one network_interface per process",
                )
            _init_channel(sdk, network_interface)
            self._interface = network_interface


def _init_channel(sdk: Go2Sdk, network_interface: str) -> None:
    try:
        sdk.init_channel(DDS_DOMAIN_ID, network_interface)
    except Exception as exc:
        # The SDK raises a bare Exception("channel factory init error.") for a bad interface.
        raise RobotError(
            ErrorCode.NOT_CONNECTED,
            f"ChannelFactoryInitialize({DDS_DOMAIN_ID}, {network_interface!r}) failed: {exc}; "
            "is network_interface the one facing the robot (192.168.123.x)?",
        ) from exc


_CHANNEL = _ChannelOnce()


def sdk_arguments(command: Command) -> tuple[int | float, ...]:
    """The positional arguments of `command`'s SDK method; missing parameters are 0."""
    arguments: list[int | float] = []
    for name, kind in SDK_PARAMETERS.get(command.action, ()):
        value = command.params.get(name, 0.0)
        if kind is int and value != int(value):
            raise RobotError(
                ErrorCode.BAD_PARAMETER, f"{command.action.value} {name}={value} is not whole"
            )
        arguments.append(kind(value))
    return tuple(arguments)


def _check_code(method: str, code: object) -> None:
    """Raise the RobotError for an SDK return code; 0 is success."""
    if code == 0:
        return
    if not isinstance(code, int):
        raise RobotError(ErrorCode.SEND_FAILED, f"{method} returned {code!r}, not a code")
    if code in _KNOWN_CODES:
        raise RobotError(code, f"{method}: {ErrorCode(code).name.lower().replace('_', ' ')}")
    raise RobotError(code, f"{method}: unknown SDK error")


@dataclass(frozen=True)
class _Sample:
    """What the newest state message said, and when it arrived (clock seconds)."""

    received_at: float
    state: RobotState | None  # None: the robot reported a mode ha-voice does not know
    raw_mode: int


def _to_state(message: SportModeStateLike) -> tuple[RobotState | None, int]:
    """The RobotState a message carries (None for an unknown mode), and its raw mode."""
    raw_mode = int(message.mode)
    velocity = tuple(float(v) for v in message.velocity)
    position = tuple(float(p) for p in message.position)
    if len(velocity) != 3 or len(position) != 3:
        raise ValueError(f"velocity {velocity} or position {position} is not 3 floats")
    if raw_mode not in Mode._value2member_map_:
        return None, raw_mode
    state = RobotState(
        mode=Mode(raw_mode),
        body_height_m=float(message.body_height),
        velocity=(velocity[0], velocity[1], velocity[2]),
        position=(position[0], position[1], position[2]),
    )
    return state, raw_mode


class Go2Robot:
    """The `Robot` protocol on a real Go2 reached through `network_interface`."""

    def __init__(
        self,
        network_interface: str,
        *,
        timeout_s: float = 0.3,
        state_topic: str = STATE_TOPIC,
        sdk: Go2Sdk | None = None,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        """`sdk` None: import unitree_sdk2py at `connect()`; `clock` timestamps state samples."""
        # A write to an absent robot blocks its worker thread until the timeout (up to twice:
        # the request waits for a matched reader, then for the reply), and a thread cannot be
        # cancelled. A short timeout bounds how long a command can linger after the lease is
        # lost, and how long "robot gone" takes to surface; 0.3 s is far above the Go2's
        # wired reply time, which is a few milliseconds.
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        self._interface = network_interface
        self._timeout_s = timeout_s
        self._state_topic = state_topic
        self._sdk = sdk
        self._clock = clock
        self._client: SportClientLike | None = None
        self._subscription: StateSubscription | None = None
        self._sample: _Sample | None = None
        self._malformed = 0

    @property
    def malformed(self) -> int:
        """How many state messages were dropped as malformed."""
        return self._malformed

    async def connect(self) -> None:
        """Initialise the SDK channel, subscribe to state, and open the sport client."""
        if self._client is not None:
            return
        sdk = self._sdk if self._sdk is not None else load_sdk()
        self._sdk = sdk
        await asyncio.to_thread(self._connect_blocking, sdk)

    def _connect_blocking(self, sdk: Go2Sdk) -> None:
        _CHANNEL.ensure(sdk, self._interface)
        # Subscribe before the client exists, so a node mirrors the robot's posture even if
        # the client cannot be opened; a retried connect keeps the subscription it has.
        if self._subscription is None:
            self._subscription = self._subscribe(sdk)
        self._client = self._open_client(sdk)

    def _subscribe(self, sdk: Go2Sdk) -> StateSubscription:
        try:
            return sdk.subscribe(self._state_topic, self._on_state)
        except Exception as exc:
            detail = f"subscribing to {self._state_topic} failed: {exc!r}"
            raise RobotError(ErrorCode.NOT_CONNECTED, detail) from exc

    def _open_client(self, sdk: Go2Sdk) -> SportClientLike:
        try:
            client = sdk.make_client()
            client.SetTimeout(self._timeout_s)
            client.Init()
        except Exception as exc:
            raise RobotError(ErrorCode.NOT_CONNECTED, f"SportClient failed: {exc!r}") from exc
        return client

    async def execute(
        self, command: Command, token: FencingToken, *, lease_expiry_s: float | None = None
    ) -> None:
        """Make the SDK call for `command`; `token` is logged only (the Go2 cannot check it).

        The Go2 cannot refuse an old term, so the lease is all that keeps a deposed primary off
        the robot: the call is not made at or after `lease_expiry_s` (monotonic seconds), judged
        on the SDK's thread right before the call (the thread pool may have kept it waiting);
        RobotError TIMEOUT ("lease ended, not sent", `not_sent`) then.
        """
        client = self._require_client()
        _LOGGER.debug(
            "go2 %s %s under term %d index %d from %s (not checked by the Go2 firmware)",
            command.action.value,
            dict(command.params),
            token.term,
            token.index,
            token.node,
        )
        await asyncio.to_thread(self._call, client, command, lease_expiry_s)

    def _call(self, client: SportClientLike, command: Command, until: float | None = None) -> None:
        """One blocking SDK call, not made at or after monotonic `until`; raises RobotError for
        any failure."""
        method = SDK_METHODS[command.action]
        if until is not None and monotonic() >= until:
            raise RobotError(ErrorCode.TIMEOUT, f"{method}: lease ended, not sent", not_sent=True)
        arguments = sdk_arguments(command)
        try:
            code = getattr(client, method)(*arguments)
        except Exception as exc:
            raise RobotError(ErrorCode.SEND_FAILED, f"{method} raised {exc!r}") from exc
        _check_code(method, code)

    async def state(self) -> RobotState:
        """The newest state reported within `STATE_FRESH_S`; raises RobotError otherwise."""
        if self._subscription is None:
            raise RobotError(ErrorCode.NOT_CONNECTED, f"Go2 on {self._interface} not connected")
        sample = self._fresh_sample()
        if sample is None:
            raise RobotError(
                ErrorCode.TIMEOUT, f"no {self._state_topic} message in the last {STATE_FRESH_S} s"
            )
        if sample.state is None:
            raise RobotError(
                ErrorCode.NOT_AVAILABLE_IN_MODE,
                f"the robot reports sport mode {sample.raw_mode}, which ha-voice does not know",
            )
        return sample.state

    async def reachable(self) -> bool:
        """Whether a state message arrived within `STATE_FRESH_S`; never raises."""
        return self._subscription is not None and self._fresh_sample() is not None

    async def close(self) -> None:
        """Stop the state subscription and drop the client; later calls raise NOT_CONNECTED."""
        subscription, self._subscription = self._subscription, None
        self._client = None
        self._sample = None
        if subscription is not None:
            await asyncio.to_thread(subscription.Close)

    def _require_client(self) -> SportClientLike:
        if self._client is None:
            raise RobotError(ErrorCode.NOT_CONNECTED, f"Go2 on {self._interface} not connected")
        return self._client

    def _fresh_sample(self) -> _Sample | None:
        sample = self._sample
        if sample is None or self._clock() - sample.received_at > STATE_FRESH_S:
            return None
        return sample

    def _on_state(self, message: SportModeStateLike) -> None:
        """The SDK's handler, on its thread: keep the sample, or drop it if malformed."""
        try:
            state, raw_mode = _to_state(message)
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            self._drop(exc)
            return
        self._sample = _Sample(self._clock(), state, raw_mode)

    def _drop(self, exc: Exception) -> None:
        self._malformed += 1
        level = logging.WARNING if self._malformed == 1 else logging.DEBUG
        _LOGGER.log(level, "dropped a malformed %s message: %s", self._state_topic, exc)
