"""Benchmark: the connection and read abuse of issue 9's breaking session, before and after.

Not a pass/fail test; prints one markdown row per scenario, labelled `--label`. Run it from the
checkout under test, so that the nodes (`python -m ha_voice`, started in the current
directory) are that code:

    cd CHECKOUT && python /path/to/tests/bench/bench_connections.py --label after [--seconds 20]

Each scenario starts a fresh cluster of three `ha-voice run` processes on 127.0.0.1 (default
configuration unless said) and a simulated Go2. Every node of a local cluster is 127.0.0.1,
the members' address, so the abusive clients come from other loopback addresses (127.0.0.9,
127.0.0.30…) and the probing client from 127.0.0.10.

- held: 1100 idle connections from one address to the primary, each reopened as soon as the
  node closes it, for `--seconds`; once a second a stop from another client straight to the
  primary and one through a backup.
- never-closing: nodes under `prlimit --nofile=1024:20000` (as the breaking session ran
  them); 1500 connections from 11 addresses that are never closed; a stop straight to the
  primary and one through a backup meanwhile; the primary's descriptors at most, its accept
  failures logged, its log's size.
- tls-idle: the nodes serve HTTPS; 1100 connections from one address that never send a
  ClientHello; the primary's descriptors at most, how many the node has closed 13 s after the
  first (api_header_timeout_s is 10 s), and whether an HTTPS request is answered.
- read-flood: 1000 commands in the journal (transcripts of 200 characters, about a kilobyte of
  JSON each), then 200 kept-alive connections from 127.0.0.1 reading
  /api/journal?limit=1000 back to back for `--seconds`; answers by status, leader changes (the
  sum of every node's ha_voice_leader_changes_total), and the p99 bucket of the primary's
  heartbeat lateness during the flood. `read-flood-raised` does the same with the rate
  limits raised out of reach, so that every read is served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for loadgen, doc_commands

import httpx
from doc_commands import block, run
from loadgen import Target, flood, read_flood

from ha_voice.local_cluster import LocalCluster, SimRobotProcess

ABUSER, PROBE = "127.0.0.9", "127.0.0.10"
PKI_NODES = {"n1": "jetson-1", "n2": "jetson-2", "n3": "jetson-3"}


@contextlib.contextmanager
def _cluster(
    flags: Sequence[str] = (),
    prefix: Sequence[str] = (),
    tls: Path | None = None,
) -> Iterator[LocalCluster]:
    node_flags = {}
    if tls is not None:
        node_flags = {
            node: [
                f"--tls-cert-file={tls / f'{name}.crt'}",
                f"--tls-key-file={tls / f'{name}.key'}",
                f"--tls-ca-file={tls / 'ca.crt'}",
            ]
            for node, name in PKI_NODES.items()
        }
    with (
        SimRobotProcess() as sim,
        LocalCluster(
            3,
            extra_flags=(f"--robot={sim.spec}", *flags),
            prefixes=[tuple(prefix)] * 3 if prefix else (),
            node_flags=node_flags,
            ca_file=None if tls is None else tls / "ca.crt",
        ) as cluster,
    ):
        cluster.start()
        assert cluster.wait_for_primary(30.0) is not None
        time.sleep(0.5)
        yield cluster


def _roles(cluster: LocalCluster) -> tuple[str, str]:
    (primary,) = cluster.primaries()
    return primary, next(n for n in cluster.nodes if n != primary)


def _stop(cluster: LocalCluster, node: str) -> str:
    transport = httpx.HTTPTransport(local_address=PROBE, verify=cluster.nodes[node].tls or True)
    try:
        with httpx.Client(transport=transport, timeout=30) as client:
            answer = client.post(
                cluster.nodes[node].url + "/api/robot/command",
                json={"command": "stop"},
                headers=cluster.auth_headers,
            )
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return str(answer.status_code) if answer.status_code != 200 else answer.json()["status"]


def _metric_sum(cluster: LocalCluster, node: str, name: str) -> float:
    response = cluster.nodes[node].get("/metrics", timeout_s=10)
    if response is None:
        return float("nan")
    found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", response.text, re.M)
    return sum(float(value) for value in found)


def _fds(cluster: LocalCluster, node: str) -> int:
    process = cluster.nodes[node].process
    assert process is not None
    return len(os.listdir(f"/proc/{process.pid}/fd"))


def _in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    return thread, result


def held(seconds: float) -> list[str]:
    with _cluster() as cluster:
        primary, backup = _roles(cluster)
        port = cluster.nodes[primary].api_port
        done = threading.Event()

        async def hold_one() -> None:
            while not done.is_set():
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, local_addr=(ABUSER, 0)
                    )
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(reader.read(), 1.0)
                writer.close()

        async def holders() -> None:
            await asyncio.gather(*(hold_one() for _ in range(1100)))

        thread, _ = _in_thread(lambda: asyncio.run(holders()))
        time.sleep(2)
        answers: Counter[str] = Counter()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            answers[f"direct {_stop(cluster, primary)}"] += 1
            answers[f"via backup {_stop(cluster, backup)}"] += 1
            time.sleep(1)
        done.set()
        thread.join(30)
        refusals = _metric_sum(cluster, primary, "ha_voice_api_refusals_total")
        log_lines = len(cluster.nodes[primary].log_path.read_text(errors="replace").splitlines())
    return [_counts(answers), f"{refusals:.0f} refusals counted, {log_lines} log lines"]


def never_closing(seconds: float) -> list[str]:
    with _cluster(prefix=("prlimit", "--nofile=1024:20000", "--")) as cluster:
        primary, backup = _roles(cluster)
        port = cluster.nodes[primary].api_port
        done = threading.Event()

        async def open_many() -> None:
            writers = []

            async def one(source: str) -> None:
                for _ in range(137):
                    with contextlib.suppress(OSError):
                        _, writer = await asyncio.open_connection(
                            "127.0.0.1", port, local_addr=(source, 0)
                        )
                        writers.append(writer)

            await asyncio.gather(*(one(f"127.0.0.{30 + i}") for i in range(11)))
            await asyncio.to_thread(done.wait)
            for writer in writers:
                writer.transport.abort()

        thread, _ = _in_thread(lambda: asyncio.run(open_many()))
        most, answers = 0, Counter[str]()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            most = max(most, _fds(cluster, primary))
            answers[f"direct {_stop(cluster, primary)}"] += 1
            answers[f"via backup {_stop(cluster, backup)}"] += 1
            time.sleep(1)
        done.set()
        thread.join(30)
        log = cluster.nodes[primary].log_path
        emfile = log.read_text(errors="replace").count("out of system resource")
        size = log.stat().st_size
    return [
        _counts(answers),
        f"at most {most} descriptors; {emfile} accept failures logged; log {size} bytes",
    ]


def tls_idle(seconds: float) -> list[str]:
    with tempfile.TemporaryDirectory() as directory:
        pki = Path(directory)
        run(block("tls-certificates"), pki)
        with _cluster(tls=pki) as cluster:
            primary, _ = _roles(cluster)
            port = cluster.nodes[primary].api_port
            started = time.monotonic()
            idle = [
                socket.create_connection(("127.0.0.1", port), 10, (ABUSER, 0)) for _ in range(1100)
            ]
            opened_s = time.monotonic() - started
            most = 0
            while time.monotonic() - started < 13:
                most = max(most, _fds(cluster, primary))
                time.sleep(0.2)
            closed = 0
            for sock in idle:
                sock.setblocking(False)
                try:
                    closed += sock.recv(1, socket.MSG_PEEK) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    closed += 1
            health = cluster.nodes[primary].get("/health", timeout_s=5)
            for sock in idle:
                sock.close()
    answered = "answered" if health is not None else "not answered"
    return [
        f"{closed}/1100 closed by the node 13 s after the first",
        f"at most {most} descriptors (all open in {opened_s:.1f} s); HTTPS /health {answered}",
    ]


def read_flood_scenario(seconds: float, flags: Sequence[str]) -> list[str]:
    with _cluster(flags) as cluster:
        primary, _ = _roles(cluster)
        node = cluster.nodes[primary]
        target = Target(node.host, node.api_port)
        body = json.dumps({"text": "stop " + "\u0001" * 195}).encode()
        headers = {"Content-Type": "application/json", **cluster.auth_headers}
        filled = 0
        while filled < 1000:  # 25 at a time: under max_pending_commands and the rate limit
            replies = asyncio.run(flood([target], 25, "/api/voice/listen", lambda _: body, headers))
            filled += sum(reply.status == 200 for reply in replies)
            time.sleep(0.5)
        size = len(httpx.get(node.url + "/api/journal?limit=1000", timeout=30).content)
        changes = _changes(cluster)
        before = _lateness(cluster, primary)
        started = time.monotonic()
        statuses = asyncio.run(read_flood(target, 200, seconds, "/api/journal?limit=1000"))
        elapsed = time.monotonic() - started
        after = _lateness(cluster, primary)
        changed = _changes(cluster) - changes
    late = {le: after[le] - before[le] for le in after}
    total = late["+Inf"] or 1.0
    p99 = next(le for le in after if late[le] / total >= 0.99)
    answered = sum(count for status, count in statuses.items() if status)
    by_status = _counts(Counter({str(k): v for k, v in statuses.items()}))
    return [
        f"{by_status} ({answered / elapsed:.0f}/s; {size // 1000} KB a page)",
        f"{changed:.0f} leader changes; heartbeat lateness p99 ≤ {p99} s",
    ]


def _changes(cluster: LocalCluster) -> float:
    return sum(_metric_sum(cluster, n, "ha_voice_leader_changes_total") for n in cluster.nodes)


def _lateness(cluster: LocalCluster, node: str) -> dict[str, float]:
    response = cluster.nodes[node].get("/metrics", timeout_s=10)
    assert response is not None
    found = re.findall(
        r'^ha_voice_heartbeat_lateness_seconds_bucket\{le="([^"]+)"\} (\S+)$', response.text, re.M
    )
    return {le: float(value) for le, value in found}


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{key}: {count}" for key, count in sorted(counts.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    scenarios: dict[str, Callable[[], list[str]]] = {
        "held": lambda: held(args.seconds),
        "never-closing": lambda: never_closing(args.seconds),
        "tls-idle": lambda: tls_idle(args.seconds),
        "read-flood": lambda: read_flood_scenario(args.seconds, ()),
        "read-flood-raised": lambda: read_flood_scenario(
            args.seconds, ("--api-rate-per-s=10000", "--api-rate-burst=100000")
        ),
    }
    for name, scenario in scenarios.items():
        if args.only is None or name in args.only:
            print(f"| {args.label} | {name} | " + " | ".join(scenario()) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
