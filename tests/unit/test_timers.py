"""Election timer profiles and the lease inequality they must keep."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    with pytest.raises(ValueError, match="allowed") as caught:
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


def test_there_are_wired_fast_and_wifi_profiles() -> None:
    assert set(PROFILES) == {"wired", "fast", "wifi"}
    assert PROFILES["wifi"].election_timeout_s > PROFILES["wired"].election_timeout_s
    # fast: VRRPv3-at-0.1-s host-loss speed (docs/benchmarks.md), a lease of ~7 heartbeats.
    fast = PROFILES["fast"]
    assert (fast.heartbeat_interval_s, fast.election_timeout_s) == (0.03, 0.25)
    assert fast.lease_timeout_s == pytest.approx(0.215, abs=0.001)
    assert fast.lease_timeout_s >= 7 * fast.heartbeat_interval_s


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
        pytest.param({"heartbeat_interval_s": 0.1}, 1.0 * 0.99 / 1.01 - 0.1, id="heartbeat"),
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


# --- timers that follow the heartbeat -------------------------------------------------------

HEARTBEATS = st.floats(min_value=0.005, max_value=10.0, allow_nan=False)


@pytest.mark.parametrize("name", sorted(PROFILES))
@settings(max_examples=300, deadline=None)
@given(heartbeat=HEARTBEATS)
def test_a_changed_heartbeat_alone_is_always_valid_and_keeps_the_profiles_shape(
    name: str, heartbeat: float
) -> None:
    base = PROFILES[name]  # type: ignore[index]
    timers = timers_for(name, heartbeat_interval_s=heartbeat)  # type: ignore[arg-type]
    ratio = heartbeat / base.heartbeat_interval_s
    assert timers.heartbeat_interval_s == heartbeat
    assert timers.election_timeout_s == pytest.approx(base.election_timeout_s * ratio)
    assert timers.priority_skew_s == pytest.approx(base.priority_skew_s * ratio)
    assert timers.election_jitter_s == pytest.approx(base.election_jitter_s * ratio)
    assert timers.problems() == []
    # The lease keeps one heartbeat in hand below the safe bound, as the profile's does.
    limit = max_safe_lease_s(timers.election_timeout_s, timers.clock_drift)
    assert timers.lease_timeout_s == pytest.approx(limit - heartbeat, abs=1e-4)


def test_a_heartbeat_with_an_election_timeout_scales_nothing_else() -> None:
    timers = timers_for("wired", heartbeat_interval_s=0.1, election_timeout_s=0.6)
    assert timers.election_timeout_s == 0.6
    assert timers.priority_skew_s == PROFILES["wired"].priority_skew_s
    assert timers.election_jitter_s == PROFILES["wired"].election_jitter_s


def test_a_given_skew_is_kept_while_the_timeout_follows_the_heartbeat() -> None:
    timers = timers_for("wired", heartbeat_interval_s=0.1, priority_skew_s=0.3)
    assert (timers.election_timeout_s, timers.priority_skew_s) == (1.0, 0.3)
    assert timers.election_jitter_s == pytest.approx(0.04)


# --- every refusal names a range that exists --------------------------------------------------

_RANGE = re.compile(r"allowed: (?P<lo>[0-9.]+) to (?P<hi>[0-9.]+) s")
_FLOOR = re.compile(r"allowed: (?P<lo>[0-9.]+) s or more")
_FIX = re.compile(r"(?P<key>[a-z_]+_s) (?:(?P<lo>[0-9.]+) s or more|at most (?P<hi>[0-9.]+) s)")


def value_inside(problem: str) -> float | None:
    """A value inside the range the problem allows for its own key; None if it allows none."""
    if (span := _RANGE.search(problem)) is not None:
        lo, hi = float(span["lo"]), float(span["hi"])
        assert lo <= hi, problem
        return (lo + hi) / 2
    if (floor := _FLOOR.search(problem)) is not None:
        return float(floor["lo"]) * 1.01
    assert "allowed: none" in problem, problem
    return None


def fixes(problem: str) -> dict[str, float]:
    """The other keys' values that the problem's fix proposes, inside their ranges."""
    tail = problem.split("allowed: none", 1)[1]
    found = {}
    for match in _FIX.finditer(tail):
        found[match["key"]] = float(match["lo"]) * 1.01 if match["lo"] else float(match["hi"])
    return found


# (profile, overrides): each breaks one relation or several.
BROKEN = [
    ("wired", {"heartbeat_interval_s": 1.0, "election_timeout_s": 0.5}),
    ("wired", {"heartbeat_interval_s": 0.1, "election_timeout_s": 0.25}),
    ("wired", {"election_timeout_s": 0.1}),
    ("wired", {"lease_timeout_s": 0.6}),
    ("wired", {"lease_timeout_s": 0.05}),
    ("wired", {"heartbeat_interval_s": 0.5, "election_timeout_s": 1.0, "lease_timeout_s": 0.9}),
    ("wired", {"heartbeat_interval_s": 0.2, "lease_timeout_s": 3.0}),
    ("wired", {"election_jitter_s": 0.2}),
    ("wired", {"election_timeout_s": 0.3, "lease_timeout_s": 0.29, "clock_drift": 0.1}),
    ("wifi", {"heartbeat_interval_s": 2.0, "election_timeout_s": 2.0}),
    ("wifi", {"election_timeout_s": 0.5, "lease_timeout_s": 0.15}),
    ("wifi", {"heartbeat_interval_s": 0.05, "election_jitter_s": 0.5, "priority_skew_s": 0.2}),
]


def _keys_in_trouble(profile: str, overrides: dict[str, float]) -> dict[str, str]:
    try:
        timers_for(profile, **overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        return {text.split(" = ", 1)[0]: text for text in str(exc).split("; ")}
    return {}


@pytest.mark.parametrize(("profile", "overrides"), BROKEN, ids=str)
def test_each_refusal_names_its_key_and_a_non_empty_range_that_works(
    profile: str, overrides: dict[str, float]
) -> None:
    troubles = _keys_in_trouble(profile, overrides)
    assert troubles, "these timers must be refused"
    for key, problem in troubles.items():
        assert key in (*overrides, "election_timeout_s", "lease_timeout_s"), problem
        inside = value_inside(problem)
        if inside is None:  # no value of this key works: the fix names the others to change
            proposed = fixes(problem)
            assert proposed, problem
            for other, value in proposed.items():
                assert other != key
                changed = {**overrides, other: value}
                assert _keys_in_trouble(profile, changed).get(other) is None, (problem, other)
            continue
        # A value inside the range clears this key's problem (others may remain).
        changed = {**overrides, key: inside}
        assert key not in _keys_in_trouble(profile, changed), (problem, inside)


def test_the_issues_example_suggests_ranges_that_exist() -> None:
    # Before: heartbeat 1.0 alone was refused and the suggested lease range was empty.
    assert timers_for("wired", heartbeat_interval_s=1.0).election_timeout_s == 10.0
    problem = _keys_in_trouble("wired", {"heartbeat_interval_s": 1.0, "election_timeout_s": 0.5})
    text = problem["election_timeout_s"]
    lowest = float(_FLOOR.search(text)["lo"])  # type: ignore[index]
    assert 3.0 <= lowest < 3.1
    timers_for("wired", heartbeat_interval_s=1.0, election_timeout_s=lowest)
    with pytest.raises(ValueError, match="election_timeout_s"):
        timers_for("wired", heartbeat_interval_s=1.0, election_timeout_s=lowest - 0.001)


@pytest.mark.parametrize("drift", [-1.0, -0.01, 0.5, math.nan])
def test_a_bad_drift_through_timers_for_is_refused_naming_it(drift: float) -> None:
    with pytest.raises(ValueError, match="clock_drift"):
        timers_for("wired", clock_drift=drift)
