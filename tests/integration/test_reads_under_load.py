"""A flood of reads moves no leader: the read routes run on the event loop, not on a pool of
threads that contend for the interpreter lock with the election core's thread.

200 connections reading the whole journal (`/api/journal?limit=10000`, 720 KB answers) in a
loop made the primary lose its lease in 2 of 2 runs, and a backup flip roles: FastAPI ran the
plain `def` read routes on 40 threads. The full-size figures are in docs/benchmarks.md; this is
the CI-sized check. Rate limits are lifted so that every read is served, not refused.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator

import pytest

from ha_voice.local_cluster import LocalCluster, SimRobotProcess
from tests.loadgen import Target, flood, read_flood

COMMANDS = 900
# Commands sent at once to fill the journal. Not the subject here: 300 at once on nodes that
# share this machine's two cores with the load generator and another test cost the primary its
# lease in CI (the core thread held up 0.1-0.25 s by the API thread's share of the interpreter
# lock: docs/benchmarks.md, "The heartbeat path under a flood", where that flood is measured).
BATCH = 50
# What the journal keeps of a transcript: 200 characters, control characters taking 6 bytes
# each once escaped, so each entry's JSON is about a kilobyte.
TEXT = "stop " + "\u0001" * 195


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    flags = ("--api-rate-per-s=10000", "--api-rate-burst=100000", "--max-pending-commands=512")
    with (
        SimRobotProcess() as sim,
        LocalCluster(3, extra_flags=(f"--robot={sim.spec}", *flags)) as running,
    ):
        running.start()
        found = running.wait_for_primary(20.0)
        assert found is not None
        time.sleep(0.3)  # the takeover's safe state is done right after the lease is valid
        node = running.nodes[found[0]]
        headers = {"Content-Type": "application/json", **running.auth_headers}
        body = json.dumps({"text": TEXT}).encode()
        for _ in range(COMMANDS // BATCH):
            replies = asyncio.run(
                flood(
                    [Target(node.host, node.api_port)],
                    BATCH,
                    "/api/voice/listen",
                    lambda _: body,
                    headers,
                )
            )
            refused = [r for r in replies if r.status != 200]
            assert not refused, (refused[:3], _why(running))
        yield running


def _role_changes(cluster: LocalCluster) -> dict[str, list[str]]:
    return {
        n: re.findall(r"^.* -> .* in term \d+ .*$", node.log_path.read_text(), re.M)
        for n, node in cluster.nodes.items()
    }


def _terms(cluster: LocalCluster) -> set[int]:
    views = [node.cluster() for node in cluster.nodes.values()]
    return {view["term"] for view in views if view is not None}


def test_a_flood_of_whole_journal_reads_moves_no_leader(cluster: LocalCluster) -> None:
    (primary,) = cluster.primaries()
    terms, changes = _terms(cluster), _role_changes(cluster)
    node = cluster.nodes[primary]
    page = node.get("/api/journal?limit=1000", timeout_s=10)
    assert page is not None
    assert len(page.json()["entries"]) >= COMMANDS
    assert len(page.content) > 250_000
    statuses = asyncio.run(
        read_flood(Target(node.host, node.api_port), 200, 5.0, "/api/journal?limit=1000")
    )
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 100
    assert _role_changes(cluster) == changes, _why(cluster)
    assert cluster.primaries() == [primary]
    assert _terms(cluster) == terms


def _why(cluster: LocalCluster) -> str:
    """The lines of every node's log that tell why a leader changed."""
    words = ("lease", " -> ", "stall", "late", "timeout", "WARNING", "ERROR")
    return "\n".join(
        f"{n}: {line}"
        for n, node in cluster.nodes.items()
        for line in node.log_path.read_text().splitlines()
        if any(word in line for word in words)
    )
