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
    "TimerProblem",
    "TimerProfile",
    "max_safe_lease_s",
    "resolve_timers",
    "round_trip_problem",
    "timer_problems",
    "timers_for",
]

TimerProfile: TypeAlias = Literal["wired", "fast", "wifi"]

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
class TimerProblem:
    """One broken relation between the timers: the key to change, its value, why it cannot
    be, the values it may take given the other keys (never an empty range), and what else to
    change when no value of this key can work."""

    key: str
    value: float
    why: str
    allowed: str
    fix: str = ""

    def __str__(self) -> str:
        fix = f", or {self.fix}" if self.fix else ""
        return f"{self.key} = {self.value:g}: {self.why}, allowed: {self.allowed}{fix}"


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
        """Every broken relation between the timers, worded for an operator: each names the
        key, its value and a range of values that would work with the others."""
        return [str(problem) for problem in timer_problems(self)]

    @property
    def retry_timeout_s(self) -> float:
        """How long a candidate waits for answers before it tries again: two heartbeats."""
        return 2 * self.heartbeat_interval_s

    def with_(self, **changes: float) -> ElectionTimers:
        """A copy with some durations changed (validated again)."""
        return replace(self, **changes)


_DURATIONS: Final = (
    "heartbeat_interval_s",
    "election_timeout_s",
    "lease_timeout_s",
    "priority_skew_s",
    "election_jitter_s",
    "preempt_delay_s",
)
# Ranges are shown to a tenth of a millisecond, rounded inwards so every value shown works.
_SHOWN: Final = 1e4


def _at_least(x: float) -> str:
    return f"{math.ceil(x * _SHOWN - 1e-6) / _SHOWN:g}"


def _more_than(x: float) -> str:
    return f"{(math.floor(x * _SHOWN + 1e-6) + 1) / _SHOWN:g}"


def _below(x: float) -> str:
    return f"{(math.ceil(x * _SHOWN - 1e-6) - 1) / _SHOWN:g}"


def _at_most(x: float) -> str:
    return f"{math.floor(x * _SHOWN + 1e-6) / _SHOWN:g}"


def timer_problems(timers: ElectionTimers, *, lease_derived: bool = False) -> list[TimerProblem]:
    """Every broken relation in `timers`. With `lease_derived`, the lease was not chosen but
    follows the election timeout (`timers_for`), so its faults are told as the timeout's."""
    found = [
        TimerProblem(name, getattr(timers, name), "not a finite number", "a number of seconds")
        for name in (*_DURATIONS, "clock_drift")
        if not math.isfinite(getattr(timers, name))
    ]
    if found:
        return found
    if not 0 <= timers.clock_drift < 0.5:
        return [TimerProblem("clock_drift", timers.clock_drift, "out of range", "0 to below 0.5")]
    if timers.heartbeat_interval_s <= 0:
        return [
            TimerProblem(
                "heartbeat_interval_s", timers.heartbeat_interval_s, "not positive", "above 0 s"
            )
        ]
    found += _election_timeout_problems(timers, lease_derived)
    if not lease_derived:
        found += _lease_problems(timers)
    return found + _succession_problems(timers)


def _election_timeout_problems(t: ElectionTimers, lease_derived: bool) -> list[TimerProblem]:
    """The timeout spans 3 heartbeats (VRRP's three missed adverts); a derived lease of
    `max_safe_lease_s - heartbeat` must also cover 2 heartbeats."""
    h, e, d = t.heartbeat_interval_s, t.election_timeout_s, t.clock_drift
    stretch = (1 + d) / (1 - d)  # election timeout per second of safe lease
    if lease_derived:
        # lease = e / stretch - h >= 2h
        lowest, strict, spans = 3 * h * stretch, False, 3 * h * stretch
        why = (
            "under 3 heartbeat intervals (VRRP's three missed adverts) with the clock-drift "
            "margin that leaves the derived lease_timeout_s 2 of them"
        )
    else:
        spans, for_lease = 3 * h, t.lease_timeout_s * stretch
        lowest, strict = max(spans, for_lease), for_lease >= spans
        why = f"under 3 heartbeat intervals ({spans:g} s): VRRP's three missed adverts"
    if e >= spans - _ROUNDING:
        return []
    allowed = f"{_more_than(lowest) if strict else _at_least(lowest)} s or more"
    slowest = e / stretch / 3 if lease_derived else e / 3
    fix = f"heartbeat_interval_s at most {_at_most(slowest)} s"
    return [TimerProblem("election_timeout_s", e, why, allowed, fix)]


def _lease_problems(t: ElectionTimers) -> list[TimerProblem]:
    """A chosen lease lies in [2 heartbeats, the safe bound of the election timeout)."""
    h, e, d, lease = t.heartbeat_interval_s, t.election_timeout_s, t.clock_drift, t.lease_timeout_s
    limit = max_safe_lease_s(e, d)
    if lease < limit and lease >= 2 * h - _ROUNDING:
        return []
    if lease >= limit:
        why = (
            f"not below election_timeout_s x (1-drift)/(1+drift) = {limit:.4f} s, "
            "or two primaries could overlap"
        )
    else:
        why = f"under 2 heartbeat intervals ({2 * h:g} s): one lost ack would end the lease"
    if float(_below(limit)) >= float(_at_least(2 * h)):
        allowed = f"{_at_least(2 * h)} to {_below(limit)} s"
        fix = "unset it so that it follows election_timeout_s"
    else:
        allowed = f"none with election_timeout_s = {e:g} and heartbeat_interval_s = {h:g}"
        shortest = max(float(_at_least(3 * h)), float(_more_than(2 * h * (1 + d) / (1 - d))))
        slowest = min(float(_below(limit / 2)), float(_at_most(e / 3)))
        fix = (
            f"election_timeout_s {shortest:g} s or more, or heartbeat_interval_s at most "
            f"{slowest:g} s"
        )
    return [TimerProblem("lease_timeout_s", lease, why, allowed, fix)]


def _succession_problems(t: ElectionTimers) -> list[TimerProblem]:
    found = [
        TimerProblem(name, getattr(t, name), "negative", "0 s or more")
        for name in ("priority_skew_s", "election_jitter_s", "preempt_delay_s")
        if getattr(t, name) < 0
    ]
    if not found and t.election_jitter_s > t.priority_skew_s:
        found.append(
            TimerProblem(
                "election_jitter_s",
                t.election_jitter_s,
                f"over priority_skew_s ({t.priority_skew_s:g} s): jitter could overtake "
                "the line of succession",
                f"0 to {t.priority_skew_s:g} s",
                f"priority_skew_s {t.election_jitter_s:g} s or more",
            )
        )
    return found


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
# fast: 30 ms / 0.25 s, a host loss replaced in ~0.27 s (VRRPv3 at 0.1 s: ~0.31 s) and as quiet
# as wired on a lossy link (its lease spans ~7 heartbeats), but the lease is 0.215 s: a stall of
# the core's loop that long (a flood of connections held heartbeats 0.1-0.25 s) costs it, and a
# spurious failover stops the robot. Not the default for that reason (docs/operations.md).
# wifi: 100 ms / 2 s survives 18 lost round trips, for 20 % loss.
PROFILES: Final[dict[TimerProfile, ElectionTimers]] = {
    "wired": _profile(0.05, 0.5, priority_skew_s=0.05, election_jitter_s=0.02),
    "fast": _profile(0.03, 0.25, priority_skew_s=0.05, election_jitter_s=0.02),
    "wifi": _profile(0.1, 2.0, priority_skew_s=0.2, election_jitter_s=0.1),
}
# Keys that follow a changed heartbeat (set alone) in proportion, so the profile keeps its
# shape: as many heartbeats per election timeout, skew and jitter.
_SCALED: Final = ("election_timeout_s", "priority_skew_s", "election_jitter_s")


def resolve_timers(profile: TimerProfile, **overrides: float) -> tuple[ElectionTimers, bool]:
    """The timers of `profile` with `overrides`, unvalidated, and whether the lease was derived.

    A heartbeat changed without an election timeout scales the profile's election timeout,
    skew and jitter by the same ratio (those not given); the lease, unless given, follows the
    election timeout: the safe bound less one heartbeat.
    """
    base = PROFILES[profile]
    values = {name: getattr(base, name) for name in (*_DURATIONS, "clock_drift")}
    h = overrides.get("heartbeat_interval_s")
    if h is not None and math.isfinite(h) and h > 0 and "election_timeout_s" not in overrides:
        ratio = h / base.heartbeat_interval_s
        for name in _SCALED:
            values[name] = round(getattr(base, name) * ratio, 9)
    values.update(overrides)
    derived = "lease_timeout_s" not in overrides and any(
        values[name] != getattr(base, name)
        for name in ("election_timeout_s", "clock_drift", "heartbeat_interval_s")
    )
    if derived and 0 <= values["clock_drift"] < 0.5:  # else timer_problems names the drift
        lease = max_safe_lease_s(values["election_timeout_s"], values["clock_drift"])
        values["lease_timeout_s"] = lease - values["heartbeat_interval_s"]
    # Built without __post_init__'s check: the caller judges it with timer_problems, which
    # words a derived lease's faults as the election timeout's.
    timers = ElectionTimers.__new__(ElectionTimers)
    for name, value in values.items():
        object.__setattr__(timers, name, value)
    return timers, derived


def timers_for(profile: TimerProfile, **overrides: float) -> ElectionTimers:
    """The timers of `profile` with `overrides` applied (see `resolve_timers`); ValueError
    naming each broken relation and a range of values that would work."""
    timers, derived = resolve_timers(profile, **overrides)
    problems = timer_problems(timers, lease_derived=derived)
    if problems:
        raise ValueError("; ".join(str(problem) for problem in problems))
    return replace(timers)
