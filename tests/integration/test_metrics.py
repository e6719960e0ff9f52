"""/metrics of a running daemon passes `promtool check metrics` and says what happened."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from ha_voice.local_cluster import LocalCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as running:
        running.start()
        found = running.wait_for_primary(20.0)
        assert found is not None
        # Two of three elect a primary: wait until the third is heard too.
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            alive = re.search(r"^ha_voice_peers_alive (\S+)$", _metrics(running, found[0]), re.M)
            if alive is not None and float(alive.group(1)) == 2:
                break
            time.sleep(0.2)
        yield running


def _metrics(cluster: LocalCluster, node_id: str) -> str:
    response = cluster.nodes[node_id].get("/metrics")
    assert response is not None
    assert response.status_code == 200
    return response.text


@pytest.fixture
def metrics_text(cluster: LocalCluster) -> str:
    (primary,) = cluster.primaries()
    return _metrics(cluster, primary)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: apt-get install prometheus")
def test_promtool_finds_nothing_to_complain_about(metrics_text: str) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=metrics_text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
    assert result.stderr.strip() == "", result.stderr


def test_the_primary_reports_itself(metrics_text: str) -> None:
    values = dict(re.findall(r"^(ha_voice_[a-z_]+(?:\{[^}]*\})?) (\S+)$", metrics_text, re.M))
    assert values['ha_voice_role{role="primary"}'] == "1.0"
    assert values['ha_voice_role{role="backup"}'] == "0.0"
    assert values["ha_voice_is_primary"] == "1.0"
    assert float(values["ha_voice_term"]) >= 1
    assert float(values["ha_voice_peers_alive"]) == 2
    assert float(values["ha_voice_lease_remaining_seconds"]) > 0
    # Round trips per peer: every peer the primary hears answers its heartbeats.
    peers = re.findall(r'^ha_voice_peer_last_heard_seconds{peer="([^"]+)"}', metrics_text, re.M)
    assert len(peers) == 2
    for peer in peers:
        assert float(values[f'ha_voice_heartbeat_rtt_seconds_count{{peer="{peer}"}}']) > 0
    for reason in ("bad_mac", "replay", "unverified_boot", "identity_conflict", "truncated"):
        assert f'ha_voice_cluster_packets_dropped_total{{reason="{reason}"}}' in values


def _dropped(text: str, reason: str) -> float:
    match = re.search(
        rf'^ha_voice_cluster_packets_dropped_total{{reason="{reason}"}} (\S+)$', text, re.M
    )
    assert match is not None
    return float(match.group(1))


def test_bad_datagrams_are_dropped_counted_and_harmless(cluster: LocalCluster) -> None:
    node = next(n for n in cluster.nodes.values() if n.running)
    before = _metrics(cluster, node.node_id)
    junk = {
        "truncated": b"HV",
        "oversized": b"HV" + os.urandom(1400),
        "malformed": os.urandom(200),
        "bad_version": b"HV\x09" + os.urandom(120),
    }
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for payload in junk.values():
            for _ in range(5):
                sock.sendto(payload, (node.host, node.cluster_port))
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        after = _metrics(cluster, node.node_id)
        if all(_dropped(after, r) - _dropped(before, r) >= 5 for r in junk):
            break
        time.sleep(0.05)
    for reason in junk:
        assert _dropped(after, reason) - _dropped(before, reason) == 5, reason
    assert node.running
    assert len(cluster.primaries()) == 1
