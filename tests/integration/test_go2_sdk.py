"""The Go2 adapter against the real unitree_sdk2py, without a robot; skipped where it is absent.

Checks what the unit tests take on trust from a fake: that every method in the mapping table
exists on `SportClient` with the parameters we pass, that our API ids and error codes are the
SDK's, that `SportModeState_` has the fields we read, and that the adapter runs the real SDK
over DDS on the loopback interface (in a child process, because `ChannelFactoryInitialize` binds
the whole process to one interface), where every command fails cleanly for want of a robot.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "unitree_sdk2py",
    reason="unitree_sdk2py is not on PyPI; install it on the Jetson as docs/jetson-install.md says",
)

from unitree_sdk2py.go2.sport import sport_api
from unitree_sdk2py.go2.sport.sport_client import SportClient
from unitree_sdk2py.idl.unitree_go.msg.dds_ import SportModeState_
from unitree_sdk2py.rpc import internal

from ha_voice.robot.base import ACTIONS, Action, ErrorCode
from ha_voice.robot.go2 import SDK_METHODS, SDK_PARAMETERS, load_sdk

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.value)
def test_the_method_exists_with_our_parameters(action: Action) -> None:
    method = getattr(SportClient, SDK_METHODS[action])
    parameters = list(inspect.signature(method).parameters)[1:]  # after self
    assert parameters == [name for name, _ in SDK_PARAMETERS.get(action, ())]


@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.value)
def test_the_api_id_is_the_sdks(action: Action) -> None:
    # sport_api names each id SPORT_API_ID_<METHOD IN CAPITALS>, e.g. SPORT_API_ID_BALANCESTAND.
    constant = f"SPORT_API_ID_{SDK_METHODS[action].upper()}"
    assert getattr(sport_api, constant) == ACTIONS[action].api_id


def test_the_error_codes_are_the_sdks() -> None:
    assert internal.RPC_ERR_CLIENT_SEND == ErrorCode.SEND_FAILED
    assert internal.RPC_ERR_CLIENT_API_TIMEOUT == ErrorCode.TIMEOUT
    assert internal.RPC_ERR_SERVER_API_NOT_IMPL == ErrorCode.NOT_AVAILABLE_IN_MODE


def test_the_client_has_the_setup_methods() -> None:
    assert callable(SportClient.SetTimeout)
    assert callable(SportClient.Init)


def test_the_state_message_has_the_fields_we_read() -> None:
    names = {f.name for f in dataclasses.fields(SportModeState_)}
    assert {"mode", "body_height", "velocity", "position"} <= names


def test_load_sdk_imports_the_real_sdk() -> None:
    sdk = load_sdk()
    assert callable(sdk.init_channel)
    assert callable(sdk.make_client)
    assert callable(sdk.subscribe)


# Run in a child: connect on loopback (no robot there), then one command and a state read.
_OFFLINE_PROBE = """
import asyncio, json
from ha_voice.robot.base import Action, Command, FencingToken, RobotError
from ha_voice.robot.go2 import Go2Robot

async def main():
    robot = Go2Robot("lo", timeout_s=0.2)
    await robot.connect()
    result = {"reachable": await robot.reachable()}
    for name, call in [
        ("stop_move", robot.execute(Command(Action.STOP_MOVE), FencingToken(1, 1, "probe"))),
        ("state", robot.state()),
    ]:
        try:
            await call
            result[name] = 0
        except RobotError as exc:
            result[name] = exc.code
    await robot.close()
    print(json.dumps(result))

asyncio.run(main())
"""


@pytest.mark.slow
def test_the_adapter_runs_the_real_sdk_with_no_robot(tmp_path: Path) -> None:
    # Given an interface name, some SDK releases write a Cyclone DDS trace to ~/cdds.LOG.
    env = {**os.environ, "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["reachable"] is False
    assert outcome["stop_move"] in {ErrorCode.SEND_FAILED, ErrorCode.TIMEOUT}
    assert outcome["state"] == ErrorCode.TIMEOUT
