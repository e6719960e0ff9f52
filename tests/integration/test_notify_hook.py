"""The notify hook running real shell scripts: serial, ordered, bounded in time and in queue."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ha_voice.clock import monotonic
from ha_voice.notify import NotifyHook


def write_script(directory: Path, body: str, *, executable: bool = True) -> Path:
    path = directory / "notify.sh"
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(0o755 if executable else 0o644)
    return path


def logged(directory: Path) -> list[str]:
    log = directory / "log"
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def is_gone(pid: int) -> bool:
    """Exited (a zombie counts: it can no longer run) or never existed."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def wait_until_gone(pid: int, within_s: float = 1.0) -> bool:
    deadline = monotonic() + within_s
    while not is_gone(pid):
        if monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_calls_run_serially_in_submission_order(tmp_path: Path) -> None:
    # mkdir is atomic: a second run starting while the first holds the lock would log OVERLAP.
    path = write_script(
        tmp_path,
        f'mkdir "{tmp_path}/lock" || echo OVERLAP >> "{tmp_path}/log"\n'
        f'echo "$1 $2 $3" >> "{tmp_path}/log"\n'
        "sleep 0.05\n"
        f'rmdir "{tmp_path}/lock"',
    )
    hook = NotifyHook(path)

    async def main() -> None:
        hook.submit("backup", 1, "jetson-a")
        hook.submit("candidate", 2, "jetson-a")
        await hook.start()
        hook.submit("primary", 2, "jetson-a")
        await asyncio.sleep(0.02)  # a run is under way while the next calls arrive
        hook.submit("backup", 3, "jetson-a")
        hook.submit("fault", 3, "jetson-a")
        await hook.stop(drain_timeout_s=5)

    asyncio.run(main())
    assert logged(tmp_path) == [
        "backup 1 jetson-a",
        "candidate 2 jetson-a",
        "primary 2 jetson-a",
        "backup 3 jetson-a",
        "fault 3 jetson-a",
    ]
    assert (hook.completed, hook.failures, hook.dropped) == (5, 0, 0)


def test_the_script_reads_an_empty_stdin(tmp_path: Path) -> None:
    # Without /dev/null a script that reads stdin would hang or eat the daemon's input.
    path = write_script(tmp_path, f'cat > "{tmp_path}/stdin"')
    hook = NotifyHook(path, timeout_s=1)

    async def main() -> None:
        await hook.start()
        hook.submit("primary", 1, "jetson-a")
        await hook.stop(drain_timeout_s=2)

    asyncio.run(main())
    assert (tmp_path / "stdin").read_bytes() == b""
    assert hook.completed == 1


def test_a_hanging_script_is_killed_and_the_next_call_still_runs(tmp_path: Path) -> None:
    # The script's own child must die too: the kill goes to the whole process group.
    path = write_script(
        tmp_path,
        'if [ "$1" = hang ]; then\n'
        f'  sleep 30 & echo $! > "{tmp_path}/child"; wait\n'
        "fi\n"
        f'echo "$1 $2 $3" >> "{tmp_path}/log"',
    )
    hook = NotifyHook(path, timeout_s=0.3)

    async def main() -> float:
        await hook.start()
        started = monotonic()
        hook.submit("hang", 1, "jetson-a")
        hook.submit("primary", 2, "jetson-a")
        await hook.stop(drain_timeout_s=5)
        return monotonic() - started

    elapsed_s = asyncio.run(main())
    assert 0.3 <= elapsed_s < 1.5
    assert logged(tmp_path) == ["primary 2 jetson-a"]
    assert (hook.completed, hook.failures) == (1, 1)
    assert wait_until_gone(int((tmp_path / "child").read_text(encoding="utf-8")))


def test_a_failing_script_is_counted(tmp_path: Path) -> None:
    hook = NotifyHook(write_script(tmp_path, "exit 3"))

    async def main() -> None:
        await hook.start()
        hook.submit("primary", 1, "jetson-a")
        hook.submit("backup", 2, "jetson-a")
        await hook.stop(drain_timeout_s=2)

    asyncio.run(main())
    assert (hook.completed, hook.failures) == (0, 2)


@pytest.mark.parametrize("problem", ["missing", "not executable"])
def test_a_script_that_cannot_run_is_counted_without_raising(problem: str, tmp_path: Path) -> None:
    if problem == "missing":
        path = tmp_path / "absent.sh"
    else:
        path = write_script(tmp_path, "exit 0", executable=False)
    hook = NotifyHook(path)

    async def main() -> None:
        await hook.start()
        hook.submit("primary", 1, "jetson-a")
        hook.submit("backup", 2, "jetson-a")
        await hook.stop(drain_timeout_s=2)

    asyncio.run(main())
    assert (hook.completed, hook.failures) == (0, 2)


def test_submit_does_not_wait_for_a_running_script(tmp_path: Path) -> None:
    path = write_script(tmp_path, f'echo "$1" >> "{tmp_path}/log"; sleep 0.5')
    hook = NotifyHook(path)

    async def main() -> float:
        await hook.start()
        hook.submit("primary", 1, "jetson-a")
        await asyncio.sleep(0.05)  # the first run is now sleeping
        started = monotonic()
        for term in range(2, 12):
            hook.submit("backup", term, "jetson-a")
        elapsed_s = monotonic() - started
        assert hook.completed == 0
        await hook.stop(drain_timeout_s=0)
        return elapsed_s

    assert asyncio.run(main()) < 0.05
    assert logged(tmp_path) == ["primary"]


def test_a_full_queue_drops_the_oldest_call(tmp_path: Path) -> None:
    path = write_script(tmp_path, f'echo "$1 $2 $3" >> "{tmp_path}/log"')
    hook = NotifyHook(path, max_pending=3)

    async def main() -> None:
        for term in range(1, 6):
            hook.submit("primary", term, "jetson-a")
        await hook.start()
        await hook.stop(drain_timeout_s=2)

    asyncio.run(main())
    assert hook.dropped == 2
    assert logged(tmp_path) == ["primary 3 jetson-a", "primary 4 jetson-a", "primary 5 jetson-a"]


def test_stop_gives_up_after_the_drain_timeout_and_kills_the_run(tmp_path: Path) -> None:
    path = write_script(tmp_path, f'echo $$ > "{tmp_path}/pid"; exec sleep 30')
    hook = NotifyHook(path, timeout_s=60)

    async def main() -> float:
        await hook.start()
        hook.submit("primary", 1, "jetson-a")
        hook.submit("backup", 2, "jetson-a")
        await asyncio.sleep(0.1)
        started = monotonic()
        await hook.stop(drain_timeout_s=0.2)
        return monotonic() - started

    assert asyncio.run(main()) < 1.0
    assert (hook.completed, hook.failures, hook.dropped) == (0, 1, 1)
    assert wait_until_gone(int((tmp_path / "pid").read_text(encoding="utf-8")))


def test_without_a_path_everything_is_a_no_op() -> None:
    hook = NotifyHook(None)

    async def main() -> None:
        hook.submit("primary", 1, "jetson-a")
        await hook.start()
        hook.submit("backup", 2, "jetson-a")
        await hook.stop(drain_timeout_s=1)

    asyncio.run(main())
    assert (hook.completed, hook.failures, hook.dropped) == (0, 0, 0)
