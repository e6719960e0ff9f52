"""The chaos checker (tests/chaos/checker.py) on synthetic samples: a clean recovery passes, and
each rule, broken on purpose, is reported with the fault it followed."""

from __future__ import annotations

from collections.abc import Iterable

from tests.chaos.checker import check_chaos
from tests.chaos.observe import RoleSample, ViewSample, primary_timeline
from tests.jepsen import Fault, FaultKind

BOUND_S = 2.0
# n1 leads in term 1 until it is paused at 10 s; n2 leads in term 2 from 10.6 s; n1 resumes at 11.
PAUSE = Fault(FaultKind.PAUSE_PRIMARY, "n1", 10.0, 11.0)
END_S = 20.0


def _roles(changes: Iterable[tuple[float, float, str, int]] = ()) -> list[RoleSample]:
    """Every 0.1 s from 0 to END_S: n1 primary (term 1) until 10, n2 (term 2) from 10.6;
    `changes` overrides (from, to, node, term) with that node serving in that term."""
    samples = []
    for step in range(int(END_S * 10)):
        t = step / 10
        leader, term = ("n1", 1) if t < 10.0 else ("n2", 2)
        if 10.0 <= t < 10.6:
            leader = ""
        for start, stop, node, changed_term in changes:
            if start <= t < stop:
                leader, term = node, changed_term
        for node in ("n1", "n2", "n3"):
            paused = node == "n1" and 10.0 <= t < 11.0
            samples.append(
                RoleSample(
                    t,
                    node,
                    node == leader,
                    None if paused else ("primary" if node == leader else "backup"),
                    None if paused else term,
                )
            )
    return samples


def _views(mdns: dict[float, tuple[str, ...]] | None = None) -> list[ViewSample]:
    """Both channels on the primary, 0.1 s after it took over; `mdns` overrides from a time on."""
    samples = []
    overrides = sorted((mdns or {}).items())
    for step in range(int(END_S * 10)):
        t = step / 10
        shown: tuple[str, ...] = ("n1",) if t < 10.7 else ("n2",)
        arp = shown
        for since, nodes in overrides:
            if t >= since:
                shown = nodes
        samples += [ViewSample(t, "mdns", shown), ViewSample(t, "arp", arp)]
    return samples


def test_a_clean_failover_passes_and_is_measured() -> None:
    report = check_chaos(_roles(), _views(), [PAUSE], bound_s=BOUND_S, end_s=END_S)
    assert report.ok, report.summary()
    assert report.back_ms == {"pause_primary": [0.0]}
    # n2 serves from 10.6 s, both channels show it from 10.7 s.
    assert [round(v) for v in report.view_lag_ms["mdns"]] == [100]
    assert [round(v) for v in report.view_lag_ms["arp"]] == [100]


def test_a_flushed_endpoint_after_the_resume_is_a_client_view_violation() -> None:
    # The resumed n1's goodbye at 11.1 s leaves the browser with no record (the known bug).
    report = check_chaos(_roles(), _views({11.1: ()}), [PAUSE], bound_s=BOUND_S, end_s=END_S)
    assert report.term_regressions == report.primary_not_back == []
    assert len(report.client_view) == 1, report.client_view
    assert report.client_view[0] == (
        "pause_primary of n1 at +10.000s: at +13.000s mdns shows nothing (none); the primary "
        "since +10.600s is n2 (since +11.100s, 0.100s after pause_primary of n1 at +10.000s "
        "healed)"
    )


def test_a_wrong_view_names_the_fault_it_began_after_though_it_outlasts_it() -> None:
    # The endpoint is flushed after the pause and stays so through a later backup's kill.
    kill = Fault(FaultKind.KILL_BACKUP, "n3", 15.0, 15.5)
    report = check_chaos(_roles(), _views({11.1: ()}), [PAUSE, kill], bound_s=BOUND_S, end_s=END_S)
    assert [v.split(": at", 1)[0] for v in report.client_view] == [
        "pause_primary of n1 at +10.000s",
        "kill_backup of n3 at +15.000s",
    ]
    assert report.client_view[1].endswith(
        "(since +11.100s, 0.100s after pause_primary of n1 at +10.000s healed)"
    )


def test_a_stale_view_within_the_bound_is_allowed() -> None:
    # The browser follows the new primary only 1.5 s after it took over: late, but in bound.
    report = check_chaos(
        _roles(), _views({10.0: ("n1",), 12.1: ("n2",)}), [PAUSE], bound_s=BOUND_S, end_s=END_S
    )
    assert report.ok, report.summary()
    assert [round(v) for v in report.view_lag_ms["mdns"]] == [1500]


def test_a_term_going_back_is_reported() -> None:
    roles = _roles([(15.0, 15.5, "n2", 1)])
    report = check_chaos(roles, _views(), [PAUSE], bound_s=BOUND_S, end_s=END_S)
    assert report.term_regressions, report.summary()
    assert report.term_regressions[0].startswith("n1: term 2")


def test_no_primary_within_the_bound_after_the_heal_is_reported() -> None:
    roles = _roles([(10.6, 14.0, "", 2)])
    report = check_chaos(roles, _views(), [PAUSE], bound_s=BOUND_S, end_s=END_S)
    assert len(report.primary_not_back) == 1, report.summary()
    assert "a primary after 3.000s (bound 2.0s)" in report.primary_not_back[0]


def test_two_owners_of_the_floating_ip_are_a_client_view_violation() -> None:
    views = [
        ViewSample(v.t_s, v.channel, ("n1", "n2") if v.channel == "arp" and v.t_s > 13 else v.nodes)
        for v in _views()
    ]
    report = check_chaos(_roles(), views, [PAUSE], bound_s=BOUND_S, end_s=END_S)
    assert [v.split(": ", 1)[1] for v in report.client_view] == [
        "at +13.100s arp shows n1,n2; the primary since +10.600s is n2 "
        "(since +13.100s, 2.100s after pause_primary of n1 at +10.000s healed)"
    ]


def test_the_timeline_has_one_primary_or_none() -> None:
    samples = [
        RoleSample(0.0, "n1", True, "primary", 1),
        RoleSample(0.1, "n2", True, "primary", 2),  # two at once: none is "the" primary
        RoleSample(0.2, "n1", False, "backup", 2),
        RoleSample(1.0, "n3", False, "backup", 2),  # n2's last sample is 0.9 s old: stale
    ]
    assert primary_timeline(samples) == [(0.0, "n1"), (0.1, ""), (0.2, "n2"), (1.0, "")]
