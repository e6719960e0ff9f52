"""The default configuration on the robot's own network: namespaces whose only interface has an
address and no gateway (no default route, no multicast route), as a Jetson wired only to the Go2
has, and one whose interface comes up after the node started, as at boot."""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ha_voice.local_cluster import LocalCluster
from tests.integration.netns import Lan, created


@pytest.fixture
def lan() -> Iterator[Lan]:
    with created(Lan(2, subnet="10.221.0.0/24", prefix="hvg")) as network:
        for node in network.nodes:
            node.ip("route", "del", "224.0.0.0/4", "dev", "eth0")  # no route but the link's
        yield network


def defaults_cluster(lan: Lan) -> LocalCluster:
    """Two nodes found by mDNS, bound as the defaults bind (listen_address 0.0.0.0)."""
    return LocalCluster(
        2,
        hosts=[lan.address(i) for i in range(2)],
        prefixes=[lan[i].exec_argv([]) for i in range(2)],
        mdns=True,
        static_peers=False,
        api_token=False,
        extra_flags=("--listen-address=0.0.0.0",),
    )


def view(lan: Lan, index: int) -> dict[str, Any] | None:
    """Node `index`'s /cluster, asked from inside its namespace (the API binds every address)."""
    url = "http://127.0.0.1:8888/cluster"
    answer = lan[index].run(["curl", "-s", "-m", "1", url], check=False)
    try:
        return dict(json.loads(answer.stdout)) if answer.returncode == 0 else None
    except json.JSONDecodeError:
        return None


def wait_for_one_primary(lan: Lan, cluster: LocalCluster, timeout_s: float = 40.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for index, node in enumerate(cluster.nodes.values()):
            assert node.running, logs(cluster)
            seen = view(lan, index)
            if seen and seen.get("role") == "primary":
                return str(seen["node"])
        time.sleep(0.3)
    raise AssertionError(f"no primary\n{logs(cluster)}")


def logs(cluster: LocalCluster) -> str:
    return "\n".join(
        f"--- {n.node_id}\n{n.log_path.read_text()[-3000:]}"
        for n in cluster.nodes.values()
        if n.log_path.exists()
    )


def test_defaults_elect_on_a_network_without_a_gateway(lan: Lan) -> None:
    with defaults_cluster(lan) as cluster:
        cluster.start()
        # Two voters: a primary needs both, so each found the other by mDNS.
        primary = wait_for_one_primary(lan, cluster)
        index = int(primary[1:]) - 1
        other = 1 - index
        addresses = {m["node"]: m["address"] for m in (view(lan, index) or {})["members"]}
        # The peer advertised the address of its one interface, found without any route.
        assert str(addresses[f"n{other + 1}"]).startswith(lan.address(other)), addresses


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """Where the nodes' sd_notify goes (a path: it is reached from any network namespace)."""
    with tempfile.TemporaryDirectory(prefix="hv-") as short:
        path = Path(short) / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(0.2)
            monkeypatch.setenv("NOTIFY_SOCKET", str(path))
            yield sock


def messages(sock: socket.socket) -> list[str]:
    found = []
    with contextlib.suppress(TimeoutError):
        while True:
            found.append(sock.recv(4096).decode())
    return found


def test_a_node_started_before_its_network_waits_for_it(
    lan: Lan, notify_socket: socket.socket
) -> None:
    lan[0].ip("link", "set", "eth0", "down")
    with defaults_cluster(lan) as cluster:
        cluster.start()
        n1 = cluster.nodes["n1"]
        deadline = time.monotonic() + 30
        while "waiting for the network" not in n1.log_path.read_text():
            assert n1.running, logs(cluster)
            assert time.monotonic() < deadline, logs(cluster)
            time.sleep(0.2)
        assert "listen_address = '0.0.0.0' with mdns = true" in n1.log_path.read_text()
        told = messages(notify_socket)
        # systemd hears what the node waits for, and that the wait is not a start timeout.
        waiting = [m for m in told if "STATUS=waiting for the network" in m]
        assert waiting, told
        assert all("EXTEND_TIMEOUT_USEC=" in m for m in waiting)
        lan[0].ip("link", "set", "eth0", "up")
        wait_for_one_primary(lan, cluster)
        assert "network ready after" in n1.log_path.read_text()
        # A node can win its election before it says READY (that comes once its API serves and
        # its start-up garbage is collected), so the second READY may still be on its way.
        deadline = time.monotonic() + 20
        while sum(m.startswith("READY=1") for m in told) < 2 and time.monotonic() < deadline:
            told += messages(notify_socket)
        assert sum(m.startswith("READY=1") for m in told) == 2, told
