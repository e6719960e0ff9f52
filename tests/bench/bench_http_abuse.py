"""Benchmark: a flood of commands, a 5 MB body and slow connections against a 3-node cluster.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run:

    python tests/bench/bench_http_abuse.py [--commands 0 100 1000] [--slow 50] [--runs 5]

For each N of `--commands`, `--runs` times, on a fresh cluster of three `ha-voice run`
processes (default configuration) and one `ha-voice sim-robot` on 127.0.0.1, at once: `--slow`
connections that send half a request head and nothing more, a 5 MB body to every node's
/api/robot/command, and N concurrent "stand" commands, each on its own connection with its
own key, spread round-robin over the three nodes. Every client is 127.0.0.1, so each node's
rate limit sees them as one client. Counted: the status of every command, what the slow
connections and the large bodies got, and leader changes (every node's
ha_voice_leader_changes_total).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.local_cluster import LocalCluster, LocalNode, SimRobotProcess

START, END = "<!-- bench_http_abuse:start -->", "<!-- bench_http_abuse:end -->"
_BIG = 5 * 1024 * 1024


async def slow_connection(node: LocalNode) -> str:
    """Half a request head, then silence: what the server does about it."""
    reader, writer = await asyncio.open_connection(node.host, node.api_port)
    writer.write(b"POST /api/robot/command HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(64), 60)
    except asyncio.TimeoutError:
        answer = b"(still open after 60 s)"
    writer.close()
    return answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(closed, no answer)"


async def big_body(client: httpx.AsyncClient, node: LocalNode) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(_BIG // 65536):
            yield b"[" * 65536

    try:
        response = await client.post(
            node.url + "/api/robot/command",
            content=chunks(),
            headers={"content-length": str(_BIG), "content-type": "application/json"},
        )
    except httpx.HTTPError as exc:
        return f"({type(exc).__name__})"
    return f"{response.status_code} ({len(response.content)} bytes)"


async def command(client: httpx.AsyncClient, node: LocalNode) -> str:
    try:
        response = await client.post(
            node.url + "/api/robot/command",
            json={"command": "stand"},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return str(response.status_code)


def leader_changes(node: LocalNode) -> float:
    response = node.get("/metrics", timeout_s=5)
    assert response is not None
    match = re.search(r"^ha_voice_leader_changes_total (\S+)$", response.text, re.M)
    return float(match.group(1)) if match else 0.0


@dataclass
class Flood:
    """What the clients saw."""

    commands: collections.Counter[str]
    commands_s: float
    big: list[str]
    slow: collections.Counter[str]


async def flood(cluster: LocalCluster, commands: int, slow: int) -> Flood:
    nodes = list(cluster.nodes.values())
    limits = httpx.Limits(max_connections=commands + 16, max_keepalive_connections=0)
    headers = cluster.auth_headers  # the cluster's token, as a client of a default setup sends
    async with httpx.AsyncClient(limits=limits, timeout=120, headers=headers) as client:
        started = time.perf_counter()
        slow_tasks = [asyncio.create_task(slow_connection(nodes[i % 3])) for i in range(slow)]
        big_tasks = [asyncio.create_task(big_body(client, node)) for node in nodes]
        answers = await asyncio.gather(*(command(client, nodes[i % 3]) for i in range(commands)))
        commands_s = time.perf_counter() - started
        return Flood(
            collections.Counter(answers),
            commands_s,
            list(await asyncio.gather(*big_tasks)),
            collections.Counter(await asyncio.gather(*slow_tasks)),
        )


def one_run(commands: int, slow: int) -> tuple[Flood, float]:
    """A fresh cluster, one flood: what the clients saw, and the leader changes it caused."""
    with SimRobotProcess() as sim, LocalCluster(3, extra_flags=(f"--robot={sim.spec}",)) as cluster:
        cluster.start()
        assert cluster.wait_for_primary(20.0) is not None
        time.sleep(1.0)
        changes_before = sum(leader_changes(node) for node in cluster.nodes.values())
        result = asyncio.run(flood(cluster, commands, slow))
        time.sleep(1.0)
        changes = sum(leader_changes(node) for node in cluster.nodes.values()) - changes_before
    return result, changes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, nargs="+", default=[0, 100, 1000])
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for commands in args.commands:
        for run in range(1, args.runs + 1):
            result, changes = one_run(commands, args.slow)
            counted = ", ".join(f"{status}: {n}" for status, n in sorted(result.commands.items()))
            slow_seen = ", ".join(f"{answer}: {n}" for answer, n in result.slow.items())
            rows.append(
                f"| {commands} | {run} | {counted or '-'} | {result.commands_s:.1f} | "
                f"{', '.join(result.big)} | {slow_seen} | {changes:g} |"
            )
    lines = [
        "## A flood, a 5 MB body and slow connections (HTTP limits)",
        "",
        "`python tests/bench/bench_http_abuse.py --commands "
        f"{' '.join(map(str, args.commands))} --slow {args.slow} --runs {args.runs}`: each run "
        "a fresh cluster of three nodes with the default configuration and the simulated Go2; "
        "at once that many concurrent `stand` commands (own connection, own key, round-robin "
        f"over the nodes, all from 127.0.0.1), a 5 MB body to each node and {args.slow} "
        "connections that never finish their request head. Leader changes are the sum of "
        "every node's `ha_voice_leader_changes_total` over the run.",
        "",
        "| commands | run | answers, by status | all answered within s | 5 MB bodies "
        "| slow connections | leader changes |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
