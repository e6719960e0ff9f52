"""Rate limits and the bounded command queue: 429 with Retry-After, at once, at the right node.

Real `ha-voice run` processes. Every client here is 127.0.0.1, and so is every node: a forwarded
request counted again at the primary would spend the same bucket as the client's own requests,
which is exactly what the forwarding test catches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ha_voice.local_cluster import LocalCluster, SimRobotProcess

BURST = 4

# Request handling is under test here, not authentication (tests/integration/test_auth.py):
# the clients sit on a trusted network.
TRUSTED = "--trusted-networks=127.0.0.0/8"


def _primary_and_backup(cluster: LocalCluster) -> tuple[str, str]:
    found = cluster.wait_for_primary(20.0)
    assert found is not None
    time.sleep(0.3)  # the takeover's safe state is done right after the lease is valid
    backup = next(n for n in cluster.nodes if n != found[0])
    return found[0], backup


@pytest.fixture
def limited() -> Iterator[tuple[LocalCluster, str, str]]:
    # A rate this low refills no token during the test: only the burst counts.
    flags = ("--api-rate-per-s=0.1", f"--api-rate-burst={BURST}", "--robot=sim", TRUSTED)
    with LocalCluster(3, extra_flags=flags) as cluster:
        cluster.start()
        yield cluster, *_primary_and_backup(cluster)


def _stand(url: str, **kw: Any) -> httpx.Response:
    return httpx.post(url + "/api/robot/command", json={"command": "stand"}, timeout=20, **kw)


def test_a_client_over_its_rate_gets_429_with_retry_after(
    limited: tuple[LocalCluster, str, str],
) -> None:
    cluster, primary, _ = limited
    url = cluster.nodes[primary].url
    assert [_stand(url).status_code for _ in range(BURST)] == [200] * BURST
    for route in ("/api/robot/command", "/api/voice/listen", "/api/settings", "/api/voice/stop"):
        refused = httpx.post(url + route, json={}, timeout=20)  # refused before the body is read
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        body = refused.json()
        assert body["retry_after_s"] > 0
        assert "api_rate_per_s" in body["error"]
    # Reads of the journal have buckets of their own: a spent command bucket does not refuse them.
    assert httpx.get(url + "/api/journal", timeout=20).status_code == 200


def test_reads_of_the_journal_are_limited_apart_from_commands(
    limited: tuple[LocalCluster, str, str],
) -> None:
    """A whole journal is up to a megabyte of JSON: 200 connections reading it in a loop once
    cost a primary its lease. Reading never spends the tokens a client's stop needs."""
    cluster, primary, _ = limited
    url = cluster.nodes[primary].url
    reads = [httpx.get(url + "/api/journal", timeout=20).status_code for _ in range(BURST)]
    assert reads == [200] * BURST
    refused = httpx.get(url + "/api/journal", timeout=20)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "reads of the journal" in refused.json()["error"]
    for cheap in ("/health", "/cluster", "/api/voice/status", "/metrics"):
        assert httpx.get(url + cheap, timeout=20).status_code == 200
    assert _stand(url).status_code == 200


def test_a_forwarded_request_is_limited_where_the_client_came_in_only(
    limited: tuple[LocalCluster, str, str],
) -> None:
    cluster, primary, backup = limited
    through_backup = [_stand(cluster.nodes[backup].url) for _ in range(BURST)]
    assert [r.status_code for r in through_backup] == [200] * BURST
    assert all(r.json()["executed_by"] == primary for r in through_backup)
    assert _stand(cluster.nodes[backup].url).status_code == 429  # the backup's bucket is spent
    # The primary did not count the forwards against 127.0.0.1: its bucket is still full.
    direct = [_stand(cluster.nodes[primary].url).status_code for _ in range(BURST)]
    assert direct == [200] * BURST
    assert _stand(cluster.nodes[primary].url).status_code == 429


@pytest.fixture
def queue() -> Iterator[tuple[LocalCluster, str, str]]:
    with (
        SimRobotProcess() as sim,
        LocalCluster(
            3, extra_flags=(f"--robot={sim.spec}", "--max-pending-commands=2", TRUSTED)
        ) as cluster,
    ):
        cluster.start()
        yield cluster, *_primary_and_backup(cluster)


def test_past_the_queue_a_command_gets_429_at_once_and_stays_out_of_the_journal(
    queue: tuple[LocalCluster, str, str],
) -> None:
    cluster, primary, backup = queue
    url = cluster.nodes[primary].url
    assert _stand(url).status_code == 200  # a robot lying down cannot walk
    walk = {"command": "move", "params": {"vx": 0.2}, "duration_s": 2.0}
    done: list[httpx.Response] = []
    walkers = [
        threading.Thread(
            target=lambda k=key: done.append(
                httpx.post(
                    url + "/api/robot/command",
                    json=walk,
                    headers={"Idempotency-Key": k},
                    timeout=30,
                )
            )
        )
        for key in ("walk-1", "walk-2")
    ]
    for walker in walkers:
        walker.start()
    try:
        time.sleep(0.5)  # both accepted: one walks, one waits for the robot
        for node in (primary, backup):
            refused = httpx.post(
                cluster.nodes[node].url + "/api/robot/command",
                json={"command": "sit"},
                headers={"Idempotency-Key": f"sit-{node}"},
                timeout=20,
            )
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "1"
            assert "max_pending_commands" in refused.json()["error"]
        stop = httpx.post(url + "/api/robot/command", json={"command": "stop"}, timeout=20)
        assert stop.status_code == 200  # stop is never queued out: it preempts
    finally:
        for walker in walkers:
            walker.join(30)
    assert len(done) == 2
    assert {r.status_code for r in done} == {200}
    keys = {e["key"] for e in httpx.get(url + "/api/journal", timeout=20).json()["entries"]}
    assert {"walk-1", "walk-2"} <= keys
    assert not keys & {f"sit-{primary}", f"sit-{backup}"}
