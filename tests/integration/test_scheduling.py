"""A process started at SCHED_RR, as the units start the node (`CPUSchedulingPolicy=rr`):
`leave_realtime()` moves the calling thread, and what it starts afterwards, to SCHED_OTHER —
what a speech worker does as it starts (stt_worker.py) — and the notify hook's script runs at
SCHED_OTHER while the node stays real-time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Prints: whether it left, then the policy of the main thread and of a thread started after.
PROBE = """
import os, threading
from ha_voice import scheduling
left = scheduling.leave_realtime()
seen = []
thread = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
thread.start()
thread.join()
names = {os.SCHED_OTHER: "other", os.SCHED_RR: "rr"}
print(left, names[os.sched_getscheduler(0)], names[seen[0]])
"""


# Runs the notify hook once; prints the node's own policy after it.
HOOK = """
import asyncio, os, sys
from pathlib import Path
from ha_voice.notify import NotifyHook
hook = NotifyHook(Path(sys.argv[1]))
async def main():
    hook.submit("primary", 1, "jetson-1")
    await hook.start()
    await hook.stop(drain_timeout_s=10)
asyncio.run(main())
print(hook.completed, os.sched_getscheduler(0) == os.SCHED_RR)
"""


def probe(*prefix: str, program: str = PROBE, args: tuple[str, ...] = ()) -> str:
    result = subprocess.run(
        [*prefix, sys.executable, "-c", program, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_RR needs root here (as systemd has)")
@pytest.mark.skipif(shutil.which("chrt") is None, reason="no chrt (util-linux)")
def test_a_process_started_real_time_leaves_it_with_what_it_starts() -> None:
    assert probe("chrt", "--rr", "10") == "True other other"


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_RR needs root here (as systemd has)")
@pytest.mark.skipif(shutil.which("chrt") is None, reason="no chrt (util-linux)")
def test_the_notify_hook_runs_at_the_default_policy_beside_a_real_time_node(
    tmp_path: Path,
) -> None:
    script = tmp_path / "hook"
    script.write_text(f'#!/bin/sh\nchrt -p $$ > "{tmp_path}/policy"\n')
    script.chmod(0o755)
    assert probe("chrt", "--rr", "10", program=HOOK, args=(str(script),)) == "1 True"
    assert "SCHED_OTHER" in (tmp_path / "policy").read_text()


def test_a_process_at_the_default_policy_stays_there() -> None:
    assert probe() == "False other other"
