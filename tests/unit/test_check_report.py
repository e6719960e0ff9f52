"""The report of `ha-voice check`: its lines, its JSON shape, its exit status, and the
round-trip rule it shares with the daemon."""

from __future__ import annotations

from ha_voice.check import Finding, exit_code, report, split_fix, text_lines
from ha_voice.cluster.timers import RTT_HEADROOM, round_trip_problem

OK = Finding("config", "ok", "valid")
WARN = Finding("peers", "warn", "not heard: n2", "start it")
FAIL = Finding("cluster_key_file", "fail", "mode 0640\nsecond line", "chmod 600 /k")


def test_the_exit_status_is_the_worst_finding() -> None:
    assert exit_code([]) == 0
    assert exit_code([OK]) == 0
    assert exit_code([OK, WARN]) == 1
    assert exit_code([FAIL, OK, WARN]) == 2


def test_the_json_shape() -> None:
    assert report([OK, WARN]) == {
        "status": "warn",
        "exit": 1,
        "checks": [
            {"check": "config", "level": "ok", "detail": "valid", "fix": ""},
            {"check": "peers", "level": "warn", "detail": "not heard: n2", "fix": "start it"},
        ],
    }


def test_one_line_per_finding_with_its_fix_and_continuations_indented() -> None:
    assert text_lines([OK, FAIL]) == [
        "ok    config: valid",
        "fail  cluster_key_file: mode 0640  fix: chmod 600 /k",
        "        second line",
    ]


def test_a_problem_splits_at_its_last_fix() -> None:
    assert split_fix("k = 'x': bad; fix: do a; fix: b") == ("k = 'x': bad; fix: do a", "b")
    assert split_fix("no fix here") == ("no fix here", "")


def test_the_round_trip_rule() -> None:
    assert round_trip_problem(0.5, 0.5 / RTT_HEADROOM) is None
    problem = round_trip_problem(0.5, 0.06)
    assert problem is not None
    assert problem.startswith("election_timeout_s 0.500 is under 10x")
    assert 'timer_profile = "wifi"' in problem
