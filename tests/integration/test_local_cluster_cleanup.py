"""LocalCluster stops every process it started, also under a prefix that forks (faketime)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from ha_voice.local_cluster import LocalCluster


def _daemons(state_dir: Path) -> list[int]:
    """Pids of live daemons whose command line names `state_dir` (not their faketime)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        daemon = argv[0] != b"faketime" and b"ha_voice" in argv
        alive = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
        if daemon and alive and f"--state-dir={state_dir}".encode() in argv:
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize("how", ["close", "kill"])
def test_a_node_under_faketime_does_not_outlive_the_cluster(how: str) -> None:
    """faketime forks the daemon and waits for it: a SIGKILL to faketime alone left the daemon
    running with no parent (found as orphans after test_forward_clock)."""
    if shutil.which("faketime") is None:
        pytest.fail("needs faketime (apt-get install faketime; .ci/run installs it)")
    with LocalCluster(2) as cluster:
        node = cluster.nodes["n1"]
        node.prefix = ["faketime", "-f", "-1d"]
        node.start()
        state_dir = cluster.dir / "n1"
        deadline = time.monotonic() + 30
        while node.get("/health") is None and time.monotonic() < deadline:
            assert node.running, node.log_path.read_text()[-2000:]
            time.sleep(0.1)
        assert _daemons(state_dir), node.log_path.read_text()[-2000:]
        if how == "kill":
            cluster.kill("n1", signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _daemons(state_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _daemons(state_dir)
    for pid in left:  # the test cleans up after the bug it finds
        os.kill(pid, signal.SIGKILL)
    assert not left
