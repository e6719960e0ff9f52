"""The seed's contract against three real daemons with the simulated Go2: the seed client's calls
in plain HTTP on a primary and a backup, spoken answers that follow the outcome in both
languages, posture words from every posture, and the seed's client riding through a SIGKILL.

The seed's client (`JetsonVoiceClient`, requests) reads: /health (status 200), /api/voice/status
(is_listening, robot_connected, last_command, command_count), /api/voice/listen (status,
recognized, processed, response), /api/robot/command (status), /api/commands (commands: a list
of phrases), /api/voice/start|stop (status 200).
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ha_voice.client import JetsonVoiceClient
from ha_voice.local_cluster import LocalCluster, LocalNode
from ha_voice.status import render_outcome


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3, extra_flags=("--robot=sim",)) as running:
        running.start()
        yield running


def _primary(cluster: LocalCluster) -> LocalNode:
    found = cluster.wait_for_primary(20.0)
    assert found is not None
    node = cluster.nodes[found[0]]
    for _ in range(200):  # accepting commands once the takeover's safe state is done
        status = httpx.get(f"{node.url}/api/voice/status", timeout=5).json()
        if status["leader"] == node.node_id:
            break
        time.sleep(0.05)
    return node


def _backup(cluster: LocalCluster, primary: LocalNode) -> LocalNode:
    return next(node for node in cluster.nodes.values() if node is not primary)


def _post(cluster: LocalCluster, node: LocalNode, path: str, body: Any = None) -> httpx.Response:
    """As the seed's client posts (requests.post(url, json=...)), with the cluster's token."""
    return httpx.post(f"{node.url}{path}", json=body, headers=cluster.auth_headers, timeout=15)


def _say(cluster: LocalCluster, node: LocalNode, text: str) -> dict[str, Any]:
    reply = _post(cluster, node, "/api/voice/listen", {"text": text})
    assert reply.status_code in (200, 502), reply.text
    body: dict[str, Any] = reply.json()
    return body


def _types(body: dict[str, Any], **expected: type | tuple[type, ...]) -> None:
    for name, kind in expected.items():
        assert name in body, f"the seed's field {name!r} is missing from {body}"
        assert isinstance(body[name], kind), f"{name} = {body[name]!r} is not {kind}"


@pytest.mark.parametrize("role", ["primary", "backup"])
def test_the_seed_clients_calls_answer_in_the_seeds_shape(cluster: LocalCluster, role: str) -> None:
    primary = _primary(cluster)
    node = primary if role == "primary" else _backup(cluster, primary)
    url = node.url
    # health_check
    health = httpx.get(f"{url}/health", timeout=5)
    assert health.status_code == 200
    _types(health.json(), status=str)
    # get_status
    status = httpx.get(f"{url}/api/voice/status", timeout=5)
    assert status.status_code == 200
    _types(
        status.json(),
        is_listening=bool,
        robot_connected=bool,
        last_command=(str, type(None)),
        command_count=int,
    )
    # get_commands: the seed prints each entry, a phrase
    commands = httpx.get(f"{url}/api/commands", timeout=5).json()
    _types(commands, commands=list)
    assert all(isinstance(phrase, str) for phrase in commands["commands"])
    assert {"sta op", "ga zitten", "ga liggen", "stop"} <= set(commands["commands"])
    assert any("sta op" in intent["phrases"] for intent in commands["intents"])
    # stop_listening ends the microphone loop only: posted text still runs
    assert _post(cluster, node, "/api/voice/stop").status_code == 200
    said = _say(cluster, node, "sta op")
    _types(said, status=str, recognized=str, processed=bool, response=str)
    assert (said["status"], said["recognized"], said["processed"]) == ("success", "sta op", True)
    assert said["response"] == "Ik sta op."
    # send_robot_command, in the seed's words
    robot = _post(cluster, node, "/api/robot/command", {"command": "sit", "params": {}})
    assert robot.status_code == 200, robot.text
    _types(robot.json(), status=str)
    # start_listening
    assert _post(cluster, node, "/api/voice/start").status_code == 200
    after = httpx.get(f"{primary.url}/api/voice/status", timeout=5).json()
    assert after["is_listening"] is True
    assert after["last_command"] == "sit"


def test_posture_words_work_from_every_posture_they_meet(cluster: LocalCluster) -> None:
    primary = _primary(cluster)
    walk = [
        ("ga liggen", "lie_down"),
        ("ga zitten", "sit"),  # from lying: stand up, balance, sit
        ("sta op", "balance_stand"),  # from sitting: RiseSit
        ("ga zitten", "sit"),
        ("ga liggen", "lie_down"),  # from sitting: RiseSit, StandDown
        ("ga zitten", "sit"),
        ("herstel", "balance_stand"),  # from sitting: RiseSit
        ("ga zitten", "sit"),
        ("sta op", "balance_stand"),
    ]
    for text, posture in walk:
        said = _say(cluster, primary, text)
        assert (said["status"], said["outcome"]) == ("success", "done"), (text, said)
        status = httpx.get(f"{primary.url}/api/voice/status", timeout=5).json()
        assert status["robot_posture"] == posture, (text, status)


def _language(cluster: LocalCluster, node: LocalNode, language: str | None) -> None:
    reply = _post(cluster, node, "/api/settings", {"language": language})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    ("language", "lie", "walk", "failed", "nonsense", "rejected"),
    [
        ("nl", "ga liggen", "loop vooruit", "Dat lukt me nu niet.", "vlieg naar de maan",
         "Dat heb ik niet verstaan."),
        ("en", "lie down", "walk forward", "I cannot do that now.", "fly to the moon",
         "I did not understand that."),
    ],
)  # fmt: skip
def test_the_spoken_answer_follows_the_outcome(
    cluster: LocalCluster,
    language: str,
    lie: str,
    walk: str,
    failed: str,
    nonsense: str,
    rejected: str,
) -> None:
    primary = _primary(cluster)
    _language(cluster, primary, language)
    try:
        lying = _say(cluster, primary, lie)
        assert lying["outcome"] == "done", lying
        success = lying["response"]
        assert success not in (failed, rejected)
        # The Go2 does not walk lying down: the robot refuses, and the answer says so.
        refused = _say(cluster, primary, walk)
        assert (refused["status"], refused["outcome"], refused["processed"]) == (
            "error",
            "failed",
            False,
        )
        assert refused["response"] == failed
        assert "3203" in refused["detail"]
        not_understood = _say(cluster, primary, nonsense)
        assert not_understood["status"] == "rejected"
        assert not_understood["intent"] is None
        assert not_understood["response"] == rejected
    finally:
        _language(cluster, primary, None)


def test_the_cli_says_what_the_robot_says(cluster: LocalCluster) -> None:
    """`ha-voice send` prints the answer's response as "robot says": never a success sentence
    for a command that failed."""
    primary = _primary(cluster)
    assert _say(cluster, primary, "ga liggen")["outcome"] == "done"
    line = render_outcome(_say(cluster, primary, "loop vooruit"), attempts=1)
    assert line.startswith("failed: walk_forward")
    assert "robot says: Dat lukt me nu niet." in line
    assert "Ik loop vooruit." not in line


# --- the seed's client, given one node's URL, rides through that node's SIGKILL -------------------


@pytest.fixture
def same_port_cluster() -> Iterator[LocalCluster]:
    """Three nodes on their own loopback addresses, all on the API port 8888 as on Jetsons (so
    each node knows the others' API URLs without mDNS)."""
    net = f"127.{random.randint(16, 250)}.{random.randint(0, 250)}"
    hosts = [f"{net}.{i + 2}" for i in range(3)]
    with LocalCluster(3, hosts=hosts, extra_flags=("--robot=sim",)) as running:
        running.start()
        yield running


def _seed_client(cluster: LocalCluster, node: LocalNode) -> JetsonVoiceClient:
    return JetsonVoiceClient(jetson_url=node.url, token=cluster.token)  # the seed's call


def test_the_seeds_client_given_one_url_fails_over_when_that_node_dies(
    same_port_cluster: LocalCluster,
) -> None:
    cluster = same_port_cluster
    primary = _primary(cluster)
    backup = _backup(cluster, primary)
    at_primary, at_backup = _seed_client(cluster, primary), _seed_client(cluster, backup)
    try:
        for client in (at_primary, at_backup):
            first = client.send_command("sta op")
            assert (first["status"], first["processed"]) == ("success", True), first
        # A backup dies: its client goes to another member.
        cluster.kill(backup.node_id, signal.SIGKILL)
        moved = at_backup.send_command("ga zitten")
        assert (moved["status"], moved["executed_by"]) == ("success", primary.node_id), moved
        assert at_backup.health_check()
        backup.start()  # back, so that two of three remain after the primary's death
        assert cluster.wait_for(backup.node_id, lambda v: v["leader"], 20.0) is not None
        # The primary dies: its client finds the new primary through the members it learned.
        cluster.kill(primary.node_id, signal.SIGKILL)
        after = at_primary.send_command("sta op")
        assert after["status"] == "success", after
        assert after["executed_by"] not in (None, primary.node_id)
        assert at_primary.get_status()["command_count"] >= 3
    finally:
        at_primary.close()
        at_backup.close()
