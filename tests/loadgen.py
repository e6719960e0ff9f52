"""A small HTTP/1.1 load generator on raw asyncio streams, for floods of real requests.

httpx costs ~1 ms of client CPU per request; on a 2-core machine that shares its cores with
three daemons, the load generator must be cheap or it measures itself. One connection per
request (`Connection: close`), the status line parsed, the body kept for the checks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Reply",
    "Target",
    "flood",
    "read_flood",
    "request",
    "slow_connections",
    "summary",
]


@dataclass(frozen=True)
class Target:
    host: str
    port: int


@dataclass(frozen=True)
class Reply:
    """One request's outcome: HTTP status (0: no answer), JSON body if any, seconds taken."""

    status: int
    body: Mapping[str, object] = field(default_factory=dict)
    elapsed_s: float = 0.0
    error: str = ""


async def request(
    target: Target,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Reply:
    """One request on its own connection; never raises (errors become status 0)."""
    started = time.perf_counter()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {target.host}:{target.port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            writer.write("\r\n".join(lines).encode() + body)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()

    try:
        raw = await asyncio.wait_for(exchange(), timeout_s)
    except (OSError, asyncio.TimeoutError) as exc:
        return Reply(0, {}, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
    return _parse(raw, time.perf_counter() - started)


def _parse(raw: bytes, elapsed_s: float) -> Reply:
    head, _, payload = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return Reply(0, {}, elapsed_s, f"not HTTP: {raw[:40]!r}")
    try:
        parsed = json.loads(payload) if payload else {}
    except ValueError:
        parsed = {"text": payload[:200].decode(errors="replace")}
    return Reply(int(parts[1]), parsed if isinstance(parsed, dict) else {}, elapsed_s)


async def flood(
    targets: Sequence[Target],
    count: int,
    path: str,
    make_body: object,
    headers: Mapping[str, str],
    timeout_s: float = 60.0,
) -> list[Reply]:
    """`count` requests at once, spread round-robin over `targets`; `make_body(i)` -> bytes,
    each with its own idempotency key."""
    assert callable(make_body)

    async def one(i: int) -> Reply:
        target = targets[i % len(targets)]
        extra = {**headers, "Idempotency-Key": f"flood-{time.time_ns()}-{i}"}
        return await request(target, "POST", path, make_body(i), extra, timeout_s)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def read_flood(
    target: Target, connections: int, duration_s: float, path: str, source: str = "127.0.0.1"
) -> Counter[int]:
    """`connections` kept-alive connections from `source`, each sending GET `path` back to back
    for `duration_s` and reading every answer whole; the answers' statuses (0: an error)."""
    statuses: Counter[int] = Counter()
    get = f"GET {path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n\r\n".encode()

    async def one() -> None:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(
                    target.host, target.port, local_addr=(source, 0)
                )
            except OSError:
                statuses[0] += 1
                await asyncio.sleep(0.05)
                continue
            try:
                while time.monotonic() < deadline:
                    writer.write(get)
                    status, close = await _read_answer(reader)
                    statuses[status] += 1
                    if close:
                        break
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                statuses[0] += 1
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return statuses


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server closes the connection) of one answer, its body read."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode("latin-1").lower().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    await reader.readexactly(int(fields.get("content-length", "0")))
    return int(lines[0].split(" ")[1]), fields.get("connection") == "close"


async def slow_connections(target: Target, count: int, hold_s: float) -> list[bool]:
    """`count` connections that send half a request line and then nothing; for each, whether
    the server closed it before `hold_s` (a slowloris that is cut off)."""

    async def one() -> bool:
        try:
            reader, writer = await asyncio.open_connection(target.host, target.port)
        except OSError:
            return True  # refused: not held either
        writer.write(b"POST /api/robot/command HTTP/1.1\r\nHost: x\r\n")
        try:
            await asyncio.wait_for(reader.read(), hold_s)
            return True
        except asyncio.TimeoutError:
            return False
        except OSError:
            return True
        finally:
            writer.close()

    return list(await asyncio.gather(*(one() for _ in range(count))))


def summary(replies: Sequence[Reply]) -> dict[str, object]:
    """Counts by status and latency percentiles (ms) of a flood."""
    times = sorted(r.elapsed_s * 1000 for r in replies)

    def pct(q: float) -> float:
        return round(times[min(len(times) - 1, int(q * len(times)))], 1) if times else 0.0

    firsts: dict[int, str] = {}
    for reply in replies:
        if reply.status >= 500 or reply.status == 0:
            firsts.setdefault(reply.status, str(reply.body.get("error", reply.error))[:120])
    return {
        "statuses": dict(sorted(Counter(r.status for r in replies).items())),
        "why_5xx": firsts,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": round(times[-1], 1) if times else 0.0,
    }
