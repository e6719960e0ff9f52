"""A partitioned primary, mid-walk, on a real network: it stops commanding when its lease ends.

Two networks, as on a real Go2: the cluster LAN (one bridge) and the robot's LAN (another
bridge, with `ha-voice sim-robot` in its own namespace). Cutting the primary's cluster link
leaves its robot link up, so only its own lease can stop it; the simulated robot's journal
then proves it sent nothing after its lease and that no two nodes drove the robot at once.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ha_voice.local_cluster import LocalCluster
from ha_voice.robot.base import Action
from tests.integration.netns import Lan, Netns, NetnsUnavailable

ROBOT_NET = "10.216.0"
ROBOT_ADDRESS = f"{ROBOT_NET}.100"
ROBOT_PORT = 7600
CLIENT = 3

_POST = """
import json, sys, httpx
headers = {"Authorization": "Bearer " + sys.argv[3]}
r = httpx.post(sys.argv[1], json=json.loads(sys.argv[2]), headers=headers, timeout=30)
print(r.status_code, r.text, flush=True)
"""


@dataclass
class Rig:
    lan: Lan
    robot_ns: Netns
    robot_bridge: Netns
    cluster: LocalCluster

    def post(self, node: str, path: str, body: dict[str, object]) -> str:
        url = f"{self.cluster.nodes[node].url}{path}"
        argv = [sys.executable, "-c", _POST, url, json.dumps(body), str(self.cluster.token)]
        return self.lan[CLIENT].run(argv, check=False, timeout_s=40).stdout

    def primary(self, exclude: str | None = None, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.cluster.running():
                if node.node_id == exclude:
                    continue
                status = (
                    self.lan[CLIENT]
                    .run(
                        [sys.executable, "-c", _GET_STATUS, f"{node.url}/cluster/primary"],
                        check=False,
                    )
                    .stdout.strip()
                )
                if status == "200":
                    return node.node_id
            time.sleep(0.2)
        raise AssertionError("no primary")

    def robot(self, what: str) -> object:
        script = _ROBOT_QUERY.format(what=what, host=ROBOT_ADDRESS, port=ROBOT_PORT)
        out = self.robot_ns.run([sys.executable, "-c", script], check=True).stdout
        return json.loads(out)


_GET_STATUS = """
import sys, httpx
try:
    print(httpx.get(sys.argv[1], timeout=0.5).status_code)
except Exception:
    print(0)
"""

_ROBOT_QUERY = """
import asyncio, json
from ha_voice.robot.sim_server import fetch_{what}
result = asyncio.run(fetch_{what}("{host}", {port}))
if "{what}" == "verdict":
    print(json.dumps({{"ok": result.ok, "senders": list(result.senders),
                      "violations": [str(v) for v in result.violations]}}))
else:
    print(json.dumps([[e.token.node if e.token else None, e.action.value if e.action else None]
                      for e in result]))
"""


def _robot_network(lan: Lan) -> tuple[Netns, Netns]:
    """A second bridge with the robot on it and an `eth1` into every node's namespace."""
    bridge = Netns.create(f"{lan.prefix}-rbr")
    bridge.ip("link", "add", "br0", "type", "bridge")
    bridge.ip("link", "set", "br0", "up")
    robot = Netns.create(f"{lan.prefix}-robot")
    for index, node in [(100, robot), *((i, lan[i]) for i in range(3))]:
        name = "eth0" if node is robot else "eth1"
        port = f"r{index}"
        bridge.ip("link", "add", port, "type", "veth", "peer", "name", name, "netns", node.name)
        bridge.ip("link", "set", port, "master", "br0", "up")
        host = 100 if node is robot else index + 1
        node.ip("addr", "add", f"{ROBOT_NET}.{host}/24", "dev", name)
        node.ip("link", "set", name, "up")
    return bridge, robot


@pytest.fixture
def rig() -> Iterator[Rig]:
    lan = Lan(4, subnet="10.217.0.0/24", prefix="hvr")
    try:
        lan.create()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    robot_bridge = robot_ns = None
    cluster = None
    try:
        robot_bridge, robot_ns = _robot_network(lan)
        listen = f"{ROBOT_ADDRESS}:{ROBOT_PORT}"
        sim = robot_ns.spawn([sys.executable, "-m", "ha_voice", "sim-robot", "--listen", listen])
        sim.wait_for(lambda line: line.startswith("listening"), 15.0)
        cluster = LocalCluster(
            3,
            hosts=[lan.address(i) for i in range(3)],
            prefixes=[lan[i].exec_argv([]) for i in range(3)],
            extra_flags=(f"--robot=sim://{listen}",),
        )
        cluster.start()
        yield Rig(lan, robot_ns, robot_bridge, cluster)
    finally:
        if cluster is not None:
            cluster.close()
        for namespace in (robot_ns, robot_bridge):
            if namespace is not None:
                namespace.close()
        lan.close()


def test_a_partitioned_primary_mid_walk_stops_commanding_when_its_lease_ends(rig: Rig) -> None:
    old = rig.primary()
    time.sleep(0.5)
    assert rig.post(old, "/api/voice/listen", {"text": "sta op"}).startswith("200")
    walk = {"command": "move", "params": {"vx": 0.3}, "duration_s": 8.0}
    url = f"{rig.cluster.nodes[old].url}/api/robot/command"
    walker = rig.lan[CLIENT].popen(
        [sys.executable, "-c", _POST, url, json.dumps(walk), str(rig.cluster.token)],
        stdout=-1,
        stderr=-1,
    )
    time.sleep(1.0)  # walking
    assert rig.lan.bridge is not None
    rig.lan.bridge.ip("link", "set", rig.lan.port(int(old[1:]) - 1), "down")  # cluster link only
    new = rig.primary(exclude=old)
    assert new != old
    walker.wait(30)
    assert rig.post(new, "/api/voice/listen", {"text": "ga zitten"}).startswith("200")
    verdict = rig.robot("verdict")
    assert isinstance(verdict, dict)
    assert verdict["ok"], verdict["violations"]
    assert set(verdict["senders"]) == {old, new}
    journal = rig.robot("journal")
    assert isinstance(journal, list)
    first_of_new = next(action for node, action in journal if node == new)
    assert first_of_new == Action.STOP_MOVE.value
