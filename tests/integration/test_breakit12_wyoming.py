"""Review of issue 12 (breakit12): a real node's Wyoming server against clients that misuse it.

One `ha-voice run` without speech (nothing here needs a model), a simulated Go2, one Wyoming
slot, a 1 s idle timeout and 1 s of audio, so a connection may send events for 3 s
(`max_connection_age_s`):
- a client that keeps its connection with an event now and then (each within the idle
  timeout) is closed with an `error` event (code `connection_age`), and the slot it held
  serves the next client (it held it for ever: Home Assistant got `busy` as long as it lasted);
- JSON nested deeper than Python recurses gets an `error` event (`bad_event`), not a traceback.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import Iterator

import pytest
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, read_event
from wyoming.info import Describe, Info

from ha_voice.local_cluster import LocalCluster, LocalNode, SimRobotProcess

_GIVE_UP_S = 30.0  # a safety net for a node that never closes, not a timing assert


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    flags = (
        "--wyoming-max-connections=1",
        "--wyoming-idle-timeout-s=1",
        "--listen-max-audio-s=1",
    )
    with (
        SimRobotProcess() as robot,
        LocalCluster(1, extra_flags=(f"--robot={robot.spec}", *flags)) as cluster,
    ):
        cluster.start()
        assert cluster.wait_for_primary(30.0) is not None
        yield cluster.nodes["n1"]
        cluster.close()


def _events(data: bytes) -> list[Event]:
    stream = io.BytesIO(data)
    events = []
    while (event := read_event(stream)) is not None:
        events.append(event)
    return events


def _keep_alive(port: int) -> list[Event]:
    """Send an event the server drops every 0.3 s until the node closes the connection (or
    _GIVE_UP_S pass); what the node sent."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=0.3) as sock:
        give_up = time.monotonic() + _GIVE_UP_S
        while time.monotonic() < give_up:
            try:
                sock.sendall(b'{"type": "ping"}\n')
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
    return _events(received)


def _describe(port: int) -> Event | None:
    async def ask() -> Event | None:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=10.0) as client:
            await client.write_event(Describe().event())
            answer: Event | None = await client.read_event()
            return answer

    return asyncio.run(ask())


def test_a_client_cannot_hold_a_slot_with_an_event_now_and_then(node: LocalNode) -> None:
    events = _keep_alive(node.wyoming_port)
    assert [e.type for e in events] == ["error"], events
    assert Error.from_event(events[0]).code == "connection_age"
    answer = _describe(node.wyoming_port)  # the slot it held serves the next client
    assert answer is not None
    assert Info.is_type(answer.type), answer


def test_json_nested_deeper_than_python_recurses_gets_an_error_event(node: LocalNode) -> None:
    with socket.create_connection(("127.0.0.1", node.wyoming_port), timeout=10.0) as sock:
        sock.sendall(b"[" * 30_000 + b"\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    events = _events(received)
    assert [e.type for e in events] == ["error"], events
    assert Error.from_event(events[0]).code == "bad_event"
    log = node.log_path.read_text()
    assert "Traceback" not in log, log[-2000:]
