"""The simulated Go2 as its own process: newline-delimited JSON over TCP, and a `Robot` client.

The protocol is in docs/sim-robot.md: one JSON object per line each way, one reply per request,
in order. Ops: execute, state, journal, check, reachable, stats.

Invariants:
- A connection carries one request at a time; replies come back in request order, so the client
  needs no request ids, and drops its connection whenever a reply may be late or lost.
- Hostile input never escapes the receive path: bad JSON, an unknown op, a missing or mistyped
  field gets {"ok": false, "code": 4002} and the connection stays usable; a line over
  `MAX_LINE_BYTES` gets the same reply and the connection is closed, since the rest of that line
  can no longer be framed. Each is counted in `ServerStats`, logged once at warning, then at debug.
- The client never sends a command twice unless it is idempotent: it reconnects at most once per
  call, before sending when the connection is already known to be closed, and after a break
  mid-call only for an idempotent request (read-only ops, idempotent actions). Otherwise the
  outcome is unknown and RobotError(SEND_FAILED) says so (docs/design.md, "The replicated
  journal and exactly-once commands").
- The robot's clock is the server process's monotonic clock: journal times and lease expiries
  compare only when the sender runs on the same host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, TypeVar

from ha_voice.robot.base import (
    Action,
    Command,
    ErrorCode,
    FencingToken,
    RobotError,
    RobotState,
)
from ha_voice.robot.sim import (
    DEFAULT_MOVE_TIMEOUT_S,
    JournalEntry,
    SimGo2,
    Verdict,
    entry_from_json,
    entry_to_json,
    state_from_json,
    state_to_json,
    verdict_from_json,
    verdict_to_json,
)

__all__ = [
    "MAX_LINE_BYTES",
    "ServerStats",
    "SimRobotClient",
    "SimRobotServer",
    "fetch_journal",
    "fetch_verdict",
    "main",
    "parse_listen",
    "serve_sim_robot",
]

_LOGGER = logging.getLogger(__name__)

# A request is one small object; 64 KiB bounds what a confused or hostile peer can make us buffer.
MAX_LINE_BYTES: Final = 64 * 1024
# How long a connection closed for an oversize line may still send before it is cut off.
_LINGER_S: Final = 1.0
# How long close() lets a connection finish the request it is serving.
_CLOSE_TIMEOUT_S: Final = 1.0
# Replies carry the whole journal (~250 bytes an entry): 64 MiB is hours of 20 Hz streaming.
_MAX_REPLY_BYTES: Final = 64 * 1024 * 1024

_Json = dict[str, Any]
_T = TypeVar("_T")


class _Malformed(Exception):
    """The request cannot be understood; the detail says why."""


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _error(code: int, detail: str, seen_term: int | None = None) -> _Json:
    reply: _Json = {"ok": False, "code": code, "detail": detail}
    if seen_term is not None:
        reply["seen_term"] = seen_term
    return reply


# --- Parsing requests: every check raises _Malformed with what was wrong ---------------------


def _field(request: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = request.get(name)
    # bool is an int to Python, never a number or an index to us.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Malformed(f"{name!r} must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _parse_request(line: bytes) -> _Json:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Malformed(f"not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise _Malformed("a request is a JSON object")
    return request


def _parse_token(request: Mapping[str, Any]) -> FencingToken:
    token = _field(request, "token", dict)
    return FencingToken(
        _field(token, "term", int), _field(token, "index", int), _field(token, "node", str)
    )


def _parse_command(request: Mapping[str, Any]) -> Command:
    try:
        action = Action(_field(request, "action", str))
    except ValueError:
        raise _Malformed(f"unknown action {request['action']!r}") from None
    params = request.get("params", {})
    if not isinstance(params, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in params.values()
    ):
        raise _Malformed(f"'params' must map names to numbers, got {params!r}")
    try:
        return Command(action, {name: float(value) for name, value in params.items()})
    except RobotError as exc:  # a parameter out of the Go2's bounds
        raise _Malformed(exc.detail.removeprefix(f"{exc.code}: ")) from None


def _parse_lease(request: Mapping[str, Any]) -> float | None:
    if request.get("lease_expiry") is None:
        return None
    return float(_field(request, "lease_expiry", (int, float)))


# --- The server -------------------------------------------------------------------------------


@dataclass
class ServerStats:
    """What the server has handled; `malformed` includes `oversize`."""

    connections: int = 0
    requests: int = 0
    malformed: int = 0
    oversize: int = 0


class _Handler:
    """Serves the protocol for one robot on any number of connections."""

    def __init__(self, robot: SimGo2) -> None:
        self.robot = robot
        self.stats = ServerStats()
        # Open connections: the task serving each, and its writer, for close().
        self.connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._warned = False
        self._ops: dict[str, Callable[[_Json], Awaitable[_Json]]] = {
            "execute": self._execute,
            "state": self._state,
            "journal": self._journal,
            "check": self._check,
            "reachable": self._reachable,
            "stats": self._stats,
        }

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests on one connection until the peer closes it or breaks a rule."""
        task = asyncio.current_task()
        assert task is not None  # a connection callback always runs in a task
        self.connections[task] = writer
        self.stats.connections += 1
        try:
            while (line := await self._read_line(reader, writer)) is not None:
                writer.write(_encode(await self._reply(line)))
                await writer.drain()
        except ConnectionError:
            pass  # the peer went away mid-reply: nothing left to answer
        finally:
            del self.connections[task]
            writer.close()

    async def _read_line(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        """The next request line; None at the end of the stream or after an oversize line."""
        try:
            line = await reader.readline()
        except ValueError:  # StreamReader's LimitOverrunError: no newline within the limit
            self.stats.oversize += 1
            self._refused(f"a line over {MAX_LINE_BYTES} bytes; closing the connection")
            writer.write(_encode(_error(ErrorCode.BAD_PARAMETER, "line too long")))
            await _close_gracefully(reader, writer)
            return None
        return line or None

    async def _reply(self, line: bytes) -> _Json:
        self.stats.requests += 1
        try:
            request = _parse_request(line)
            op = request.get("op")
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise _Malformed(f"unknown op {op!r}; known: {', '.join(self._ops)}")
            return await handler(request)
        except _Malformed as exc:
            self._refused(str(exc))
            return _error(ErrorCode.BAD_PARAMETER, str(exc))
        except RobotError as exc:
            # RobotError's detail starts with its code; the reply carries the code on its own.
            return _error(exc.code, exc.detail.removeprefix(f"{exc.code}: "), exc.seen_term)

    def _refused(self, detail: str) -> None:
        self.stats.malformed += 1
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        _LOGGER.log(level, "malformed request refused: %s", detail)

    async def _execute(self, request: _Json) -> _Json:
        command, token = _parse_command(request), _parse_token(request)
        await self.robot.execute(command, token, lease_expiry_s=_parse_lease(request))
        return {"ok": True}

    async def _state(self, request: _Json) -> _Json:
        return {"ok": True, "state": state_to_json(await self.robot.state())}

    async def _journal(self, request: _Json) -> _Json:
        return {"ok": True, "journal": [entry_to_json(e) for e in self.robot.journal()]}

    async def _check(self, request: _Json) -> _Json:
        return {"ok": True, "verdict": verdict_to_json(self.robot.check())}

    async def _reachable(self, request: _Json) -> _Json:
        return {"ok": True, "reachable": await self.robot.reachable()}

    async def _stats(self, request: _Json) -> _Json:
        return {"ok": True, "stats": asdict(self.stats)}


async def _close_gracefully(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send what is buffered and a FIN, then discard input for a while before closing.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the reply
    the peer has not read yet; the rest of an oversize line is exactly such input.
    """
    await writer.drain()
    writer.write_eof()
    with contextlib.suppress(asyncio.TimeoutError, OSError):
        await asyncio.wait_for(_discard_until_eof(reader), _LINGER_S)


async def _discard_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(MAX_LINE_BYTES):
        pass


class SimRobotServer:
    """A listening simulator; `close()` stops listening and ends every connection."""

    def __init__(self, server: asyncio.Server, handler: _Handler) -> None:
        self._server = server
        self._handler = handler

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound, so that port 0 can be asked for."""
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def stats(self) -> ServerStats:
        return self._handler.stats

    async def close(self) -> None:
        """Stop listening, close every connection, and return once they are done."""
        self._server.close()
        # Python 3.12's wait_closed waits for every connection, so end them. Closing the socket
        # lets a handler finish its request and see the end of its stream; cancelling it instead
        # makes Python 3.12.1's streams log the CancelledError as an error.
        connections = dict(self._handler.connections)
        for writer in connections.values():
            writer.close()
        if connections:
            _, busy = await asyncio.wait(connections, timeout=_CLOSE_TIMEOUT_S)
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
        await self._server.wait_closed()


async def serve_sim_robot(host: str, port: int, robot: SimGo2) -> SimRobotServer:
    """Listen on host:port (0 for any free port) and serve `robot` until `close()`."""
    handler = _Handler(robot)
    server = await asyncio.start_server(handler.serve, host, port, limit=MAX_LINE_BYTES)
    return SimRobotServer(server, handler)


# --- The client -------------------------------------------------------------------------------


class SimRobotClient:
    """The `Robot` protocol over one TCP connection to a sim robot server."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 1.0) -> None:
        self._address = (host, port)
        self._timeout_s = timeout_s
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._open = False
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Open the connection; raises RobotError(NOT_CONNECTED) with the reason if it cannot."""
        try:
            await asyncio.wait_for(self._reopen(), self._timeout_s)
        except (RobotError, asyncio.TimeoutError) as exc:
            raise RobotError(ErrorCode.NOT_CONNECTED, f"{self._where()}: {exc!r}") from exc
        self._open = True

    async def execute(
        self, command: Command, token: FencingToken, *, lease_expiry_s: float | None = None
    ) -> None:
        """Send one command under `token`; returns when the robot accepted it, else raises."""
        request = {
            "op": "execute",
            "action": command.action.value,
            "params": dict(command.params),
            "token": {"term": token.term, "index": token.index, "node": token.node},
            "lease_expiry": lease_expiry_s,
        }
        # Never let a command reach the robot after our lease: past it, abort the connection
        # (RST), which throws away whatever the kernel still holds to send or resend.
        # (A sender already past its lease is a bug that the robot's checker is there to catch.)
        late = lease_expiry_s is not None and lease_expiry_s <= time.monotonic()
        until = None if late else lease_expiry_s
        await self._call(request, resend=command.idempotent, until=until)

    async def state(self) -> RobotState:
        reply = await self._call({"op": "state"})
        return self._decode(state_from_json, reply, "state")

    async def reachable(self) -> bool:
        """Whether the sim robot answers and says it is reachable; never raises."""
        try:
            return (await self._call({"op": "reachable"})).get("reachable") is True
        except RobotError:
            return False

    async def journal(self) -> tuple[JournalEntry, ...]:
        """The robot's journal (see `SimGo2.journal`)."""
        reply = await self._call({"op": "journal"})
        return self._decode(lambda entries: tuple(map(entry_from_json, entries)), reply, "journal")

    async def verdict(self) -> Verdict:
        """The robot's verdict on its journal (see `check_journal`)."""
        reply = await self._call({"op": "check"})
        return self._decode(verdict_from_json, reply, "verdict")

    async def stats(self) -> ServerStats:
        """What the server has handled, malformed requests included."""
        reply = await self._call({"op": "stats"})
        return self._decode(lambda stats: ServerStats(**stats), reply, "stats")

    async def close(self) -> None:
        self._open = False
        await self._drop()

    def _where(self) -> str:
        return f"sim robot at {self._address[0]}:{self._address[1]}"

    def _decode(self, parse: Callable[[Any], _T], reply: _Json, key: str) -> _T:
        """`parse(reply[key])`, or RobotError(SEND_FAILED): only RobotError leaves a backend."""
        try:
            return parse(reply[key])
        except (KeyError, TypeError, ValueError) as exc:
            raise RobotError(
                ErrorCode.SEND_FAILED, f"{self._where()}: bad {key}: {exc!r}"
            ) from None

    async def _call(
        self, request: _Json, *, resend: bool = True, until: float | None = None
    ) -> _Json:
        """One round trip within `timeout_s` (and before monotonic time `until`, counted once
        we have the connection to ourselves); the reply if ok, else the RobotError it carries."""
        if not self._open:
            raise RobotError(ErrorCode.NOT_CONNECTED, f"{self._where()}: not connected")
        async with self._lock:
            limit_s = self._timeout_s
            if until is not None:
                limit_s = min(limit_s, until - time.monotonic())
                if limit_s <= 0:
                    raise RobotError(
                        ErrorCode.TIMEOUT, f"{self._where()}: lease ended, not sent", not_sent=True
                    )
            try:
                reply = await asyncio.wait_for(
                    self._exchange(_encode(request), resend, until), limit_s
                )
            except asyncio.TimeoutError:
                # Its reply may still come and would answer the next request; and what we sent
                # must not arrive late: abort, do not close politely.
                await self._drop(abort=True)
                raise RobotError(
                    ErrorCode.TIMEOUT, f"{self._where()}: no reply within {limit_s:.3f} s"
                ) from None
            except asyncio.CancelledError:
                # The guard halted us (the lease is gone): what is still on its way must not
                # arrive later. Abort without waiting; the next call reconnects.
                self._abort_now()
                raise
        if reply.get("ok") is True:
            return reply
        code, seen = reply.get("code"), reply.get("seen_term")
        raise RobotError(
            code if isinstance(code, int) else ErrorCode.SEND_FAILED,
            str(reply.get("detail", "")),
            seen_term=seen if isinstance(seen, int) and not isinstance(seen, bool) else None,
        )

    async def _exchange(self, line: bytes, resend: bool, until: float | None = None) -> _Json:
        """Send and receive, reconnecting at most once, and resending only when `resend`;
        nothing is written at or after monotonic time `until`."""
        reconnected = self._streams is None or self._streams[0].at_eof()
        if reconnected:  # known closed before sending: nothing of this request went out
            await self._reopen()
        try:
            return await self._round_trip(line, until)
        except (OSError, EOFError) as exc:
            await self._drop()
            if reconnected or not resend:
                raise RobotError(
                    ErrorCode.SEND_FAILED,
                    f"{self._where()}: connection broke, outcome unknown: {exc!r}",
                ) from exc
        await self._reopen()
        try:
            return await self._round_trip(line, until)
        except (OSError, EOFError) as exc:
            await self._drop()
            raise RobotError(ErrorCode.SEND_FAILED, f"{self._where()}: {exc!r}") from exc

    async def _round_trip(self, line: bytes, until: float | None = None) -> _Json:
        assert self._streams is not None  # _exchange opened it
        reader, writer = self._streams
        # Judged again with nothing awaited before the write: a (re)connect, or a process
        # paused (SIGSTOP, a long GC) after `_call`'s check, must not send past the lease: the
        # timeout that would cancel us runs after the I/O callback that resumes us.
        if until is not None and time.monotonic() >= until:
            raise RobotError(
                ErrorCode.TIMEOUT, f"{self._where()}: lease ended, not sent", not_sent=True
            )
        writer.write(line)
        await writer.drain()
        try:
            raw = await reader.readline()
        except ValueError as exc:  # a reply line over the limit
            raise EOFError(f"reply too long: {exc}") from exc
        if not raw.endswith(b"\n"):
            raise EOFError("connection closed before the reply")
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise EOFError(f"malformed reply: {exc}") from exc
        if not isinstance(reply, dict):
            raise EOFError(f"malformed reply {raw[:80]!r}")
        return reply

    async def _reopen(self) -> None:
        await self._drop()
        try:
            self._streams = await asyncio.open_connection(*self._address, limit=_MAX_REPLY_BYTES)
        except OSError as exc:
            raise RobotError(ErrorCode.SEND_FAILED, f"{self._where()}: {exc!r}") from exc

    def _abort_now(self) -> None:
        """RST the connection at once (no await: we may be being cancelled)."""
        if self._streams is None:
            return
        _, writer = self._streams
        self._streams = None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _drop(self, *, abort: bool = False) -> None:
        if self._streams is None:
            return
        _, writer = self._streams
        self._streams = None
        sock = writer.get_extra_info("socket")
        if abort and sock is not None:
            # SO_LINGER 0: close sends RST and drops unsent and unacknowledged data.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def fetch_verdict(host: str, port: int, *, timeout_s: float = 5.0) -> Verdict:
    """The verdict of the sim robot at host:port, over a connection of its own."""
    client = SimRobotClient(host, port, timeout_s=timeout_s)
    await client.connect()
    try:
        return await client.verdict()
    finally:
        await client.close()


async def fetch_journal(
    host: str, port: int, *, timeout_s: float = 5.0
) -> tuple[JournalEntry, ...]:
    """The journal of the sim robot at host:port, over a connection of its own."""
    client = SimRobotClient(host, port, timeout_s=timeout_s)
    await client.connect()
    try:
        return await client.journal()
    finally:
        await client.close()


# --- The process ------------------------------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT, or [IPV6]:PORT, as (host, port); ValueError says what is wrong."""
    host, colon, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port_text)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ha-voice sim-robot",
        description="A simulated Unitree Go2 that journals every command (docs/sim-robot.md).",
    )
    parser.add_argument(
        "--listen", required=True, metavar="HOST:PORT", help="port 0: any free port"
    )
    parser.add_argument(
        "--move-timeout-s",
        type=float,
        default=DEFAULT_MOVE_TIMEOUT_S,
        help="seconds the robot walks on one move before it stops by itself (default %(default)s)",
    )
    parser.add_argument(
        "--latency-s", type=float, default=0.002, help="delay of every call (default %(default)s)"
    )
    parser.add_argument(
        "--no-fencing",
        action="store_true",
        help="accept stale fencing tokens, as the real Go2 does (the journal still shows them)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`ha-voice sim-robot --listen HOST:PORT`: serve until SIGTERM or SIGINT, then exit 0."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    robot = SimGo2(
        move_timeout_s=args.move_timeout_s,
        latency_s=args.latency_s,
        enforce_fencing=not args.no_fencing,
    )
    return asyncio.run(_serve_until_stopped(host, port, robot))


async def _serve_until_stopped(host: str, port: int, robot: SimGo2) -> int:
    await robot.connect()
    try:
        server = await serve_sim_robot(host, port, robot)
    except OSError as exc:
        print(
            f"ha-voice sim-robot: cannot listen on {_format_address(host, port)}: {exc}",
            file=sys.stderr,
        )
        return 1
    # The first stdout line is the contract with whoever started us (port 0 is resolved here).
    print(f"listening {_format_address(*server.address)}", flush=True)
    await _wait_for_stop_signal()
    await server.close()
    await robot.close()
    _LOGGER.info("stopped: %s", server.stats)
    return 0


async def _wait_for_stop_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


if __name__ == "__main__":
    sys.exit(main())
