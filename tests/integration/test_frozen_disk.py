"""A primary whose disk freezes: heartbeats go on, it says why it cannot serve, hands over, and
the watchdog stops hearing from it until the disk comes back.

The disk is frozen with `tests/slowdisk` (every fsync of the process waits while a gate file
exists). Before the core had its own thread and group commit, a frozen fsync held the whole node:
no heartbeat, no ack, the lease lost, `/health` "ok" and the watchdog fed by a timer task.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha_voice.local_cluster import LocalCluster
from tests import slowdisk

STALL_S = 1.0  # stall_timeout_s of the nodes
WATCHDOG_USEC = 600_000  # systemd's WatchdogSec=0.6 s: pings every 0.3 s


class Notifications:
    """An AF_UNIX datagram socket as systemd's NOTIFY_SOCKET, with each sender's pid."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.seen: list[tuple[float, int, str]] = []

    def drain(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            self.seen.append((time.monotonic(), pid, data.decode()))

    def watchdog_pings(self, pid: int, since: float, until: float = float("inf")) -> int:
        self.drain()
        return sum(
            1
            for t, p, text in self.seen
            if p == pid and since <= t < until and "WATCHDOG=1" in text
        )


@pytest.fixture
def gates() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hv-gates-") as directory:
        yield Path(directory)
        for gate in Path(directory).iterdir():
            gate.unlink()  # thaw every disk before the processes are killed


def _health(cluster: LocalCluster, node_id: str) -> dict[str, object]:
    response = cluster.nodes[node_id].get("/health", timeout_s=2.0)
    assert response is not None
    body = response.json()
    assert isinstance(body, dict)
    return body


def _counter(cluster: LocalCluster, node_id: str, name: str) -> float:
    response = cluster.nodes[node_id].get("/metrics", timeout_s=2.0)
    assert response is not None
    found = re.search(rf"^{name} (\S+)$", response.text, re.M)
    return float(found.group(1)) if found else 0.0


class Scrapes:
    """Every node's ha_voice_is_primary, round after round, on a thread of its own."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.rounds: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        # A scrape that times out on a loaded machine leaves that node out of its round (an
        # assert here would end the thread and leave no rounds at all, as once in CI).
        while not self._stop.is_set():
            scraped = {}
            for node_id, node in self.cluster.nodes.items():
                response = node.get("/metrics", timeout_s=2.0)
                if response is not None:
                    found = re.search(r"^ha_voice_is_primary (\S+)$", response.text, re.M)
                    scraped[node_id] = float(found.group(1)) if found else 0.0
            if scraped:
                self.rounds.append(scraped)


def _wait(condition: object, timeout_s: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_frozen_disk_makes_a_primary_hand_over_loudly_and_never_two_say_primary(
    gates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = Notifications(gates / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(gates / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    prefixes = [slowdisk.prefix(0, gates / f"n{i}") for i in (1, 2, 3)]
    flags = (f"--stall-timeout-s={STALL_S}",)
    with LocalCluster(3, prefixes=prefixes, extra_flags=flags) as cluster:
        cluster.start()
        found = cluster.wait_for_primary(20.0)
        assert found is not None
        frozen = found[0]
        node = cluster.nodes[frozen]
        assert node.process is not None
        pid = node.process.pid
        view = node.cluster()
        assert view is not None
        term = view["term"]
        _wait(lambda: notify.watchdog_pings(pid, 0.0) >= 2, 10.0, "no watchdog pings at first")

        scrapes = Scrapes(cluster)
        scrapes.start()
        _wait(lambda: len(scrapes.rounds) > 0, 10.0, "no node answered a scrape")
        (gates / frozen).touch()  # the disk freezes
        frozen_at = time.monotonic()
        # A write is needed to meet the frozen disk; the backups' acks still commit it.
        answer = node.post("/api/settings", {"listening": True}, timeout_s=10.0)
        assert answer.status_code == 200, answer.text
        _wait(
            lambda: "storage stalled" in str(_health(cluster, frozen)["fault_reason"]),
            10.0,
            "the frozen node never said why it cannot serve",
        )
        health = _health(cluster, frozen)
        assert health["status"] == "degraded"
        assert health["role"] == "fault"
        pending = health["storage_write_pending_s"]
        assert isinstance(pending, float)
        assert pending >= STALL_S
        # It handed over: one term more, and no lease ran out for want of heartbeats.
        successor = cluster.wait_for_primary(10.0, exclude=frozen)
        assert successor is not None
        new_view = cluster.nodes[successor[0]].cluster()
        assert new_view is not None
        assert new_view["term"] == term + 1
        assert _counter(cluster, frozen, "ha_voice_lease_renew_failures_total") == 0
        # The others serve meanwhile.
        served = cluster.nodes[successor[0]].post("/api/settings", {"listening": False})
        assert served.status_code == 200, served.text
        # The watchdog stops hearing from the frozen node once its write waits a full interval.
        time.sleep(1.0)
        quiet_from = frozen_at + 2 * WATCHDOG_USEC / 1e6
        assert notify.watchdog_pings(pid, quiet_from, time.monotonic()) == 0

        (gates / frozen).unlink()  # the disk comes back
        thawed_at = time.monotonic()
        scrapes.stop()
        # At no scrape did two nodes say they were primary (leases never overlap).
        assert scrapes.rounds
        for scrape in scrapes.rounds:
            assert sum(scrape.values()) <= 1.0, scrape
        _wait(lambda: _health(cluster, frozen)["role"] == "backup", 10.0, "never serves again")
        assert _health(cluster, frozen)["fault_reason"] is None
        _wait(lambda: notify.watchdog_pings(pid, thawed_at) >= 1, 5.0, "no pings after the thaw")
        assert cluster.primaries() == [successor[0]]
        node.signal(signal.SIGTERM)
        assert node.wait(10.0) == 0
