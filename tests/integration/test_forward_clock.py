"""A forward's seal does not depend on the wall clock: a backup a year behind (a Jetson without
RTC battery before NTP) forwards a command for a trusted client, and the primary runs it.

Three real daemons and a simulated Go2. Only 127.0.0.77 is a trusted network: the test client
speaks from there, while the backup reaches the primary from 127.0.0.1, so only the seal can
vouch for the client's address. Seals compared wall clocks: every one of that backup's was
refused as stale, and the command got 401.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ha_voice.local_cluster import LocalCluster, SimRobotProcess

CLIENT = "127.0.0.77"
BEHIND = ["faketime", "-f", "-365d"]


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    if shutil.which("faketime") is None:
        pytest.fail("needs faketime (apt-get install faketime; .ci/run installs it)")
    with (
        SimRobotProcess() as sim,
        LocalCluster(
            3, extra_flags=(f"--robot={sim.spec}", f"--trusted-networks={CLIENT}/32")
        ) as running,
    ):
        yield running


def _poll(cluster: LocalCluster, node: str, check: Any, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    view: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        view = cluster.nodes[node].cluster()
        if view is not None and check(view):
            return view
        time.sleep(0.1)
    raise AssertionError(f"{node} /cluster: {view}")


def _as_client(url: str, body: dict[str, Any]) -> httpx.Response:
    """POST from the trusted address, without a token."""
    transport = httpx.HTTPTransport(local_address=CLIENT)
    with httpx.Client(transport=transport, timeout=20.0) as client:
        return client.post(url, json=body)


def test_a_backup_a_year_behind_forwards_a_trusted_clients_command(cluster: LocalCluster) -> None:
    late = "n3"
    for node_id, node in cluster.nodes.items():
        if node_id != late:
            node.start()
    found = cluster.wait_for_primary(20.0)
    assert found is not None
    primary = found[0]
    cluster.nodes[late].prefix = BEHIND
    cluster.nodes[late].start()
    backup = _poll(cluster, late, lambda v: v["leader"] == primary and v["status"] == "ok", 20.0)
    # The primary has admitted the boot the backup runs (its acks come from it).
    _poll(cluster, primary, lambda v: v["term"] == backup["term"], 5.0)
    time.sleep(0.3)  # the takeover's safe state is done right after the lease is valid
    url = cluster.nodes[late].url + "/api/robot/command"
    answer = _as_client(url, {"command": "stand"})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["executed_by"]) == ("done", primary)
    assert answer.headers["x-ha-voice-forwarded-by"] == late
    journal = cluster.nodes[primary].get("/api/journal?limit=1000", timeout_s=5.0)
    assert journal is not None
    sources = [entry["source"] for entry in journal.json()["entries"]]
    assert f"{CLIENT} via {late}" in sources
    # And the primary refused nothing of the backup's as stale.
    metrics = cluster.nodes[primary].get("/metrics")
    assert metrics is not None
    ignored = [
        line
        for line in metrics.text.splitlines()
        if line.startswith("ha_voice_forward_markers_ignored_total") and not line.endswith(" 0.0")
    ]
    assert ignored == []
