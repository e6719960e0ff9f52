"""Election timer profiles and the lease inequality they must keep."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ha_voice.cluster.timers import PROFILES, ElectionTimers, max_safe_lease_s, timers_for

# A valid starting point whose numbers are easy to reason about: drift 0, so the lease bound is
# the election timeout itself.
PLAIN = ElectionTimers(
    heartbeat_interval_s=0.1,
    election_timeout_s=1.0,
    lease_timeout_s=0.8,
    priority_skew_s=0.1,
    election_jitter_s=0.05,
    clock_drift=0.0,
)


def refusal(**changes: float) -> str:
    """The message of the ValueError that PLAIN with `changes` raises; it says what must hold."""
    with pytest.raises(ValueError, match="must") as caught:
        dataclasses.replace(PLAIN, **changes)
    return str(caught.value)


# --- profiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_keeps_the_lease_inequality_with_a_heartbeat_to_spare(name: str) -> None:
    timers = PROFILES[name]  # type: ignore[index]
    d = timers.clock_drift
    lease_end_worst = timers.lease_timeout_s / (1 - d)
    refusal_end_worst = timers.election_timeout_s / (1 + d)
    assert lease_end_worst + timers.heartbeat_interval_s <= refusal_end_worst
    assert timers.lease_timeout_s < max_safe_lease_s(timers.election_timeout_s, d)
    assert timers.problems() == []


def test_there_are_wired_and_wifi_profiles() -> None:
    assert set(PROFILES) == {"wired", "wifi"}
    assert PROFILES["wifi"].election_timeout_s > PROFILES["wired"].election_timeout_s


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_survives_more_than_three_lost_heartbeats(name: str) -> None:
    timers = PROFILES[name]  # type: ignore[index]
    assert timers.election_timeout_s >= 3 * timers.heartbeat_interval_s
    assert timers.lease_timeout_s >= 2 * timers.heartbeat_interval_s
    assert timers.election_jitter_s <= timers.priority_skew_s


def test_retry_timeout_is_two_heartbeats() -> None:
    assert PLAIN.retry_timeout_s == pytest.approx(0.2)
    assert PROFILES["wired"].retry_timeout_s == pytest.approx(0.1)


# --- refusals -------------------------------------------------------------------------------


def test_lease_at_the_safety_bound_is_refused() -> None:
    message = refusal(lease_timeout_s=1.0)  # drift 0: the bound is the election timeout
    assert "lease_timeout_s" in message
    assert "overlap" in message


def test_lease_just_below_the_safety_bound_is_accepted() -> None:
    timers = dataclasses.replace(PLAIN, lease_timeout_s=0.999)
    assert timers.lease_timeout_s == 0.999


def test_lease_bound_shrinks_with_drift() -> None:
    # 0.95 is safe without drift but not with 5 %: 1.0 x 0.95 / 1.05 = 0.905.
    dataclasses.replace(PLAIN, lease_timeout_s=0.95)
    message = refusal(lease_timeout_s=0.95, clock_drift=0.05)
    assert "lease_timeout_s" in message
    assert "0.9048" in message
    dataclasses.replace(PLAIN, lease_timeout_s=0.9, clock_drift=0.05)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"lease_timeout_s": 1.5}, "lease_timeout_s", id="lease-unsafe"),
        pytest.param({"lease_timeout_s": math.inf}, "lease_timeout_s", id="lease-infinite"),
        pytest.param(
            {"election_timeout_s": 0.29, "lease_timeout_s": 0.2},
            "election_timeout_s",
            id="election-below-3-heartbeats",
        ),
        pytest.param({"lease_timeout_s": 0.19}, "lease_timeout_s", id="lease-below-2-heartbeats"),
        pytest.param({"election_jitter_s": 0.11}, "election_jitter_s", id="jitter-over-skew"),
        pytest.param({"clock_drift": -0.01}, "clock_drift", id="drift-negative"),
        pytest.param({"clock_drift": 0.5}, "clock_drift", id="drift-half"),
        pytest.param({"clock_drift": 1.0}, "clock_drift", id="drift-one"),
        pytest.param({"clock_drift": math.nan}, "clock_drift", id="drift-nan"),
        pytest.param({"heartbeat_interval_s": 0.0}, "heartbeat_interval_s", id="heartbeat-zero"),
        pytest.param({"heartbeat_interval_s": -0.1}, "heartbeat_interval_s", id="heartbeat-neg"),
        pytest.param({"priority_skew_s": -0.1}, "priority_skew_s", id="skew-negative"),
        pytest.param({"preempt_delay_s": -1.0}, "preempt_delay_s", id="preempt-negative"),
    ],
)
def test_broken_timers_are_refused_naming_the_field(changes: dict[str, float], field: str) -> None:
    message = refusal(**changes)
    assert field in message
    assert "; " not in message, "one fault must give one problem"


def test_every_problem_is_reported_at_once() -> None:
    message = refusal(election_timeout_s=0.25, lease_timeout_s=0.3, election_jitter_s=0.2)
    problems = message.split("; ")
    assert len(problems) == 3
    assert problems[0].startswith("election_timeout_s")
    assert problems[1].startswith("lease_timeout_s")
    assert problems[2].startswith("election_jitter_s")


def test_jitter_equal_to_skew_is_accepted() -> None:
    assert dataclasses.replace(PLAIN, election_jitter_s=0.1).election_jitter_s == 0.1


def test_election_timeout_of_exactly_three_heartbeats_is_accepted() -> None:
    timers = dataclasses.replace(
        PLAIN, heartbeat_interval_s=0.25, election_timeout_s=0.75, lease_timeout_s=0.5
    )
    assert timers.election_timeout_s == 3 * timers.heartbeat_interval_s


@pytest.mark.parametrize(("heartbeat", "election", "lease"), [(0.1, 0.3, 0.25), (0.05, 0.15, 0.1)])
def test_decimal_election_timeout_of_exactly_three_heartbeats_is_accepted(
    heartbeat: float, election: float, lease: float
) -> None:
    timers = dataclasses.replace(
        PLAIN, heartbeat_interval_s=heartbeat, election_timeout_s=election, lease_timeout_s=lease
    )
    assert timers.election_timeout_s == election


@pytest.mark.parametrize(
    "field",
    [
        "heartbeat_interval_s",
        "election_timeout_s",
        "lease_timeout_s",
        "priority_skew_s",
        "election_jitter_s",
        "preempt_delay_s",
    ],
)
def test_nan_durations_are_refused(field: str) -> None:
    assert field in refusal(**{field: math.nan})


def test_with_validates_again() -> None:
    with pytest.raises(ValueError, match="lease_timeout_s"):
        PROFILES["wired"].with_(lease_timeout_s=PROFILES["wired"].election_timeout_s)
    changed = PROFILES["wired"].with_(preempt_delay_s=3.0)
    assert changed.preempt_delay_s == 3.0
    assert PROFILES["wired"].preempt_delay_s == 10.0


# --- timers_for -----------------------------------------------------------------------------


def test_changed_election_timeout_carries_the_lease_along() -> None:
    timers = timers_for("wired", election_timeout_s=1.0)
    assert timers.election_timeout_s == 1.0
    assert timers.lease_timeout_s == pytest.approx(1.0 * 0.99 / 1.01 - 0.05, abs=1e-4)
    assert timers.lease_timeout_s > PROFILES["wired"].lease_timeout_s
    assert timers.lease_timeout_s < max_safe_lease_s(1.0, timers.clock_drift)


def test_shorter_election_timeout_shortens_the_lease_so_it_stays_safe() -> None:
    # wifi's own lease (1.86 s) would be unsafe with a 1 s election timeout.
    assert PROFILES["wifi"].lease_timeout_s > max_safe_lease_s(1.0, 0.01)
    timers = timers_for("wifi", election_timeout_s=1.0)
    assert timers.lease_timeout_s == pytest.approx(0.8802, abs=1e-4)
    assert timers.lease_timeout_s / 0.99 + timers.heartbeat_interval_s <= 1.0 / 1.01


@pytest.mark.parametrize(
    ("overrides", "lease"),
    [
        pytest.param({"heartbeat_interval_s": 0.1}, 0.5 * 0.99 / 1.01 - 0.1, id="heartbeat"),
        pytest.param({"clock_drift": 0.1}, 0.5 * 0.9 / 1.1 - 0.05, id="drift"),
        pytest.param({"clock_drift": 0.0}, 0.5 - 0.05, id="no-drift"),
    ],
)
def test_lease_follows_heartbeat_and_drift(overrides: dict[str, float], lease: float) -> None:
    assert timers_for("wired", **overrides).lease_timeout_s == pytest.approx(lease, abs=1e-4)


def test_explicit_lease_override_is_kept() -> None:
    timers = timers_for("wired", election_timeout_s=1.0, lease_timeout_s=0.5)
    assert timers.lease_timeout_s == 0.5
    assert timers_for("wired", lease_timeout_s=0.3).lease_timeout_s == 0.3


def test_explicit_unsafe_lease_override_is_refused() -> None:
    with pytest.raises(ValueError, match="lease_timeout_s"):
        timers_for("wired", election_timeout_s=1.0, lease_timeout_s=1.0)


def test_other_overrides_leave_the_lease_alone() -> None:
    timers = timers_for("wifi", priority_skew_s=0.5, preempt_delay_s=1.0)
    assert timers.lease_timeout_s == PROFILES["wifi"].lease_timeout_s
    assert timers.priority_skew_s == 0.5
    assert timers.preempt_delay_s == 1.0


def test_no_overrides_gives_the_profile() -> None:
    assert timers_for("wired") == PROFILES["wired"]
    assert timers_for("wifi") == PROFILES["wifi"]


# --- max_safe_lease_s -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("election", "drift", "lease"),
    [
        (1.0, 0.0, 1.0),
        (0.5, 0.01, 0.49009900990099),
        (2.0, 0.01, 1.96039603960396),
        (2.0, 0.25, 1.2),
        (3.0, 0.2, 2.0),
    ],
)
def test_max_safe_lease(election: float, drift: float, lease: float) -> None:
    assert max_safe_lease_s(election, drift) == pytest.approx(lease, rel=1e-12)


def test_max_safe_lease_is_where_the_inequality_becomes_equality() -> None:
    election, drift = 0.8, 0.03
    lease = max_safe_lease_s(election, drift)
    assert lease / (1 - drift) == pytest.approx(election / (1 + drift), rel=1e-12)
