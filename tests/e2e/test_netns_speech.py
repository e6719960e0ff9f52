"""Speech over a real network: three nodes in their own network namespaces, found by mDNS alone
(no static peers), each with the packaged Whisper base model, a simulated Go2 and a client in a
fourth namespace. Dutch that espeak-ng speaks, sent by the client to a backup, becomes one robot
command sent by the primary; with a backup cut off the LAN, the next upload to the other backup
is never placed on the cut-off node and still runs once.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ha_voice.local_cluster import LocalCluster
from ha_voice.robot.base import Action
from ha_voice.robot.sim import EntryKind
from ha_voice.voice.models import packaged_model
from tests.integration.netns import Lan, created
from tests.integration.test_speech_cluster import waiting_for
from tests.speech_corpus import have_espeak, say, wav_bytes

pytestmark = pytest.mark.skipif(
    not have_espeak(), reason="espeak-ng is not installed (.ci/run installs it)"
)

CLIENT = 3
ROBOT_PORT = 7601
_READY_TIMEOUT_S = 120.0

# Runs in the client's namespace: POST a WAV file as the seed's JSON body; prints status, body.
_LISTEN = """
import base64, json, sys, httpx
url, wav, key, token = sys.argv[1:5]
body = {"audio": base64.b64encode(open(wav, "rb").read()).decode(), "idempotency_key": key}
try:
    r = httpx.post(url, json=body, headers={"Authorization": "Bearer " + token}, timeout=90)
    print(json.dumps({"status": r.status_code, "body": r.json()}))
except Exception as exc:
    print(json.dumps({"status": None, "body": repr(exc)}))
"""
_GET = """
import json, sys, httpx
try:
    r = httpx.get(sys.argv[1], timeout=2)
    print(json.dumps({"status": r.status_code, "body": r.json()}))
except Exception as exc:
    print(json.dumps({"status": None, "body": repr(exc)}))
"""


@dataclass
class Net:
    lan: Lan
    cluster: LocalCluster
    robot_address: str
    tmp: Path

    def get(self, node: str, path: str) -> tuple[int | None, object]:
        argv = [sys.executable, "-c", _GET, self.cluster.nodes[node].url + path]
        reply = json.loads(self.lan[CLIENT].run(argv, check=False, timeout_s=10).stdout)
        return reply["status"], reply["body"]

    def listen(self, node: str, text: str, key: str) -> tuple[int | None, dict[str, object]]:
        wav = self.tmp / f"{key}.wav"
        wav.write_bytes(wav_bytes(say(text)))
        url = self.cluster.nodes[node].url + "/api/voice/listen"
        argv = [sys.executable, "-c", _LISTEN, url, str(wav), key, str(self.cluster.token)]
        reply = json.loads(self.lan[CLIENT].run(argv, check=False, timeout_s=120).stdout)
        return reply["status"], reply["body"]

    def primary(self, timeout_s: float = 40.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.cluster.running():
                if self.get(node.node_id, "/cluster/primary")[0] == 200:
                    return node.node_id
            time.sleep(0.2)
        raise AssertionError("no primary")

    def speech_ready(self, node: str) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        speech: object = None
        while time.monotonic() < deadline:
            status, health = self.get(node, "/health")
            speech = health.get("speech") if isinstance(health, dict) else None
            if status is not None and (speech is None or speech.get("ready") is True):
                return
            time.sleep(0.3)
        raise AssertionError(f"{node}'s speech not ready: {speech}")

    def robot_senders(self, action: Action) -> list[str]:
        script = (
            "import asyncio, json\n"
            "from ha_voice.robot.sim_server import fetch_journal\n"
            f"entries = asyncio.run(fetch_journal({self.robot_address!r}, {ROBOT_PORT}))\n"
            "print(json.dumps([[e.kind.value, e.action.value if e.action else None,"
            " e.accepted, e.token.node if e.token else None] for e in entries]))\n"
        )
        out = self.lan[CLIENT].run([sys.executable, "-c", script], check=True).stdout
        return [
            node
            for kind, name, accepted, node in json.loads(out)
            if kind == EntryKind.COMMAND.value and name == action.value and accepted and node
        ]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    with created(Lan(4, subnet="10.218.0.0/24", prefix="hvs")) as lan:
        robot_address = lan.address(CLIENT)
        listen = f"{robot_address}:{ROBOT_PORT}"
        sim = lan[CLIENT].spawn([sys.executable, "-m", "ha_voice", "sim-robot", "--listen", listen])
        sim.wait_for(lambda line: line.startswith("listening"), 15.0)
        with LocalCluster(
            3,
            hosts=[lan.address(i) for i in range(3)],
            prefixes=[lan[i].exec_argv([]) for i in range(3)],
            mdns=True,
            static_peers=False,
            extra_flags=(f"--robot=sim://{listen}", f"--whisper-model={packaged_model('base')}"),
        ) as cluster:
            cluster.start()
            yield Net(lan, cluster, robot_address, tmp_path)


@waiting_for("stt", "audio")
def test_speech_to_a_backup_on_a_real_lan_runs_once_on_the_primary(net: Net) -> None:
    net.primary()
    for node in net.cluster.nodes:
        net.speech_ready(node)
    primary = net.primary()
    first, second = (n for n in net.cluster.nodes if n != primary)
    status, body = net.listen(first, "ga liggen", "netns-lie")
    assert status == 200, body
    assert (body["intent"], body["executed_by"]) == ("lie_down", primary), body
    assert net.robot_senders(Action.STAND_DOWN) == [primary]
    # A backup cut off the LAN: the other backup still hears, the primary still runs it once.
    assert net.lan.bridge is not None
    net.lan.bridge.ip("link", "set", net.lan.port(int(first[1:]) - 1), "down")
    status, body = net.listen(second, "opstaan", "netns-stand")  # the robot lies: it may stand
    assert status == 200, body
    assert (body["intent"], body["executed_by"]) == ("stand_up", primary), body
    assert body["stt_node"] in (second, primary), body  # never the node that is cut off
    assert net.robot_senders(Action.STAND_UP) == [primary]
    assert net.robot_senders(Action.STAND_DOWN) == [primary]
