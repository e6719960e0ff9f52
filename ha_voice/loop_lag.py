"""How late an event loop runs its callbacks, and what held it up.

A `LagProbe` asks its loop to wake it every `interval_s` and measures how much later than asked
it woke: how long a callback, another thread holding the interpreter lock, or the kernel kept
the loop from running, and so how late a heartbeat due then would have left. Every wake is
observed in `ha_voice_event_loop_lag_seconds{loop}`; the worst of the last `window_s` is
`ha_voice_event_loop_lag_max_seconds{loop}`.

With `warn_s`, a `StallWatch` thread names the culprit: when the loop has not woken `warn_s`
past its due time, the watch records where the loop's thread is and where every other thread
that is running Python code is (one of them held the lock), and whether the watch itself woke
late (then the whole process was held up: paused, or starved of CPU). The probe's next wake logs
one warning with that record, at most once per `WARN_EVERY_S` (the rest are counted into it).

Invariants: the probe does arithmetic on its loop and never waits; the watch reads frames on a
thread of its own and only after a stall; logging goes through the daemon's queue.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from ha_voice import clock
from ha_voice.metrics import Metrics

__all__ = ["WARN_EVERY_S", "LagProbe", "StallWatch", "describe_threads"]

log = logging.getLogger(__name__)

WARN_EVERY_S: Final = 10.0
# Where a thread that waits sits (a lock, a selector, a queue, a sleep): not the culprit.
_WAITING: Final = frozenset(
    {"wait", "select", "poll", "get", "_worker", "sleep", "acquire", "accept", "recv", "join"}
)
_PACKAGE: Final = str(Path(__file__).resolve().parent)


@dataclass
class _Stall:
    """What the watch saw while the loop was late."""

    overdue_s: float
    watch_late_s: float
    threads: str


class LagProbe:
    """How late one loop wakes: observed, the recent worst gauged, a warning over `warn_s`."""

    def __init__(
        self,
        loop: str,
        metrics: Metrics,
        *,
        interval_s: float,
        warn_s: float | None = None,
        window_s: float = 10.0,
        why: str = "",
    ) -> None:
        self.loop = loop
        self.interval_s = interval_s
        self.warn_s = warn_s
        self._why = why
        self._window_s = window_s
        self._histogram = metrics.loop_lag.labels(loop)
        self._gauge = metrics.loop_lag_max.labels(loop)
        self._recent: deque[tuple[float, float]] = deque()
        self._warned_at = -float("inf")
        self._unwarned = 0
        # Read by the watch thread: floats and references, each one store.
        self.due = float("inf")
        self.thread_id: int | None = None
        self.stall: _Stall | None = None

    async def async_run(self) -> None:
        """Wake every `interval_s` on this loop and observe how late, for ever."""
        self.thread_id = threading.get_ident()
        while True:
            self.due = clock.monotonic() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.observe(clock.monotonic())

    def expect(self, due: float) -> None:
        """The caller's own timer will wake at `due` (for loops that keep their own probe)."""
        self.thread_id = threading.get_ident()
        self.due = due

    def observe(self, now: float) -> float:
        """The loop woke at `now` for the wake due at `self.due`; the lag, seconds."""
        lag = max(0.0, now - self.due)
        self.due = float("inf")
        self._histogram.observe(lag)
        recent = self._recent
        recent.append((now, lag))
        while recent and recent[0][0] < now - self._window_s:
            recent.popleft()
        self._gauge.set(max(lag for _, lag in recent))
        if self.warn_s is not None and lag > self.warn_s:
            self._warn(lag, now)
        self.stall = None
        return lag

    def worst_recent(self, now: float, span_s: float) -> float:
        """The largest lag observed in the `span_s` seconds before `now`; 0 if none."""
        return max((lag for t, lag in self._recent if t >= now - span_s), default=0.0)

    def _warn(self, lag: float, now: float) -> None:
        if now - self._warned_at < WARN_EVERY_S:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more since the last warning)" if self._unwarned else ""
        self._warned_at, self._unwarned = now, 0
        stall = self.stall
        if stall is None:
            seen = "no stall was caught in the act"
        elif stall.watch_late_s >= stall.overdue_s / 2:
            seen = (
                f"the whole process was held up: the watch thread woke "
                f"{stall.watch_late_s * 1000:.0f} ms late too (paused, starved of CPU, or a "
                "thread held the interpreter lock in native code: a garbage collection, an "
                f"import, a regular expression); threads then: {stall.threads}"
            )
        else:
            seen = f"while it was late: {stall.threads}"
        log.warning(
            "%s loop ran %.0f ms late, over %.0f ms%s%s; %s",
            self.loop,
            lag * 1000,
            (self.warn_s or 0) * 1000,
            f" ({self._why})" if self._why else "",
            more,
            seen,
        )


class StallWatch:
    """A thread that catches probes' loops in the act of being late (see the module doc)."""

    def __init__(self, probes: list[LagProbe], check_s: float = 0.01) -> None:
        self._probes = probes
        self._check_s = check_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ha-voice-stall-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread; returns once it has ended."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        expected = clock.monotonic() + self._check_s
        while not self._stop.wait(max(0.0, expected - clock.monotonic())):
            now = clock.monotonic()
            late = max(0.0, now - expected)
            expected = now + self._check_s
            for probe in self._probes:
                self._check(probe, now, late)

    def _check(self, probe: LagProbe, now: float, watch_late_s: float) -> None:
        if probe.warn_s is None or probe.stall is not None or probe.thread_id is None:
            return
        overdue = now - probe.due
        if overdue > probe.warn_s:
            threads = describe_threads(probe.thread_id, probe.loop)
            probe.stall = _Stall(overdue, watch_late_s, threads)


def describe_threads(loop_thread: int, loop: str) -> str:
    """Where `loop_thread` is, and every other thread running Python code (not waiting)."""
    frames = sys._current_frames()
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    me = threading.get_ident()
    parts = []
    for ident, frame in frames.items():
        if ident == me:
            continue
        label = f"{loop} loop's thread" if ident == loop_thread else names.get(ident, str(ident))
        if ident != loop_thread and frame.f_code.co_name in _WAITING:
            continue
        parts.append(f"{label} in {_where(frame)}")
    return "; ".join(parts) or "every other thread waiting"


def _where(frame: FrameType) -> str:
    """The innermost frame, and the innermost of ours that led there if it is not ours."""
    here = _frame_text(frame)
    ours: FrameType | None = frame
    while ours is not None and not ours.f_code.co_filename.startswith(_PACKAGE):
        ours = ours.f_back
    if ours is None or ours is frame:
        return here
    return f"{here} (from {_frame_text(ours)})"


def _frame_text(frame: FrameType) -> str:
    return f"{frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})"
