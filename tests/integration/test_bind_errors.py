"""A socket a node cannot bind at start is named, with the key that chooses it and a fix.

Real `ha-voice run` and `ha-voice witness` processes (LocalCluster's command lines) against a
port that another process of this test holds. Each ends as a configuration error does (exit 2),
before it serves anything. An address not assigned yet is waited for instead (boot).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from ha_voice.local_cluster import LocalCluster, LocalNode

CONFIG_ERROR = 2


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(2, witness=True) as local:
        yield local


def _exit_and_log(node: LocalNode) -> tuple[int | None, str]:
    node.start()
    code = node.wait(30.0)
    return code, node.log_path.read_text(encoding="utf-8")


def _holding(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", port))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


def test_api_port_in_use_names_the_port_and_its_key(cluster: LocalCluster) -> None:
    node = cluster.nodes["n1"]
    with _holding(socket.SOCK_STREAM, node.api_port):
        code, log = _exit_and_log(node)
    assert code == CONFIG_ERROR
    assert f"API port {node.api_port} (`port`) is in use by another process" in log
    assert "set `port` to a free port" in log


def test_cluster_port_in_use_names_the_port_and_its_key(cluster: LocalCluster) -> None:
    node = cluster.nodes["n2"]
    with _holding(socket.SOCK_DGRAM, node.cluster_port):
        code, log = _exit_and_log(node)
    assert code == CONFIG_ERROR
    assert f"cluster UDP port {node.cluster_port} (`cluster_port`) is in use" in log
    assert "Errno" not in log


def test_a_witness_names_its_port_too(cluster: LocalCluster) -> None:
    witness = cluster.nodes["w"]
    with _holding(socket.SOCK_STREAM, witness.api_port):
        code, log = _exit_and_log(witness)
    assert code == CONFIG_ERROR
    assert f"API port {witness.api_port} (`port`) is in use by another process" in log


def test_an_address_this_host_does_not_have_is_waited_for_naming_listen_address(
    cluster: LocalCluster,
) -> None:
    # At boot an address may not be assigned yet (DHCP, Wi-Fi): the node waits for it, saying
    # what it waits for, rather than failing a start that systemd would give up on.
    node = cluster.nodes["n1"]
    # TEST-NET-1 (RFC 5737): on no interface of any host; binding sends nothing.
    node.argv = [*node.argv, "--listen-address=192.0.2.1"]
    node.start()
    deadline = time.monotonic() + 30.0
    log = ""
    while time.monotonic() < deadline and "waiting for the network" not in log:
        time.sleep(0.2)
        log = node.log_path.read_text(encoding="utf-8") if node.log_path.exists() else ""
    assert node.running, log  # waiting, not ended
    assert "waiting for the network" in log
    assert "listen_address = '192.0.2.1'" in log
