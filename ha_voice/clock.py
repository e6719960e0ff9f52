"""The only module that reads a clock (STYLE.md rule 3).

Invariants: every duration and deadline in ha-voice is measured on `monotonic()`, in seconds.
`wall_clock_us()` may jump in either direction (NTP, an operator, a dead RTC battery): it is never
used for a timeout, for who a peer is (boot ids are random nonces) nor for whether a forwarded
request's seal is fresh (judged on the recipient's monotonic clock, as the sender reckons it from
the recipient's heartbeats: forward_seal.py). Monotonic clocks of two machines are never
compared (faketime moves even CLOCK_MONOTONIC).
"""

from __future__ import annotations

import time

__all__ = ["monotonic", "wall_clock_us"]


def monotonic() -> float:
    """Seconds on a clock that never goes back; the `now` fed to the election core."""
    return time.monotonic()


def wall_clock_us() -> int:
    """Microseconds since the Unix epoch; for display only, since it can jump."""
    return time.time_ns() // 1000
