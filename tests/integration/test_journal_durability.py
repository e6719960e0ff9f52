"""A full cluster restart loses no acknowledged command; every node tells the same story."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from ha_voice.client import HAVoiceClient
from ha_voice.local_cluster import LocalCluster, SimRobotProcess


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with (
        SimRobotProcess() as sim,
        LocalCluster(3, extra_flags=(f"--robot={sim.spec}",)) as running,
    ):
        running.start()
        yield running


def _journal(cluster: LocalCluster, node: str) -> dict[str, Any]:
    response = cluster.nodes[node].get("/api/journal?limit=1000", timeout_s=5.0)
    assert response is not None
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def _wait(predicate: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    return None


def test_every_answered_command_survives_killing_every_node(cluster: LocalCluster) -> None:
    assert cluster.wait_for_primary(30.0) is not None
    urls = ",".join(node.url for node in cluster.nodes.values())
    with HAVoiceClient(url=urls, deadline_s=15.0, token=cluster.token) as client:
        answered = {}
        steps = (("say", "sta op"), ("say", "ga zitten"), ("command", "rise_sit"), ("say", "zwaai"))
        for i, (how, what) in enumerate(steps):
            key = f"restart-{i}"
            result = client.say(what, key=key) if how == "say" else client.command(what, key=key)
            assert result.status in ("done", "success"), result.body
            assert result.body.get("outcome", result.status) == "done", result.body
            answered[result.key] = result.index
        for node in cluster.nodes:  # all at once, nobody hands over
            cluster.kill(node)
        cluster.start()
        assert cluster.wait_for_primary(30.0) is not None
        again = client.say("ga zitten", key="restart-1")
        assert again.duplicate is True
        assert again.index == answered["restart-1"]

    def settled() -> bool:
        views = [_journal(cluster, node) for node in cluster.nodes]
        return all(v["commit_index"] == v["last_index"] == views[0]["last_index"] for v in views)

    assert _wait(settled, 10.0)
    for node in cluster.nodes:
        journal = _journal(cluster, node)
        held = {e["key"]: (e["index"], e["status"]) for e in journal["entries"]}
        for key, index in answered.items():
            assert held[key] == (index, "done"), (node, key)
    statuses = [cluster.nodes[n].get("/api/voice/status").json() for n in cluster.nodes]  # type: ignore[union-attr]
    assert {(s["command_count"], s["last_command"]) for s in statuses} == {(4, "zwaai")}, statuses
