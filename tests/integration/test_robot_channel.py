"""Three real daemons and one `ha-voice sim-robot` process: only the primary drives the robot.

The simulated robot keeps a journal of every command with its sender, term and index, and judges
it: no two writers at once, no stale term, no command after its sender's lease.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ha_voice.local_cluster import LocalCluster, SimRobotProcess
from ha_voice.robot.base import Action
from ha_voice.robot.sim import Verdict
from ha_voice.robot.sim_server import fetch_journal, fetch_verdict


@dataclass
class Rig:
    cluster: LocalCluster
    host: str
    port: int

    def verdict(self) -> Verdict:
        return asyncio.run(fetch_verdict(self.host, self.port))

    def journal(self) -> Any:
        return asyncio.run(fetch_journal(self.host, self.port))

    def say(self, node: str, text: str, timeout_s: float = 15.0) -> httpx.Response:
        return self.cluster.nodes[node].post("/api/voice/listen", {"text": text}, timeout_s)


@pytest.fixture
def rig() -> Iterator[Rig]:
    with (
        SimRobotProcess() as sim,
        LocalCluster(3, extra_flags=(f"--robot={sim.spec}",)) as cluster,
    ):
        cluster.start()
        yield Rig(cluster, sim.host, sim.port)


def _primary(rig: Rig) -> str:
    found = rig.cluster.wait_for_primary(20.0)
    assert found is not None
    time.sleep(0.3)  # the takeover's safe state is done right after the lease is valid
    return found[0]


def test_only_the_primary_drives_the_robot(rig: Rig) -> None:
    primary = _primary(rig)
    for text, intent in (("sta op", "stand_up"), ("loop vooruit", "walk_forward")):
        reply = rig.say(primary, text)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert (body["status"], body["processed"], body["intent"]) == ("success", True, intent)
        assert body["recognized"] == text
        assert body["response"]
    # A backup forwards to the primary: the client with a stale address still succeeds.
    backup = next(n for n in rig.cluster.nodes if n != primary)
    forwarded = rig.say(backup, "ga zitten")
    assert forwarded.status_code == 200, forwarded.text
    assert forwarded.json()["executed_by"] == primary
    assert forwarded.headers["x-ha-voice-forwarded-by"] == backup
    verdict = rig.verdict()
    assert verdict.ok, verdict
    assert verdict.senders == (primary,)
    assert verdict.accepted > 20  # the walk was a stream of moves


def test_unknown_commands_and_junk_are_refused_clearly(rig: Rig) -> None:
    primary = _primary(rig)
    node = rig.cluster.nodes[primary]
    url = node.url
    unknown = node.post("/api/robot/command", {"command": "fly"}, 5)
    assert unknown.status_code == 400
    assert "stand" in unknown.json()["known"]
    junk = node.post("/api/voice/listen", {"text": ""}, 5)
    assert junk.status_code == 422
    rejected = rig.say(primary, "ik bezit een hond")
    assert rejected.json()["processed"] is False
    listed = httpx.get(f"{url}/api/commands", timeout=5).json()
    assert "sta op" in listed["commands"]
    assert any("sta op" in c["phrases"] for c in listed["intents"])


def test_a_primary_paused_mid_walk_never_commands_again_after_its_lease(rig: Rig) -> None:
    old = _primary(rig)
    assert rig.say(old, "sta op").status_code == 200
    url = f"{rig.cluster.nodes[old].url}/api/robot/command"
    walk = {"command": "move", "params": {"vx": 0.3}, "duration_s": 6.0}
    headers = rig.cluster.auth_headers
    walker = threading.Thread(
        target=lambda: httpx.post(url, json=walk, headers=headers, timeout=30), daemon=True
    )
    walker.start()
    time.sleep(0.5)  # streaming now
    rig.cluster.kill(old, signal.SIGSTOP)
    found = rig.cluster.wait_for_primary(10.0, exclude=old)
    assert found is not None
    new = found[0]
    time.sleep(1.0)
    rig.cluster.kill(old, signal.SIGCONT)
    walker.join(15)
    time.sleep(1.0)
    verdict = rig.verdict()
    assert verdict.ok, verdict  # no overlap, no stale term, nothing after the old lease
    assert set(verdict.senders) == {old, new}
    entries = rig.journal()
    takeover = [e for e in entries if e.token is not None and e.token.node == new]
    assert takeover
    assert takeover[0].action is Action.STOP_MOVE  # the new primary made the robot safe first
