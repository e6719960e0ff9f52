"""The Go2 adapter against an in-memory fake of unitree_sdk2py: mapping, calls, codes, state."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from ha_voice import clock
from ha_voice.robot import go2
from ha_voice.robot.base import (
    ACTIONS,
    Action,
    Command,
    ErrorCode,
    FencingToken,
    Mode,
    RobotError,
    RobotState,
)
from ha_voice.robot.go2 import (
    SDK_METHODS,
    SDK_PARAMETERS,
    STATE_TOPIC,
    Go2Robot,
    SportModeStateLike,
    sdk_arguments,
)

# The Go2 sport API as unitree_sdk2py defines it (go2/sport/sport_api.py, sport_client.py):
# method name -> API id, and the method's parameters after self. Written out here, not derived
# from go2.py, so a wrong entry there cannot agree with itself.
SDK_API_IDS = {
    "Damp": 1001,
    "BalanceStand": 1002,
    "StopMove": 1003,
    "StandUp": 1004,
    "StandDown": 1005,
    "RecoveryStand": 1006,
    "Move": 1008,
    "Sit": 1009,
    "RiseSit": 1010,
    "SpeedLevel": 1015,
    "Hello": 1016,
    "Stretch": 1017,
    "Dance1": 1022,
    "Dance2": 1023,
}
SDK_SIGNATURES = {"Move": ("vx", "vy", "vyaw"), "SpeedLevel": ("level",)}

TOKEN = FencingToken(term=7, index=42, node="jetson-a")
PARAMS: dict[Action, dict[str, float]] = {
    Action.MOVE: {"vx": 0.5, "vy": -0.25, "vyaw": 1.0},
    Action.SPEED_LEVEL: {"level": 1},
}
EXPECTED_ARGS: dict[Action, tuple[object, ...]] = {
    Action.MOVE: (0.5, -0.25, 1.0),
    Action.SPEED_LEVEL: (1,),
}


@dataclass
class Call:
    method: str
    args: tuple[Any, ...]
    thread: int


class FakeClient:
    """A SportClient that records calls and answers each method with a set code."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.setup: list[tuple[Any, ...]] = []
        self.codes: dict[str, object] = {}
        self.raises: dict[str, Exception] = {}

    def SetTimeout(self, timeout: float) -> None:  # the SDK's name
        self.setup.append(("SetTimeout", timeout))

    def Init(self) -> None:  # the SDK's name
        self.setup.append(("Init",))

    def __getattr__(self, name: str) -> Callable[..., object]:
        if name not in SDK_API_IDS:
            raise AttributeError(name)

        def call(*args: Any) -> object:
            assert len(args) == len(SDK_SIGNATURES.get(name, ())), (name, args)
            self.calls.append(Call(name, args, threading.get_ident()))
            if name in self.raises:
                raise self.raises[name]
            return self.codes.get(name, 0)

        return call


@dataclass
class FakeSubscription:
    closed: bool = False

    def Close(self) -> None:  # the SDK's name
        self.closed = True


@dataclass
class FakeSdk:
    """Go2Sdk in memory: records channel inits, hands out one client, keeps the handlers."""

    client: FakeClient = field(default_factory=FakeClient)
    channel_inits: list[tuple[int, str]] = field(default_factory=list)
    subscriptions: list[tuple[str, Callable[[SportModeStateLike], None], FakeSubscription]] = field(
        default_factory=list
    )
    clients_made: int = 0
    fail_init_channel: bool = False
    fail_client: bool = False

    def init_channel(self, domain_id: int, network_interface: str) -> None:
        self.channel_inits.append((domain_id, network_interface))
        if self.fail_init_channel:
            raise Exception("channel factory init error.")  # what the SDK raises

    def make_client(self) -> FakeClient:
        self.clients_made += 1
        if self.fail_client:
            raise RuntimeError("no DDS writer")
        return self.client

    def subscribe(
        self, topic: str, handler: Callable[[SportModeStateLike], None]
    ) -> FakeSubscription:
        subscription = FakeSubscription()
        self.subscriptions.append((topic, handler, subscription))
        return subscription

    def publish(self, message: object) -> None:
        """Deliver `message` as the SDK's reader thread would, to every open subscription."""
        for _, handler, subscription in self.subscriptions:
            if not subscription.closed:
                handler(message)  # type: ignore[arg-type]


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class StateMessage:
    """The fields of SportModeState_ the adapter reads."""

    mode: int = int(Mode.BALANCE_STAND)
    body_height: float = 0.32
    velocity: Sequence[float] = (0.1, 0.0, 0.0)
    position: Sequence[float] = (1.0, 2.0, 0.0)


@pytest.fixture(autouse=True)
def fresh_process_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test is a fresh process as far as ChannelFactoryInitialize is concerned."""
    monkeypatch.setattr(go2, "_CHANNEL", go2._ChannelOnce())


@pytest.fixture
def sdk() -> FakeSdk:
    return FakeSdk()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def robot(sdk: FakeSdk, fake_clock: FakeClock) -> Iterator[Go2Robot]:
    robot = Go2Robot("eth0", sdk=sdk, clock=fake_clock)
    asyncio.run(robot.connect())
    yield robot
    asyncio.run(robot.close())


def run_execute(robot: Go2Robot, command: Command) -> int:
    """Execute on a fresh event loop; returns the loop's thread id."""

    async def main() -> int:
        await robot.execute(command, TOKEN)
        return threading.get_ident()

    return asyncio.run(main())


def expect_robot_error(code: int, call: Callable[[], object]) -> RobotError:
    with pytest.raises(RobotError) as caught:
        call()
    assert caught.value.code == code, caught.value
    return caught.value


# --- the mapping table -------------------------------------------------------------------------


def test_every_action_has_exactly_one_sdk_method() -> None:
    assert set(SDK_METHODS) == set(Action)
    assert len(set(SDK_METHODS.values())) == len(SDK_METHODS)


@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.value)
def test_method_api_id_agrees_with_actions(action: Action) -> None:
    assert SDK_API_IDS[SDK_METHODS[action]] == ACTIONS[action].api_id


@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.value)
def test_parameters_are_the_actions_in_the_sdks_order(action: Action) -> None:
    names = tuple(name for name, _ in SDK_PARAMETERS.get(action, ()))
    assert names == SDK_SIGNATURES.get(SDK_METHODS[action], ())
    assert set(names) == set(ACTIONS[action].params)


def test_arguments_take_the_sdks_types() -> None:
    move = sdk_arguments(Command(Action.MOVE, {"vx": 1}))
    assert move == (1.0, 0.0, 0.0)
    assert all(type(value) is float for value in move)
    level = sdk_arguments(Command(Action.SPEED_LEVEL, {"level": -1.0}))
    assert level == (-1,)
    assert type(level[0]) is int


def test_a_fractional_speed_level_is_refused() -> None:
    command = Command(Action.SPEED_LEVEL, {"level": 0.5})
    expect_robot_error(ErrorCode.BAD_PARAMETER, lambda: sdk_arguments(command))


# --- execute -----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.value)
def test_each_action_calls_its_method_off_the_loop(
    action: Action, robot: Go2Robot, sdk: FakeSdk
) -> None:
    loop_thread = run_execute(robot, Command(action, PARAMS.get(action, {})))
    first = sdk.client.calls[0]
    assert first.method == SDK_METHODS[action]
    assert first.args == EXPECTED_ARGS.get(action, ())
    assert [type(arg) for arg in first.args] == [type(arg) for arg in EXPECTED_ARGS.get(action, ())]
    assert all(call.thread != loop_thread for call in sdk.client.calls)
    # One call per action, as in the simulator: BalanceStand after StandUp is the guard's plan.
    assert len(sdk.client.calls) == 1


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (3102, "send failed"),
        (3104, "timeout"),
        (3203, "not available in mode"),
        (3103, "unknown SDK error"),
        (4201, "unknown SDK error"),
    ],
)
def test_return_codes_become_robot_errors(
    code: int, words: str, robot: Go2Robot, sdk: FakeSdk
) -> None:
    sdk.client.codes["Sit"] = code
    error = expect_robot_error(code, lambda: run_execute(robot, Command(Action.SIT)))
    assert words in str(error)
    assert "Sit" in str(error)


def test_an_sdk_exception_becomes_send_failed(robot: Go2Robot, sdk: FakeSdk) -> None:
    sdk.client.raises["Hello"] = RuntimeError("DDS writer gone")
    error = expect_robot_error(
        ErrorCode.SEND_FAILED, lambda: run_execute(robot, Command(Action.HELLO))
    )
    assert "DDS writer gone" in str(error)


@pytest.mark.parametrize(("lease_left_s", "sent"), [(-0.001, False), (60.0, True)])
def test_no_call_leaves_at_or_after_the_lease(
    robot: Go2Robot, sdk: FakeSdk, lease_left_s: float, sent: bool
) -> None:
    """The Go2 cannot refuse an old term: a call the thread pool held past the sender's lease
    is not made (judged on the SDK's thread, right before the call)."""

    async def main() -> None:
        expiry = clock.monotonic() + lease_left_s
        await robot.execute(Command(Action.HELLO), TOKEN, lease_expiry_s=expiry)

    if sent:
        asyncio.run(main())
    else:
        error = expect_robot_error(ErrorCode.TIMEOUT, lambda: asyncio.run(main()))
        assert "lease ended, not sent" in str(error)
    assert [call.method for call in sdk.client.calls] == (["Hello"] if sent else [])


def test_a_return_value_that_is_no_code_becomes_send_failed(robot: Go2Robot, sdk: FakeSdk) -> None:
    sdk.client.codes["Damp"] = None
    expect_robot_error(ErrorCode.SEND_FAILED, lambda: run_execute(robot, Command(Action.DAMP)))


def test_the_fencing_token_is_logged_at_debug(
    robot: Go2Robot, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="ha_voice.robot.go2"):
        run_execute(robot, Command(Action.STOP_MOVE))
    [record] = [r for r in caplog.records if "stop_move" in r.getMessage()]
    assert record.levelno == logging.DEBUG
    assert "term 7 index 42 from jetson-a" in record.getMessage()
    assert "not checked" in record.getMessage()


# --- connect and close -------------------------------------------------------------------------


def test_connect_times_out_short_then_inits_and_subscribes(sdk: FakeSdk) -> None:
    asyncio.run(Go2Robot("eth0", timeout_s=0.25, sdk=sdk).connect())
    assert sdk.channel_inits == [(0, "eth0")]
    assert sdk.client.setup == [("SetTimeout", 0.25), ("Init",)]
    assert [topic for topic, _, _ in sdk.subscriptions] == [STATE_TOPIC]


def test_the_default_timeout_is_short(sdk: FakeSdk) -> None:
    asyncio.run(Go2Robot("eth0", sdk=sdk).connect())
    [(_, timeout_s)] = [step for step in sdk.client.setup if step[0] == "SetTimeout"]
    assert 0 < timeout_s <= 0.5


def test_the_channel_is_initialised_once_per_process(sdk: FakeSdk) -> None:
    first = Go2Robot("eth0", sdk=sdk)
    second = Go2Robot("eth0", sdk=sdk)
    asyncio.run(first.connect())
    asyncio.run(first.connect())
    asyncio.run(second.connect())
    assert sdk.channel_inits == [(0, "eth0")]
    assert sdk.clients_made == 2  # one per robot; the repeated connect was a no-op


def test_a_second_interface_in_one_process_is_refused(sdk: FakeSdk) -> None:
    asyncio.run(Go2Robot("eth0", sdk=sdk).connect())
    error = expect_robot_error(
        ErrorCode.NOT_CONNECTED, lambda: asyncio.run(Go2Robot("eth1", sdk=sdk).connect())
    )
    assert "'eth0'" in str(error)
    assert "'eth1'" in str(error)
    assert sdk.channel_inits == [(0, "eth0")]


def test_a_failed_channel_init_says_so_and_may_be_retried(sdk: FakeSdk) -> None:
    sdk.fail_init_channel = True
    robot = Go2Robot("eth9", sdk=sdk)
    error = expect_robot_error(ErrorCode.NOT_CONNECTED, lambda: asyncio.run(robot.connect()))
    assert "eth9" in str(error)
    sdk.fail_init_channel = False
    asyncio.run(robot.connect())
    assert sdk.channel_inits == [(0, "eth9"), (0, "eth9")]


def test_state_is_mirrored_even_when_the_client_fails(sdk: FakeSdk, fake_clock: FakeClock) -> None:
    sdk.fail_client = True
    robot = Go2Robot("eth0", sdk=sdk, clock=fake_clock)
    expect_robot_error(ErrorCode.NOT_CONNECTED, lambda: asyncio.run(robot.connect()))
    sdk.publish(StateMessage())
    assert asyncio.run(robot.reachable())
    assert asyncio.run(robot.state()).mode is Mode.BALANCE_STAND
    sdk.fail_client = False
    asyncio.run(robot.connect())
    assert len(sdk.subscriptions) == 1  # the retry kept the subscription


def test_nothing_works_before_connect(sdk: FakeSdk) -> None:
    robot = Go2Robot("eth0", sdk=sdk)
    command = Command(Action.STOP_MOVE)
    expect_robot_error(ErrorCode.NOT_CONNECTED, lambda: run_execute(robot, command))
    expect_robot_error(ErrorCode.NOT_CONNECTED, lambda: asyncio.run(robot.state()))
    assert not asyncio.run(robot.reachable())
    assert sdk.channel_inits == []


def test_close_unsubscribes_and_stops_everything(robot: Go2Robot, sdk: FakeSdk) -> None:
    sdk.publish(StateMessage())
    asyncio.run(robot.close())
    [(_, _, subscription)] = sdk.subscriptions
    assert subscription.closed
    assert not asyncio.run(robot.reachable())
    expect_robot_error(ErrorCode.NOT_CONNECTED, lambda: asyncio.run(robot.state()))
    command = Command(Action.STOP_MOVE)
    expect_robot_error(ErrorCode.NOT_CONNECTED, lambda: run_execute(robot, command))
    assert sdk.client.calls == []


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        Go2Robot("eth0", timeout_s=0)


# --- state -------------------------------------------------------------------------------------


def test_no_state_before_the_first_message(robot: Go2Robot) -> None:
    assert not asyncio.run(robot.reachable())
    expect_robot_error(ErrorCode.TIMEOUT, lambda: asyncio.run(robot.state()))


def test_a_message_becomes_the_state(robot: Go2Robot, sdk: FakeSdk) -> None:
    sdk.publish(StateMessage(mode=10, body_height=0.2, velocity=[0, 0.5, 0], position=[3, 4, 0]))
    assert asyncio.run(robot.reachable())
    assert asyncio.run(robot.state()) == RobotState(
        mode=Mode.SIT, body_height_m=0.2, velocity=(0.0, 0.5, 0.0), position=(3.0, 4.0, 0.0)
    )


def test_the_newest_message_wins(robot: Go2Robot, sdk: FakeSdk) -> None:
    sdk.publish(StateMessage(mode=int(Mode.LIE_DOWN)))
    sdk.publish(StateMessage(mode=int(Mode.LOCOMOTION)))
    assert asyncio.run(robot.state()).mode is Mode.LOCOMOTION


def test_state_goes_stale_after_one_second(
    robot: Go2Robot, sdk: FakeSdk, fake_clock: FakeClock
) -> None:
    sdk.publish(StateMessage())
    fake_clock.now += 1.0
    assert asyncio.run(robot.reachable())
    asyncio.run(robot.state())
    fake_clock.now += 0.01
    assert not asyncio.run(robot.reachable())
    expect_robot_error(ErrorCode.TIMEOUT, lambda: asyncio.run(robot.state()))
    sdk.publish(StateMessage())
    assert asyncio.run(robot.reachable())


def test_an_unknown_mode_is_reachable_but_has_no_state(robot: Go2Robot, sdk: FakeSdk) -> None:
    sdk.publish(StateMessage(mode=42))  # a mode this version of ha-voice does not know
    assert asyncio.run(robot.reachable())
    error = expect_robot_error(ErrorCode.NOT_AVAILABLE_IN_MODE, lambda: asyncio.run(robot.state()))
    assert "mode 42" in str(error)


@pytest.mark.parametrize(
    "message",
    [
        StateMessage(velocity=(0.0, 0.0)),
        StateMessage(position=(0.0, 0.0, 0.0, 0.0)),
        StateMessage(mode="stand"),  # type: ignore[arg-type]
        object(),
    ],
    ids=["short-velocity", "long-position", "text-mode", "no-fields"],
)
def test_a_malformed_message_is_dropped(
    message: object, robot: Go2Robot, sdk: FakeSdk, caplog: pytest.LogCaptureFixture
) -> None:
    sdk.publish(StateMessage(mode=int(Mode.SIT)))
    with caplog.at_level(logging.DEBUG, logger="ha_voice.robot.go2"):
        sdk.publish(message)
        sdk.publish(message)
    assert robot.malformed == 2
    assert asyncio.run(robot.state()).mode is Mode.SIT
    levels = [r.levelno for r in caplog.records if "malformed" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]


# --- the SDK itself ----------------------------------------------------------------------------


@pytest.fixture
def sdk_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import unitree_sdk2py` (and any of its modules) fail, installed or not."""
    for name in [n for n in sys.modules if n.startswith("unitree_sdk2py.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "unitree_sdk2py", None)


@pytest.mark.usefixtures("sdk_missing")
def test_a_missing_sdk_says_how_to_install_it() -> None:
    robot = Go2Robot("eth0")
    error = expect_robot_error(ErrorCode.NOT_CONNECTED, lambda: asyncio.run(robot.connect()))
    message = str(error)
    assert "unitree_sdk2py" in message
    assert "not on PyPI" in message
    assert "cyclonedds 0.10.x" in message
    assert "CYCLONEDDS_HOME" in message
    assert "https://github.com/unitreerobotics/unitree_sdk2_python" in message
    assert "pip install -e" in message
    assert "docs/jetson-install.md" in message


def test_importing_the_adapter_does_not_import_the_sdk() -> None:
    script = "import sys, ha_voice.robot.go2; print('unitree_sdk2py' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
