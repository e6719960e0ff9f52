"""Who a node is: two processes with one node id are named and the newcomer stays out; a node
reset with its clock behind is taken back at once (boot ids are nonces, not timestamps)."""

from __future__ import annotations

import dataclasses
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ha_voice.local_cluster import LocalCluster, LocalNode, free_port


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as running:
        running.start()
        assert running.wait_for_primary(20.0) is not None
        yield running


def _copy_of(cluster: LocalCluster, node_id: str) -> LocalNode:
    """A second `ha-voice run` with `node_id`'s identity, its own ports and state (--no-mdns)."""
    real = cluster.nodes[node_id]
    udp, api, wyoming = free_port(socket.SOCK_DGRAM), free_port(), free_port()
    own = {
        "--cluster-port": str(udp),
        "--port": str(api),
        "--wyoming-port": str(wyoming),
        "--state-dir": str(cluster.dir / "copy"),
    }
    argv = [
        f"{a.split('=', 1)[0]}={own[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in own else a
        for a in real.argv
    ]
    return dataclasses.replace(
        real,
        cluster_port=udp,
        api_port=api,
        wyoming_port=wyoming,
        argv=argv,
        log_path=cluster.dir / "copy.log",
    )


def _poll(node: LocalNode, path: str, check: Any, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    last = "no answer"
    while time.monotonic() < deadline:
        response = node.get(path)
        if response is not None:
            last = f"HTTP {response.status_code}: {response.text[:500]}"
        if response is not None and response.status_code == 200:
            body = response.json()
            if check(body):
                return body
        time.sleep(0.1)
    log = node.log_path.read_text(errors="replace")[-3000:] if node.log_path.exists() else ""
    running = "running" if node.running else f"exited {node.process and node.process.poll()}"
    raise AssertionError(f"{node.node_id} {path}: {body} (last: {last}; {running})\n{log}")


def test_two_processes_with_one_node_id_are_named_and_the_newcomer_stays_out(
    cluster: LocalCluster,
) -> None:
    """The copy's boot used to be newer, so every peer dropped the real node's packets and the
    healthy primary was deposed; with one other node down no one could be elected."""
    (primary,) = cluster.primaries()
    term = cluster.nodes[primary].cluster()["term"]  # type: ignore[index]
    twin, third = (n for n in cluster.nodes if n != primary)
    real = cluster.nodes[twin]
    copy = _copy_of(cluster, twin)
    copy.start()
    try:
        named = (
            f"two processes claim node_id {twin}: 127.0.0.1:{real.cluster_port} "
            f"and 127.0.0.1:{copy.cluster_port}"
        )
        for node in (cluster.nodes[primary], cluster.nodes[third], real, copy):
            view = _poll(node, "/cluster", lambda b: named in b["identity_conflicts"], 15.0)
            assert node is copy or view["term"] == term, view
            metrics = node.get("/metrics")
            assert metrics is not None
            gauge = [x for x in metrics.text.splitlines() if x.startswith("ha_voice_identity")]
            assert gauge == ["ha_voice_identity_conflicts 1.0"], (node.node_id, gauge)
        health = _poll(copy, "/health", lambda b: b["status"] == "degraded", 5.0)
        assert named in health["fault_reason"]
        assert "stays out" in health["fault_reason"]
        assert _poll(real, "/health", lambda b: True, 1.0)["status"] == "ok"
        assert "identity conflict: " + named in (cluster.dir / f"{primary}.log").read_text()
        # With the third node down, the primary and the real twin still make a quorum.
        cluster.kill(third)
        time.sleep(2.0)
        assert cluster.primaries() == [primary]
        assert cluster.nodes[primary].cluster()["term"] == term  # type: ignore[index]
        assert copy.cluster()["role"] != "primary"  # type: ignore[index]
    finally:
        copy.signal(signal.SIGKILL)
        copy.wait(5.0)


def test_a_node_reset_with_its_clock_a_year_behind_is_taken_back(cluster: LocalCluster) -> None:
    """Boot ids were the wall clock: a node reset (state moved aside) on a board a year in the
    past was dropped by its peers as stale_boot, and once the primary died, the two live nodes
    of three elected no one."""
    if shutil.which("faketime") is None:
        pytest.fail("needs faketime (apt-get install faketime; .ci/run installs it)")
    # The primary is reset: it has heartbeated both others, so both remember its boot.
    (reset,) = cluster.primaries()
    node = cluster.nodes[reset]
    node.signal(signal.SIGTERM)  # hands over first
    assert node.wait(15.0) is not None
    elected = cluster.wait_for_primary(20.0, exclude=reset)
    assert elected is not None
    primary = elected[0]
    shutil.move(str(cluster.dir / reset), str(cluster.dir / f"{reset}.aside"))
    node.prefix = ["faketime", "-f", "-365d"]
    node.start()
    _poll(node, "/health", lambda b: b["status"] == "ok" and b["leader"] == primary, 40.0)
    cluster.kill(primary)
    elected = cluster.wait_for_primary(20.0, exclude=primary)
    assert elected is not None
    _poll(node, "/cluster", lambda b: b["leader"] == elected[0], 10.0)
