"""A daemon that cannot do its job ends loudly (supervise.py): exit 70 with the traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from ha_voice.supervise import EXIT_FAILED


def _run(code: str) -> subprocess.CompletedProcess[str]:
    program = textwrap.dedent(
        """
        import asyncio
        from ha_voice.supervise import guarded, log_through_a_queue, must_not_end
        log_through_a_queue("INFO")
        """
    ) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, check=False
    )


def test_a_callback_that_raises_ends_the_process_with_its_traceback() -> None:
    result = _run(
        """
        def broken(what):
            raise ValueError(f"no {what}")

        async def main():
            asyncio.get_running_loop().call_soon(guarded, broken, "robot")
            await asyncio.sleep(5)
            print("still alive")

        asyncio.run(main())
        """
    )
    assert result.returncode == EXIT_FAILED
    assert "still alive" not in result.stdout
    assert "callback 'broken' failed" in result.stderr
    assert "ValueError: no robot" in result.stderr


def test_a_callback_that_works_is_just_called() -> None:
    result = _run(
        """
        async def main():
            asyncio.get_running_loop().call_soon(guarded, print, "called")
            await asyncio.sleep(0.05)

        asyncio.run(main())
        """
    )
    assert (result.returncode, result.stdout.strip()) == (0, "called")


def test_a_task_that_must_run_for_ever_and_returns_ends_the_process() -> None:
    result = _run(
        """
        async def quits():
            return None

        async def main():
            asyncio.create_task(quits(), name="robot watch").add_done_callback(must_not_end)
            await asyncio.sleep(5)

        asyncio.run(main())
        """
    )
    assert result.returncode == EXIT_FAILED
    assert "task 'robot watch' failed" in result.stderr
    assert "returned" in result.stderr
