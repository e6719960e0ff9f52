"""The election's timers, their profiles and the inequality that makes leases safe.

Invariant (checked at construction): a primary's lease, measured on its own clock, ends before
any voter that acknowledged it can vote for someone else, measured on the voter's clock, for any
two clocks whose rates differ from real time by at most `clock_drift` (a ratio):

    lease_timeout_s / (1 - drift)  <  election_timeout_s / (1 + drift)

The voter's refusal window starts when it *receives* a heartbeat, the lease when the primary
*sends* it, so network delay only adds margin. The default lease keeps one heartbeat interval
more in hand, for a robot command in flight when the lease ends.

Pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final, Literal, TypeAlias

__all__ = [
    "PROFILES",
    "RTT_HEADROOM",
    "ElectionTimers",
    "TimerProfile",
    "max_safe_lease_s",
    "round_trip_problem",
    "timers_for",
]

TimerProfile: TypeAlias = Literal["wired", "wifi"]

# Slack for "at least N heartbeats" checks: 3 x 0.1 is 0.30000000000000004 in binary.
_ROUNDING: Final = 1e-9


# The election timeout should be at least this many heartbeat round trips: under it, a few late
# heartbeats in a row (queueing on a busy link) end a healthy lease (docs/operations.md).
RTT_HEADROOM: Final = 10


def round_trip_problem(election_timeout_s: float, rtt_s: float) -> str | None:
    """Why `election_timeout_s` is too short for a measured heartbeat round trip of `rtt_s`
    seconds, naming the fix; None when it is at least `RTT_HEADROOM` round trips."""
    if election_timeout_s >= RTT_HEADROOM * rtt_s:
        return None
    return (
        f"election_timeout_s {election_timeout_s:.3f} is under {RTT_HEADROOM}x the measured "
        f"heartbeat round trip ({rtt_s:.4f} s): expect spurious failovers; "
        'try timer_profile = "wifi"'
    )


def max_safe_lease_s(election_timeout_s: float, clock_drift: float) -> float:
    """The supremum of safe lease lengths for this election timeout and drift bound."""
    return election_timeout_s * (1 - clock_drift) / (1 + clock_drift)


@dataclass(frozen=True)
class ElectionTimers:
    """All the durations the election core uses, in seconds, plus the drift bound (a ratio)."""

    heartbeat_interval_s: float
    election_timeout_s: float
    lease_timeout_s: float
    # Extra wait per place in the line of succession (0 = the primary's first choice).
    priority_skew_s: float
    # Uniform random extra wait, at most one skew step, so equal waits do not collide.
    election_jitter_s: float
    clock_drift: float
    preempt_delay_s: float = 10.0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every broken relation between the timers, worded for an operator."""
        found = []
        for name in (
            "heartbeat_interval_s",
            "election_timeout_s",
            "lease_timeout_s",
            "priority_skew_s",
            "election_jitter_s",
            "preempt_delay_s",
            "clock_drift",
        ):
            if not math.isfinite(getattr(self, name)):
                found.append(f"{name} must be a finite number, not {getattr(self, name)}")
        if found:
            return found
        if not 0 <= self.clock_drift < 0.5:
            found.append(f"clock_drift {self.clock_drift} must be in [0, 0.5)")
            return found
        if self.heartbeat_interval_s <= 0:
            found.append("heartbeat_interval_s must be positive")
            return found
        if self.election_timeout_s < 3 * self.heartbeat_interval_s - _ROUNDING:
            found.append(
                f"election_timeout_s ({self.election_timeout_s}) must be at least 3 heartbeat "
                f"intervals ({3 * self.heartbeat_interval_s:g}): VRRP's three missed adverts"
            )
        limit = max_safe_lease_s(self.election_timeout_s, self.clock_drift)
        if self.lease_timeout_s >= limit:
            found.append(
                f"lease_timeout_s ({self.lease_timeout_s}) must be below election_timeout_s "
                f"x (1-drift)/(1+drift) = {limit:.4f}, or two primaries could overlap"
            )
        if self.lease_timeout_s < 2 * self.heartbeat_interval_s - _ROUNDING:
            found.append(
                f"lease_timeout_s ({self.lease_timeout_s}) must cover at least 2 heartbeat "
                f"intervals ({2 * self.heartbeat_interval_s:g}), or one lost ack ends the lease"
            )
        if self.priority_skew_s < 0 or self.election_jitter_s < 0 or self.preempt_delay_s < 0:
            found.append("priority_skew_s, election_jitter_s and preempt_delay_s must be >= 0")
        elif self.election_jitter_s > self.priority_skew_s:
            found.append(
                f"election_jitter_s ({self.election_jitter_s}) must not exceed priority_skew_s "
                f"({self.priority_skew_s}), or jitter could overtake the line of succession"
            )
        return found

    @property
    def retry_timeout_s(self) -> float:
        """How long a candidate waits for answers before it tries again: two heartbeats."""
        return 2 * self.heartbeat_interval_s

    def with_(self, **changes: float) -> ElectionTimers:
        """A copy with some durations changed (validated again)."""
        return replace(self, **changes)


def _profile(
    heartbeat_interval_s: float,
    election_timeout_s: float,
    priority_skew_s: float,
    election_jitter_s: float,
    clock_drift: float = 0.01,
) -> ElectionTimers:
    lease = max_safe_lease_s(election_timeout_s, clock_drift) - heartbeat_interval_s
    return ElectionTimers(
        heartbeat_interval_s=heartbeat_interval_s,
        election_timeout_s=election_timeout_s,
        lease_timeout_s=round(lease, 4),
        priority_skew_s=priority_skew_s,
        election_jitter_s=election_jitter_s,
        clock_drift=clock_drift,
    )


# wired: a heartbeat every 50 ms and a 0.5 s refusal window, so a lease survives 8 lost
# heartbeat round trips in a row; the simulator shows no leader change in 2-node clusters at 5 %
# loss with it, while 100 ms / 3 heartbeats (VRRP's count) gave ~300 an hour (docs/benchmarks.md).
# wifi: 100 ms / 2 s survives 18 lost round trips, for 20 % loss.
PROFILES: Final[dict[TimerProfile, ElectionTimers]] = {
    "wired": _profile(0.05, 0.5, priority_skew_s=0.05, election_jitter_s=0.02),
    "wifi": _profile(0.1, 2.0, priority_skew_s=0.2, election_jitter_s=0.1),
}


def timers_for(profile: TimerProfile, **overrides: float) -> ElectionTimers:
    """The timers of `profile` with `overrides` applied; the lease follows a changed timeout."""
    base = PROFILES[profile]
    if "lease_timeout_s" not in overrides and (
        "election_timeout_s" in overrides
        or "clock_drift" in overrides
        or "heartbeat_interval_s" in overrides
    ):
        e = overrides.get("election_timeout_s", base.election_timeout_s)
        d = overrides.get("clock_drift", base.clock_drift)
        h = overrides.get("heartbeat_interval_s", base.heartbeat_interval_s)
        overrides = {**overrides, "lease_timeout_s": round(max_safe_lease_s(e, d) - h, 4)}
    return replace(base, **overrides)
