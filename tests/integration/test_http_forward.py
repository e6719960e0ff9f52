"""A backup's wait on the primary is bounded by the election, not by an HTTP timeout.

Three real daemons and a simulated Go2. A primary frozen with SIGSTOP accepts TCP connections
(the kernel does) but never answers: the backup must give up as soon as the primary has been
silent for an election timeout, and answer 503 with Retry-After. A primary that is alive and
slow (a move) is waited for.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from ha_voice.local_cluster import LocalCluster, SimRobotProcess

# Request handling is under test here, not authentication (tests/integration/test_auth.py):
# the clients sit on a trusted network.
TRUSTED = "--trusted-networks=127.0.0.0/8"


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with (
        SimRobotProcess() as sim,
        LocalCluster(3, extra_flags=(f"--robot={sim.spec}", TRUSTED)) as running,
    ):
        running.start()
        yield running


def _primary(cluster: LocalCluster) -> tuple[str, str]:
    found = cluster.wait_for_primary(20.0)
    assert found is not None
    time.sleep(0.3)  # the takeover's safe state is done right after the lease is valid
    return found[0], next(n for n in cluster.nodes if n != found[0])


def test_a_long_move_through_a_backup_is_waited_for(cluster: LocalCluster) -> None:
    primary, backup = _primary(cluster)
    url = cluster.nodes[backup].url + "/api/robot/command"
    assert httpx.post(url, json={"command": "stand"}, timeout=20).status_code == 200
    walk = {"command": "move", "params": {"vx": 0.2}, "duration_s": 2.0}  # 4 election timeouts
    answer = httpx.post(url, json=walk, timeout=30)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["executed_by"]) == ("done", primary)


def test_a_forward_to_a_frozen_primary_ends_in_503_with_the_way_on(cluster: LocalCluster) -> None:
    primary, backup = _primary(cluster)
    url = cluster.nodes[backup].url + "/api/robot/command"
    answers: list[httpx.Response | Exception] = []

    def send() -> None:
        try:  # without the election bound this waits 75 s and the client gives up first
            answers.append(httpx.post(url, json={"command": "stand"}, timeout=30))
        except httpx.HTTPError as exc:
            answers.append(exc)

    cluster.kill(primary, signal.SIGSTOP)
    try:
        sender = threading.Thread(target=send)
        sender.start()  # at once: the backup still believes the frozen node leads
        sender.join(40)
    finally:
        cluster.kill(primary, signal.SIGCONT)
    (answer,) = answers
    logs = {
        n: node.log_path.read_text(errors="replace")[-3000:] for n, node in cluster.nodes.items()
    }
    assert isinstance(answer, httpx.Response), (answer, backup, logs)
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    body = answer.json()
    assert body["retry_after_s"] > 0
    assert body["leader_url"] != cluster.nodes[primary].url
    assert "gave up" in body["error"]
