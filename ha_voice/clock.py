"""The only module that reads a clock (STYLE.md rule 3).

Invariants: every duration and deadline in ha-voice is measured on `monotonic()`, in seconds.
`wall_clock_us()` may jump in either direction (NTP, an operator, a dead RTC battery) and is used
only as a floor for boot ids, never for a timeout.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["monotonic", "sleep_until", "wall_clock_us"]


def monotonic() -> float:
    """Seconds on a clock that never goes back; the `now` fed to the election core."""
    return time.monotonic()


def wall_clock_us() -> int:
    """Microseconds since the Unix epoch; for boot ids only, since it can jump."""
    return time.time_ns() // 1000


async def sleep_until(deadline: float) -> None:
    """Return once `monotonic() >= deadline`; at once if the deadline has passed."""
    # asyncio runs timers up to one clock resolution early (BaseEventLoop._run_once), hence the
    # loop; ASYNC110 is about waiting for another task, and here we wait for time itself.
    while (remaining_s := deadline - monotonic()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(remaining_s)
