"""The sim robot as its own process on loopback: two nodes, the watchdog, hostile lines, signals.

The client's reconnect and timeout rules are tested against small fake servers in this process,
where the test decides exactly when a connection breaks.
"""

from __future__ import annotations

import asyncio
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from ha_voice.clock import monotonic
from ha_voice.robot.base import (
    Action,
    Command,
    ErrorCode,
    FencingToken,
    Mode,
    Robot,
    RobotError,
)
from ha_voice.robot.sim import EntryKind, SimGo2, ViolationKind
from ha_voice.robot.sim_server import (
    MAX_LINE_BYTES,
    SimRobotClient,
    fetch_journal,
    fetch_verdict,
    parse_listen,
    serve_sim_robot,
)

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 10.0


class SimProcess:
    """`python -m ha_voice.robot.sim_server` on a free loopback port."""

    def __init__(self, *args: str) -> None:
        argv = [sys.executable, "-m", "ha_voice.robot.sim_server", "--listen", "127.0.0.1:0"]
        self.process = subprocess.Popen(
            [*argv, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT_S)
        first = self.process.stdout.readline() if ready else ""
        if not first.startswith("listening "):
            self.stop()
            pytest.fail(f"no 'listening' line but {first!r}; stderr: {self.stderr()}")
        self.host, self.port = parse_listen(first.split()[1])

    def client(self, timeout_s: float = 2.0) -> SimRobotClient:
        return SimRobotClient(self.host, self.port, timeout_s=timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read() if self.process.poll() is not None else "(running)"


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    process = SimProcess("--move-timeout-s", "0.3")
    yield process
    process.stop()


def token(node: str, term: int, index: int) -> FencingToken:
    return FencingToken(term, index, node)


def test_two_nodes_take_turns_and_the_verdict_comes_over_the_wire(sim: SimProcess) -> None:
    async def scenario() -> None:
        n1, n2 = sim.client(), sim.client()
        await n1.connect()
        await n2.connect()
        lease_s = monotonic() + 5.0  # one host: the robot's clock is ours
        for index, action in enumerate((Action.STAND_UP, Action.BALANCE_STAND), start=1):
            await n1.execute(Command(action), token("n1", 1, index), lease_expiry_s=lease_s)
        for index in range(3, 8):  # a short walk at 20 Hz
            move = Command(Action.MOVE, {"vx": 0.5})
            await n1.execute(move, token("n1", 1, index), lease_expiry_s=lease_s)
            await asyncio.sleep(0.05)
        # n2 takes over in term 2; n1, whose lease it claims ran out, sends once more.
        await n2.execute(Command(Action.STOP_MOVE), token("n2", 2, 8))
        late = Command(Action.MOVE, {"vx": 0.5})
        with pytest.raises(RobotError) as info:
            await n1.execute(late, token("n1", 1, 9), lease_expiry_s=monotonic() - 0.1)
        assert info.value.code == ErrorCode.FENCED
        assert (await n2.state()).mode is Mode.BALANCE_STAND
        assert await n1.reachable()
        await n1.close()
        await n2.close()

        journal = await fetch_journal(sim.host, sim.port)
        assert [(e.node, e.token.term if e.token else None) for e in journal] == [
            *[("n1", 1)] * 7,
            ("n2", 2),
            ("n1", 1),
        ]
        assert (journal[-1].accepted, journal[-1].code) == (False, ErrorCode.FENCED)
        assert journal[6].drives_until_s == journal[7].arrival_s  # n2's stop ended n1's walk
        verdict = await fetch_verdict(sim.host, sim.port)
        assert verdict.of_kind(ViolationKind.OVERLAPPING_WRITERS) == ()
        assert [(v.kind, v.entry) for v in verdict.violations] == [(ViolationKind.AFTER_LEASE, 8)]
        assert (verdict.commands, verdict.accepted, verdict.fenced) == (9, 8, 1)
        assert verdict.senders == ("n1", "n2")

    asyncio.run(scenario())


def test_the_robot_halts_by_itself_after_the_last_move(sim: SimProcess) -> None:
    async def scenario() -> None:
        client = sim.client()
        await client.connect()
        for index, action in enumerate((Action.STAND_UP, Action.BALANCE_STAND), start=1):
            await client.execute(Command(action), token("n1", 1, index))
        await client.execute(Command(Action.MOVE, {"vx": 1.0}), token("n1", 1, 3))
        assert (await client.state()).mode is Mode.LOCOMOTION
        await asyncio.sleep(0.5)  # the process runs with --move-timeout-s 0.3
        halted = await client.state()
        assert halted.mode is Mode.BALANCE_STAND
        assert halted.velocity == (0.0, 0.0, 0.0)
        assert halted.position[0] == pytest.approx(0.3)
        last = (await client.journal())[-1]
        assert last.kind is EntryKind.WATCHDOG_STOP
        await client.close()

    asyncio.run(scenario())


GOOD_TOKEN = '"token": {"term": 1, "index": 1, "node": "n1"}'
MALFORMED = [
    b"not json",
    b"\xff\xfe\n",
    b"[1, 2]",
    b'{"no_op": 1}',
    b'{"op": "fly"}',
    b'{"op": 7}',
    b'{"op": "execute"}',
    b'{"op": "execute", "action": "moonwalk", ' + GOOD_TOKEN.encode() + b"}",
    b'{"op": "execute", "action": "move", "params": {"vx": "fast"}, ' + GOOD_TOKEN.encode() + b"}",
    b'{"op": "execute", "action": "move", "params": {"vx": 9.0}, ' + GOOD_TOKEN.encode() + b"}",
    b'{"op": "execute", "action": "sit", "token": {"term": "1", "index": 1, "node": "n1"}}',
    b'{"op": "execute", "action": "sit", "token": {"term": true, "index": 1, "node": "n1"}}',
    b'{"op": "execute", "action": "sit", "lease_expiry": "soon", ' + GOOD_TOKEN.encode() + b"}",
]


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> bytes:
    writer.write(line.rstrip(b"\n") + b"\n")
    await writer.drain()
    return await reader.readline()


def test_malformed_lines_get_4002_and_the_server_keeps_serving(sim: SimProcess) -> None:
    async def scenario() -> None:
        reader, writer = await asyncio.open_connection(sim.host, sim.port)
        for line in MALFORMED:
            reply = await ask(reader, writer, line)
            assert reply.startswith(b'{"ok":false,"code":4002,'), (line, reply)
        assert (
            await ask(reader, writer, b'{"op": "reachable"}') == b'{"ok":true,"reachable":true}\n'
        )
        # A line over the limit is answered, then the connection is closed: it cannot be framed.
        reply = await ask(reader, writer, b'{"op": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}')
        assert reply.startswith(b'{"ok":false,"code":4002,')
        assert await reader.read() == b""
        writer.close()

        client = sim.client()
        await client.connect()
        await client.execute(Command(Action.STAND_UP), token("n1", 1, 1))
        stats = await client.stats()
        assert (stats.malformed, stats.oversize) == (len(MALFORMED) + 1, 1)
        assert (await client.verdict()).commands == 1  # nothing malformed reached the robot
        await client.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_with_exit_0(signum: signal.Signals) -> None:
    sim = SimProcess()
    try:

        async def connected() -> None:
            # An open connection must not keep the server from stopping.
            client: Robot = sim.client()  # mypy checks the protocol
            await client.connect()
            assert await client.reachable()
            sim.process.send_signal(signum)
            assert sim.process.wait(5.0) == 0
            assert not await client.reachable()
            await client.close()

        asyncio.run(connected())
    finally:
        sim.stop()


# --- The client's connection rules, against servers this test controls -------------------------


async def with_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    body: Callable[[int], Awaitable[None]],
) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        await body(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def test_a_break_mid_call_resends_only_idempotent_commands() -> None:
    lines: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines.append(await reader.readline())  # take the request, never answer
        writer.close()

    async def body(port: int) -> None:
        for action, sent in ((Action.MOVE, 1), (Action.STOP_MOVE, 2)):
            # A fresh client each time: at most one reconnect per call, and this one needs it.
            client = SimRobotClient("127.0.0.1", port, timeout_s=2.0)
            await client.connect()
            lines.clear()
            with pytest.raises(RobotError) as info:
                await client.execute(Command(action), token("n1", 1, 1))
            assert info.value.code == ErrorCode.SEND_FAILED
            assert len(lines) == sent, action  # a move's outcome is unknown: never sent twice
            await client.close()

    asyncio.run(with_server(hang_up, body))


def test_no_reply_in_time_is_a_timeout_and_drops_the_connection() -> None:
    connections: list[int] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.read()  # until the client gives up on this connection

    async def body(port: int) -> None:
        client = SimRobotClient("127.0.0.1", port, timeout_s=0.2)
        await client.connect()
        for _ in range(2):
            with pytest.raises(RobotError) as info:
                await client.state()
            assert info.value.code == ErrorCode.TIMEOUT
        assert len(connections) == 2  # a late reply must never answer the next request
        assert not await client.reachable()
        await client.close()

    asyncio.run(with_server(silent, body))


def test_the_client_reconnects_to_a_restarted_server() -> None:
    async def scenario() -> None:
        robot = SimGo2(latency_s=0.0)
        await robot.connect()
        first = await serve_sim_robot("127.0.0.1", 0, robot)
        host, port = first.address
        client = SimRobotClient(host, port)
        await client.connect()
        await client.execute(Command(Action.STAND_UP), token("n1", 1, 1))
        await first.close()
        second = await serve_sim_robot(host, port, robot)
        await client.execute(Command(Action.BALANCE_STAND), token("n1", 1, 2))
        assert (await client.state()).mode is Mode.BALANCE_STAND
        await second.close()
        with pytest.raises(RobotError) as info:
            await client.execute(Command(Action.STOP_MOVE), token("n1", 1, 3))
        assert info.value.code == ErrorCode.SEND_FAILED
        await client.close()
        with pytest.raises(RobotError) as info:
            await client.state()
        assert info.value.code == ErrorCode.NOT_CONNECTED

    asyncio.run(scenario())


def test_a_command_held_past_its_lease_by_a_reconnect_is_not_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lease is judged again with nothing awaited before the write: a reconnect (or a
    pause) between the first check and the write must not deliver a command after the lease."""

    async def scenario() -> None:
        robot = SimGo2(latency_s=0.0)
        await robot.connect()
        server = await serve_sim_robot("127.0.0.1", 0, robot)
        host, port = server.address
        client = SimRobotClient(host, port)
        await client.connect()
        await client.execute(Command(Action.STAND_UP), token("n1", 1, 1))
        await client._drop()  # the next call must reconnect first
        reopen = client._reopen

        async def reopen_then_pause() -> None:  # connected, then paused past the lease
            await reopen()
            time.sleep(0.3)  # noqa: ASYNC251 - the process stopped (SIGSTOP, GC): no timer runs

        monkeypatch.setattr(client, "_reopen", reopen_then_pause)
        expiry = time.monotonic() + 0.1
        with pytest.raises(RobotError) as info:
            await client.execute(
                Command(Action.BALANCE_STAND), token("n1", 1, 2), lease_expiry_s=expiry
            )
        assert info.value.code == ErrorCode.TIMEOUT
        assert "lease ended, not sent" in str(info.value)
        sent = [entry.token.index for entry in robot.journal() if entry.token is not None]
        assert 2 not in sent
        await client.close()
        await server.close()

    asyncio.run(scenario())


def test_connecting_to_nobody_is_not_connected() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(RobotError) as info:
            await SimRobotClient("127.0.0.1", port).connect()
        assert info.value.code == ErrorCode.NOT_CONNECTED

    asyncio.run(scenario())
