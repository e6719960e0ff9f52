"""No client can keep another client's stop out, nor lock the members out, nor make the node run
out of descriptors: real `ha-voice run` processes with a simulated Go2.

Every node of a local cluster is 127.0.0.1, so forwards between nodes come from 127.0.0.1, the
members' address; the clients here come from other loopback addresses (every address of 127/8
is this machine's), each a client of its own. The nodes run with an open-file limit of 1024
(soft and hard, as `LimitNOFILE=1024` would set it), so that the kernel would refuse long
before the caps did if they did not fit under it. Under the old code 1100 connections that
never close exhausted the descriptors (EMFILE, 171 562 tracebacks in 20 s) and a client holding
1100 idle connections kept every stop out, directly and through a backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from ha_voice.local_cluster import LocalCluster, SimRobotProcess

POOL = 64
SHARE = 16
NOFILE = 1024
STOP = {"command": "stop"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) sets the nodes' open-file limit")
    flags = (
        f"--api-max-connections={POOL}",
        f"--api-max-connections-per-client={SHARE}",
        "--api-header-timeout-s=60",  # held connections stay held until the test lets go
    )
    with (
        SimRobotProcess() as sim,
        LocalCluster(
            3,
            extra_flags=(f"--robot={sim.spec}", *flags),
            prefixes=[("prlimit", f"--nofile={NOFILE}:{NOFILE}", "--")] * 3,
        ) as running,
    ):
        running.start()
        assert running.wait_for_primary(20.0) is not None
        time.sleep(0.3)  # the takeover's safe state is done right after the lease is valid
        yield running


def _roles(cluster: LocalCluster) -> tuple[str, str]:
    (primary,) = cluster.primaries()
    backup = next(n for n in cluster.nodes if n != primary)
    assert cluster.wait_for(backup, lambda v: v["leader"] == primary, 10.0) is not None
    return primary, backup


@contextlib.contextmanager
def _held(port: int, sources: list[str], each: int) -> Iterator[list[socket.socket]]:
    """`each` idle connections from every address of `sources`, closed at the end."""
    held = []
    try:
        for source in sources:
            for _ in range(each):
                held.append(socket.create_connection(("127.0.0.1", port), 10, (source, 0)))
        yield held
    finally:
        for sock in held:
            sock.close()


def _stop(cluster: LocalCluster, node: str, source: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30) as client:
        return client.post(
            cluster.nodes[node].url + "/api/robot/command",
            json=STOP,
            headers=cluster.auth_headers,
        )


def _refusals(cluster: LocalCluster, node: str) -> dict[tuple[str, str], float]:
    response = cluster.nodes[node].get("/metrics", timeout_s=10)
    assert response is not None
    found = re.findall(
        r'^ha_voice_api_refusals_total\{reason="(\w+)",status="(\d+)"\} (\S+)$',
        response.text,
        re.M,
    )
    return {(reason, status): float(value) for reason, status, value in found}


def test_a_client_over_its_share_cannot_keep_another_clients_stop_out(
    cluster: LocalCluster,
) -> None:
    primary, backup = _roles(cluster)
    ports = [cluster.nodes[n].api_port for n in (primary, backup)]
    with _held(ports[0], ["127.0.0.2"], 3 * SHARE), _held(ports[1], ["127.0.0.2"], 3 * SHARE):
        direct = _stop(cluster, primary, "127.0.0.3")
        through = _stop(cluster, backup, "127.0.0.3")
    for answer in (direct, through):
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "done"
    assert _refusals(cluster, primary)[("client_share", "503")] >= 2 * SHARE


def test_clients_that_fill_the_whole_pool_never_lock_the_members_out(
    cluster: LocalCluster,
) -> None:
    primary, backup = _roles(cluster)
    fillers = [f"127.0.0.{10 + i}" for i in range(POOL // SHARE)]
    with _held(cluster.nodes[primary].api_port, fillers, SHARE):
        direct = _stop(cluster, primary, "127.0.0.3")
        through = _stop(cluster, backup, "127.0.0.3")  # forwarded from 127.0.0.1: a member
    assert direct.status_code == 503
    assert "(api_max_connections)" in direct.json()["error"]
    assert through.status_code == 200, through.text
    assert through.json()["status"] == "done"


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _never_closing(
    port: int, sources: list[str], each: int, opened: threading.Event, done: threading.Event
) -> int:
    """Open `each` connections from every address of `sources` and close none of them until
    `done` (a refused one the node closes itself); how many were opened."""
    writers: list[asyncio.StreamWriter] = []

    async def one(source: str) -> None:
        for _ in range(each):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
                writers.append(writer)

    try:
        await asyncio.gather(*(one(source) for source in sources))
        opened.set()
        await asyncio.to_thread(done.wait)
        return len(writers)
    finally:
        for writer in writers:
            writer.transport.abort()


def test_a_flood_of_connections_that_never_close_stays_under_the_open_file_limit(
    cluster: LocalCluster,
) -> None:
    primary, backup = _roles(cluster)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    sources = [f"127.0.0.{30 + i}" for i in range(11)]
    each = 100  # 1100 connections: more than the node's 1024 descriptors
    if hard < len(sources) * each + 256:
        pytest.skip(f"this test opens {len(sources) * each} connections; the hard limit is {hard}")
    process = cluster.nodes[primary].process
    assert process is not None
    port = cluster.nodes[primary].api_port
    opened, done = threading.Event(), threading.Event()
    count: list[int] = []
    flood = threading.Thread(
        target=lambda: count.append(asyncio.run(_never_closing(port, sources, each, opened, done)))
    )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    most = _fds(process.pid)
    flood.start()
    try:
        while not opened.wait(0.01) and flood.is_alive():
            most = max(most, _fds(process.pid))
        through = _stop(cluster, backup, "127.0.0.3")  # while 1100 connections are held
        most = max(most, _fds(process.pid))
    finally:
        done.set()
        flood.join(60)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert count[0] > NOFILE
    assert through.status_code == 200, through.text
    assert most < NOFILE
    log = cluster.nodes[primary].log_path.read_text(errors="replace")
    assert "out of system resource" not in log
    assert len(log.splitlines()) < 100  # each kind of refusal logged once, then summarised
    refused = _refusals(cluster, primary)
    cap = refused.get(("connection_cap", "503"), 0) + refused.get(("client_share", "503"), 0)
    assert cap >= count[0] - POOL
    assert not any(reason.startswith("accept_") for reason, _ in refused)
