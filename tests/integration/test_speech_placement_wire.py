"""Speech placement on a running cluster, the parts that need no model: every member hears every
other's load (backups too, which hear no heartbeats of each other), and the hand-off route takes
work from members only."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from zeroconf import ServiceInfo, Zeroconf

from ha_voice.cluster.discovery import NODE_SERVICE_TYPE, node_instance
from ha_voice.local_cluster import LocalCluster, LocalNode

NO_MODEL = "/nonexistent/ha-voice-no-model"  # a node whose speech never gets ready
HANDOFF = "/internal/speech/recognise?language=nl"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    flags = {n: [f"--whisper-model={NO_MODEL}"] for n in ("n1", "n2", "n3")}
    with LocalCluster(3, node_flags=flags) as running:
        running.start()
        assert running.wait_for_primary(30.0) is not None
        yield running


def speech_of(node: LocalNode, member: str) -> dict[str, Any] | None:
    """`member`'s speech as `node` has it; None if not heard yet, or if `node` did not answer
    in time (two xdist workers and three starting nodes share two cores: CI once had no
    answer within 5 s; the caller's deadline decides, a slow answer is not a missing load)."""
    response = node.get("/cluster", timeout_s=5.0)
    if response is None:
        return None
    assert response.status_code == 200, response.text
    view = response.json()
    (entry,) = [m for m in view["members"] if m["node"] == member]
    speech: dict[str, Any] | None = entry["speech"]
    return speech


def test_every_member_hears_every_other_members_load(cluster: LocalCluster) -> None:
    found = cluster.wait_for_primary(10.0)
    assert found is not None
    deadline = time.monotonic() + 30.0
    missing: list[tuple[str, str]] = []
    while time.monotonic() < deadline:
        missing = [
            (a, b)
            for a in cluster.nodes
            for b in cluster.nodes
            if a != b and speech_of(cluster.nodes[a], b) is None
        ]
        if not missing:
            break
        time.sleep(0.2)
    assert not missing, f"loads not heard (hearer, member): {missing}"
    backups = [n for n in cluster.nodes if n != found[0]]
    heard = speech_of(cluster.nodes[backups[0]], backups[1])
    assert heard is not None
    assert heard["ready"] is False  # its model never loads: it says so
    assert 0 <= heard["cpu"] <= 1
    assert heard["gpu"] is None  # no tegrastats here: unknown, not 0
    assert heard["reported_s"] < 2.0


def test_a_peers_load_is_a_gauge_on_every_node(cluster: LocalCluster) -> None:
    node = cluster.nodes["n2"]
    response = node.get("/metrics", timeout_s=5.0)
    assert response is not None
    text = response.text
    for peer in ("n1", "n3"):
        assert f'ha_voice_peer_speech_queue{{peer="{peer}"}} 0.0' in text
        assert f'ha_voice_peer_speech_ready{{peer="{peer}"}} 0.0' in text
    for outcome in ("local", "remote", "retried", "failed"):
        assert f'ha_voice_speech_handoffs_total{{outcome="{outcome}"}}' in text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-HA-Voice-Forwarded-By": "n1"},
        {"X-HA-Voice-Forwarded-By": "n1", "X-HA-Voice-Forward-Auth": "v3;i=0;t=0;m=x"},
    ],
    ids=["plain", "marker", "forged seal"],
)
@pytest.mark.parametrize("token", [False, True], ids=["anonymous", "client token"])
def test_the_handoff_route_refuses_anyone_but_a_member(
    cluster: LocalCluster, headers: dict[str, str], token: bool
) -> None:
    node = cluster.nodes["n2"]
    sent = {**headers, **(node.auth_headers if token else {})}
    response = httpx.post(node.url + HANDOFF, content=b"\x00" * 64_000, headers=sent, timeout=10)
    assert response.status_code == 403, response.text
    assert "members only" in response.json()["error"]


def test_a_refused_handoff_is_not_read(cluster: LocalCluster) -> None:
    """403 comes before the body: a stranger announcing a huge upload is answered at once."""
    node = cluster.nodes["n3"]
    head = f"POST {HANDOFF} HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 30}\r\n\r\n"
    with socket.create_connection((node.host, node.api_port), timeout=10.0) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(4096)
    assert answer.split(b" ", 2)[1] == b"403", answer[:200]
    assert node.get("/health", timeout_s=5.0) is not None


def test_the_stt_capability_says_whether_a_node_has_speech_configured() -> None:
    """mDNS TXT `caps`: "robot,stt" on a node with speech (ready or not), "robot" without."""
    flags = {"n1": [f"--whisper-model={NO_MODEL}"], "n2": ["--no-stt-enabled"]}
    with LocalCluster(2, mdns=True, node_flags=flags, extra_flags=["--two-node"]) as pair:
        pair.start()
        zc = Zeroconf(interfaces=["127.0.0.1"])
        try:
            caps = {name: txt_caps(zc, pair.cluster, name) for name in ("n1", "n2")}
        finally:
            zc.close()
    assert caps == {"n1": "robot,stt", "n2": "robot"}


def txt_caps(zc: Zeroconf, cluster: str, node: str, timeout_s: float = 15.0) -> str | None:
    name = f"{node_instance(cluster, node)}.{NODE_SERVICE_TYPE}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = ServiceInfo(NODE_SERVICE_TYPE, name)
        if info.request(zc, 1000):
            caps = info.properties.get(b"caps")
            return None if caps is None else caps.decode()
    return None
