"""The notify hook: run an operator's script on every role change, as keepalived's `notify` does,
without keepalived's races.

Invariants:
- `submit` never blocks and never raises, so a slow or broken script cannot hold up the election.
- One script runs at a time, in submission order: two role changes can never reach the script
  out of order or overlap, as keepalived's concurrently forked notify scripts can.
- A run lasts at most `timeout_s`; then its whole process group is killed (SIGKILL) and reaped.
- At most `max_pending` calls wait; when full, the oldest waiting call is dropped and counted.
- A failing, hanging or missing script is logged and counted, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ha_voice import scheduling
from ha_voice.supervise import fatal

__all__ = ["NotifyHook"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Call:
    role: str
    term: int
    node: str

    def argv(self) -> tuple[str, str, str]:
        return (self.role, str(self.term), self.node)


class NotifyHook:
    """Runs `path role term node` for each `submit`, serially, on one asyncio worker task.

    With `path` None every method does nothing. `completed`, `failures` and `dropped` count runs
    that exited 0, runs that did not (non-zero exit, timeout, cannot execute, killed by `stop`),
    and calls dropped unrun (queue full, or still waiting when `stop` gave up).
    """

    def __init__(self, path: Path | None, timeout_s: float = 10.0, max_pending: int = 100) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.completed = 0
        self.failures = 0
        self.dropped = 0
        self._pending: deque[_Call] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False

    def submit(self, role: str, term: int, node: str) -> None:
        """Queue one run of the script; call on the event loop's thread. Never blocks or raises."""
        if self.path is None:
            return
        if len(self._pending) >= self.max_pending:
            dropped = self._pending.popleft()
            self.dropped += 1
            _log.warning("notify hook lags: dropped the call %s", " ".join(dropped.argv()))
        self._pending.append(_Call(role, term, node))
        if self._wakeup is not None:
            self._wakeup.set()

    async def start(self) -> None:
        """Start the worker; calls submitted before now run first, in order."""
        if self.path is None or self._worker is not None:
            return
        self._stopping = False
        # Made here, not in __init__: an Event belongs to the loop that first waits on it.
        self._wakeup = asyncio.Event()
        self._wakeup.set()
        work = self._work(self.path, self._wakeup)
        self._worker = asyncio.create_task(work, name="ha-voice notify hook")
        self._worker.add_done_callback(self._ended)

    def _ended(self, worker: asyncio.Task[None]) -> None:
        """The worker runs until `stop`: ending before it, or with an exception, is a bug."""
        if worker.cancelled():
            return
        exc = worker.exception()
        if exc is not None or not self._stopping:
            fatal(exc or RuntimeError("the notify hook worker returned"), "the notify hook worker")

    async def stop(self, drain_timeout_s: float) -> None:
        """Let waiting calls run for up to `drain_timeout_s`, then kill the rest and return."""
        worker = self._worker
        if worker is None or self._wakeup is None:
            return
        self._stopping = True
        self._wakeup.set()
        _, still_running = await asyncio.wait({worker}, timeout=drain_timeout_s)
        if still_running:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._worker = None
        self._drop_pending()

    async def _work(self, path: Path, wakeup: asyncio.Event) -> None:
        while self._pending or not self._stopping:
            if not self._pending:
                wakeup.clear()
                await wakeup.wait()
                continue
            await self._run(path, self._pending.popleft())

    async def _run(self, path: Path, call: _Call) -> None:
        try:
            returncode = await self._execute(path, call)
        except OSError as exc:
            self._fail(call, f"cannot run: {exc}")
            return
        except asyncio.CancelledError:
            self._fail(call, "killed: the hook was stopped before it finished")
            raise
        if returncode is None:
            self._fail(call, f"killed after {self.timeout_s} s")
        elif returncode != 0:
            self._fail(call, f"exited with status {returncode}")
        else:
            self.completed += 1
            _log.debug("notify hook ran: %s %s", path, " ".join(call.argv()))

    async def _execute(self, path: Path, call: _Call) -> int | None:
        """The script's exit status, or None if it ran out of time and was killed."""
        # A session of its own, so that a kill reaches whatever the script started too.
        # The node's real-time priority is for its heartbeats, not for the script.
        process = await asyncio.create_subprocess_exec(
            path,
            *call.argv(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=scheduling.normal_in_child,  # one system call, no lock
        )
        try:
            return await asyncio.wait_for(process.wait(), self.timeout_s)
        except asyncio.TimeoutError:
            return None
        finally:
            # Also on cancellation by stop(): never leave a hook running behind us.
            if process.returncode is None:
                _kill_group(process.pid)
                await process.wait()

    def _fail(self, call: _Call, why: str) -> None:
        self.failures += 1
        _log.warning("notify hook %s %s: %s", self.path, " ".join(call.argv()), why)

    def _drop_pending(self) -> None:
        if self._pending:
            _log.warning("notify hook stopped with %d calls unrun", len(self._pending))
            self.dropped += len(self._pending)
            self._pending.clear()


def _kill_group(pid: int) -> None:
    # The group id is the script's pid (start_new_session); it may be gone already.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
