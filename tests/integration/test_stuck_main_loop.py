"""A primary whose main loop (HTTP, robot, role actions) is stuck while its election core runs on.

The core has a thread of its own, so it would go on renewing the lease while nothing could
command the robot, answer a client or make the robot safe, and the watchdog would keep vouching
for it. The main loop now checks in with the core ten times a second; after `stall_timeout_s`
without, the node is FAULT (it hands over), and the watchdog stops. The thread is frozen with
ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT: one thread stops, the others run).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ha_voice.local_cluster import LocalCluster, SimRobotProcess
from tests.integration.test_frozen_disk import Notifications

STALL_S = 1.0
WATCHDOG_USEC = 600_000
_PTRACE_SEIZE, _PTRACE_INTERRUPT, _PTRACE_DETACH = 0x4206, 0x4207, 17
_WALL = 0x40000000


@contextmanager
def frozen_thread(tid: int) -> Iterator[None]:
    """Stop thread `tid` (of any process we may trace) until the block ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    for request in (_PTRACE_SEIZE, _PTRACE_INTERRUPT):
        if libc.ptrace(request, tid, None, None) != 0:
            errno = ctypes.get_errno()
            pytest.skip(f"ptrace refused ({os.strerror(errno)}): cannot freeze one thread here")
    os.waitpid(tid, _WALL)
    try:
        yield
    finally:
        libc.ptrace(_PTRACE_DETACH, tid, None, None)


@pytest.fixture
def directory() -> Iterator[Path]:
    """Short enough for an AF_UNIX socket path (108 bytes), unlike pytest's tmp_path."""
    with tempfile.TemporaryDirectory(prefix="hv-stuck-") as path:
        yield Path(path)


def test_a_primary_whose_main_loop_is_stuck_hands_over_and_stops_the_watchdog(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = Notifications(directory / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(directory / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    flags = (f"--stall-timeout-s={STALL_S}",)
    with (
        SimRobotProcess() as sim,
        LocalCluster(3, extra_flags=(f"--robot={sim.spec}", *flags)) as cluster,
    ):
        cluster.start()
        found = cluster.wait_for_primary(20.0)
        assert found is not None
        stuck = found[0]
        node = cluster.nodes[stuck]
        assert node.process is not None
        pid = node.process.pid
        view = node.cluster()
        assert view is not None
        term = view["term"]
        backup = next(n for n in cluster.nodes if n != stuck)
        answers: list[httpx.Response | Exception] = []

        def stop_through_the_backup() -> None:
            try:
                answers.append(
                    cluster.nodes[backup].post("/api/robot/command", {"command": "stop"})
                )
            except httpx.HTTPError as exc:
                answers.append(exc)

        with frozen_thread(pid):  # the main thread's id is the process id
            frozen_at = time.monotonic()
            sender = threading.Thread(target=stop_through_the_backup)
            sender.start()
            successor = cluster.wait_for_primary(10.0, exclude=stuck)
            sender.join(15.0)
            time.sleep(1.0)
            quiet_from = frozen_at + 2 * WATCHDOG_USEC / 1e6
            pings_while_stuck = notify.watchdog_pings(pid, quiet_from, time.monotonic())
        assert successor is not None, "nobody took over from a primary that could not serve"
        new_view = cluster.nodes[successor[0]].cluster()
        assert new_view is not None
        assert new_view["term"] > term
        assert pings_while_stuck == 0
        # The stop sent through a backup was answered (by the new primary, or a 503 to retry),
        # not left hanging on the stuck one.
        (answer,) = answers
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code in (200, 503), answer.text
        thawed_at = time.monotonic()
        stuck_view = cluster.wait_for(stuck, lambda v: v["role"] == "backup", 10.0)
        assert stuck_view is not None
        health = node.get("/health")
        assert health is not None
        assert health.json()["fault_reason"] is None
        deadline = time.monotonic() + 5.0
        while notify.watchdog_pings(pid, thawed_at) == 0:
            assert time.monotonic() < deadline, "no watchdog ping after the thaw"
            time.sleep(0.05)
