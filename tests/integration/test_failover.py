"""Three real `ha-voice run` processes on loopback: SIGKILL, SIGSTOP/SIGCONT and SIGTERM.

Timings here are bounds derived from the timers, generous enough for a loaded 2-core CI
machine; the measured distributions are in tests/bench and docs/benchmarks.md.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha_voice.cluster.timers import timers_for
from ha_voice.local_cluster import LocalCluster
from ha_voice.simulation.checker import liveness_bound_s

TIMERS = timers_for("wired")
# The simulator's liveness bound for 3 voters, with 50 ms of slack per network delay for
# process scheduling on a busy machine, doubled again for CI.
BOUND_S = 2 * liveness_bound_s(TIMERS, voters=3, max_delay_s=0.05)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as running:
        running.start()
        yield running


def _primary(cluster: LocalCluster) -> str:
    found = cluster.wait_for_primary(20.0)
    assert found is not None, _logs(cluster)
    return found[0]


def _logs(cluster: LocalCluster) -> str:
    return "\n".join(
        f"--- {node.node_id}\n{node.log_path.read_text()[-3000:]}"
        for node in cluster.nodes.values()
        if node.log_path.exists()
    )


def _metric(cluster: LocalCluster, node_id: str, name: str) -> float:
    response = cluster.nodes[node_id].get("/metrics")
    assert response is not None
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", response.text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def _never_two_primaries(cluster: LocalCluster, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        primaries = cluster.primaries()
        assert len(primaries) <= 1, primaries
        time.sleep(0.02)


def test_sigkill_of_the_primary_elects_exactly_one_new_primary(cluster: LocalCluster) -> None:
    old = _primary(cluster)
    term_before = cluster.nodes[old].cluster()["term"]  # type: ignore[index]
    cluster.kill(old)
    found = cluster.wait_for_primary(BOUND_S, exclude=old)
    assert found is not None, f"no new primary within {BOUND_S:.1f} s\n{_logs(cluster)}"
    new = found[0]
    _never_two_primaries(cluster, 1.0)
    view = cluster.nodes[new].cluster()
    assert view is not None
    assert view["term"] > term_before
    assert view["last_failover"]["old"] == old
    assert view["last_failover"]["new"] == new
    # The process is gone, its ports refuse: the voters' own probes say so.
    assert view["last_failover"]["cause"] == "evidence"
    assert _metric(cluster, new, 'ha_voice_failovers_total{cause="evidence"}') == 1
    assert _metric(cluster, new, 'ha_voice_failovers_total{cause="timeout"}') == 0
    assert "evidence that " + old + " is gone" in cluster.nodes[new].log_path.read_text()


def test_a_paused_primary_steps_down_and_never_acts_in_the_new_term(
    cluster: LocalCluster,
) -> None:
    old = _primary(cluster)
    cluster.kill(old, signal.SIGSTOP)
    found = cluster.wait_for_primary(BOUND_S, exclude=old)
    assert found is not None, _logs(cluster)
    new = found[0]
    new_view = cluster.nodes[new].cluster()
    assert new_view is not None
    # A paused process keeps its ports bound: no evidence, the lease ran its course.
    assert new_view["last_failover"]["cause"] == "timeout"
    assert _metric(cluster, new, 'ha_voice_leader_probes_total{result="gone"}') == 0
    assert _metric(cluster, new, 'ha_voice_leader_probes_total{result="no_evidence"}') >= 1
    time.sleep(TIMERS.election_timeout_s)  # well past the old lease
    cluster.kill(old, signal.SIGCONT)
    view = cluster.wait_for(
        old, lambda v: v["role"] == "backup" and v["leader"] == new, timeout_s=10.0
    )
    assert view is not None, _logs(cluster)
    new_view = cluster.nodes[new].cluster()
    assert new_view is not None
    assert view["term"] == new_view["term"]
    assert cluster.primaries() == [new]
    # It stepped down by itself, for want of a quorum, before it heard of the new term.
    assert _metric(cluster, old, "ha_voice_lease_renew_failures_total") >= 1
    log = cluster.nodes[old].log_path.read_text()
    assert "lease expired" in log


def test_sigterm_hands_over_without_waiting_for_an_election_timeout(
    cluster: LocalCluster,
) -> None:
    old = _primary(cluster)
    cluster.kill(old, signal.SIGTERM)
    assert cluster.nodes[old].wait(10.0) == 0, _logs(cluster)
    found = cluster.wait_for_primary(BOUND_S, exclude=old)
    assert found is not None, _logs(cluster)
    new = found[0]
    log = cluster.nodes[new].log_path.read_text()
    assert re.search(r"backup -> candidate in term \d+ \(transfer\)", log), log[-2000:]
    assert "lease expired" not in cluster.nodes[old].log_path.read_text()


def test_status_and_health_endpoints(cluster: LocalCluster) -> None:
    primary = _primary(cluster)
    backups = [n for n in cluster.nodes if n != primary]
    time.sleep(0.3)  # a few heartbeats, so that the primary has heard every backup
    view = cluster.nodes[primary].cluster()
    assert view is not None
    roles = {m["node"]: m["role"] for m in view["members"]}
    assert roles == {primary: "primary", backups[0]: "backup", backups[1]: "backup"}
    for backup in backups:
        node = cluster.nodes[backup]
        replica = node.get("/cluster/replica")
        primary_check = node.get("/cluster/primary")
        assert replica is not None
        assert replica.status_code == 200
        assert primary_check is not None
        assert primary_check.status_code == 503
    health = cluster.nodes[primary].get("/health")
    assert health is not None
    body = health.json()
    assert {"status", "robot_connected", "whisper_model", "language"} <= set(body)
    assert body["role"] == "primary"
    assert body["node"] == primary


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ha_voice", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_status_from_a_backup_shows_the_whole_cluster(cluster: LocalCluster) -> None:
    primary = _primary(cluster)
    time.sleep(0.3)
    backup = next(n for n in cluster.nodes.values() if n.node_id != primary)
    # A backup's view only names the leader; status follows it to the primary's full view.
    result = _cli("status", "--url", backup.url, "--json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["node"] in (primary, backup.node_id)
    table = _cli("status", "--url", backup.url)
    assert table.returncode == 0, table.stderr
    assert f"primary {primary}" in table.stdout
    for node_id in cluster.nodes:
        assert node_id in table.stdout


def test_step_down_from_the_cli_hands_over(cluster: LocalCluster) -> None:
    old = _primary(cluster)
    time.sleep(0.3)
    result = _cli(
        "step-down", "--url", cluster.nodes[old].url, "--token-file", str(cluster.token_file)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = cluster.wait_for_primary(BOUND_S, exclude=old)
    assert found is not None, _logs(cluster)
    view = cluster.wait_for(old, lambda v: v["role"] == "backup", 5.0)
    assert view is not None
    assert view["leader"] == found[0]


def test_unreachable_node_is_a_clear_error() -> None:
    result = _cli("status", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "is ha-voice running there?" in result.stderr


def test_two_nodes_and_a_witness_survive_the_loss_of_the_primary() -> None:
    with LocalCluster(2, witness=True) as trio:
        trio.start()
        old = _primary(trio)
        assert old != "w"
        witness = trio.wait_for("w", lambda v: v["leader"] == old, 10.0)
        assert witness is not None
        assert witness["role"] == "witness"
        trio.kill(old)
        found = trio.wait_for_primary(BOUND_S, exclude=old)
        assert found is not None, _logs(trio)
        assert found[0] not in (old, "w")
        view = trio.wait_for("w", lambda v: v["leader"] == found[0], 5.0)
        assert view is not None
        assert view["role"] == "witness"


def test_systemd_hears_ready_watchdog_and_stopping(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20.0)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        with LocalCluster(1) as single:
            single.start()
            seen: list[str] = []
            while not any("READY=1" in m for m in seen):
                seen.append(sock.recv(4096).decode())
            while not any("WATCHDOG=1" in m for m in seen):
                seen.append(sock.recv(4096).decode())
            single.kill("n1", signal.SIGTERM)
            while not any("STOPPING=1" in m for m in seen):
                seen.append(sock.recv(4096).decode())
            # Room for the whole shutdown budget (5 s by default), whatever TimeoutStopSec is.
            while not any("EXTEND_TIMEOUT_USEC=" in m for m in seen):
                seen.append(sock.recv(4096).decode())
            assert single.nodes["n1"].wait(10.0) == 0
    extend = next(m for m in seen if "EXTEND_TIMEOUT_USEC=" in m)
    assert int(extend.split("EXTEND_TIMEOUT_USEC=")[1].split()[0]) >= 5_000_000
    ready = next(m for m in seen if "READY=1" in m)
    assert "STATUS=" in ready
