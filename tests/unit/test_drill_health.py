"""What makes a cluster unfit for `ha-voice drill`, read from its primary's `/cluster`."""

from __future__ import annotations

from typing import Any

from ha_voice.drill import health_problems


def _member(node: str, role: str, **extra: Any) -> dict[str, Any]:
    return {"node": node, "role": role, "self": False, "last_heard_s": 0.05, **extra}


def _view(*members: dict[str, Any], role: str = "primary") -> dict[str, Any]:
    me = {"node": "n1", "role": role, "self": True}
    return {"node": "n1", "role": role, "leader": "n1", "members": [me, *members]}


def test_a_primary_with_live_backups_and_witness_is_fit() -> None:
    view = _view(_member("n2", "backup"), _member("w", "witness", witness=True))
    assert health_problems(view, None) == []


def test_no_primary_with_a_valid_lease_is_the_only_problem_named() -> None:
    view = _view(_member("n2", "backup"), role="candidate")
    view["leader"] = None
    (problem,) = health_problems(view, None)
    assert "no primary with a valid lease" in problem


def test_each_missing_or_faulty_member_is_named() -> None:
    view = _view(
        _member("n2", "fault"),
        _member("n3", "unreachable", last_heard_s=4.2),
        _member("w", "witness", witness=True, last_heard_s=None),
    )
    problems = "; ".join(health_problems(view, None))
    assert "n2 is in FAULT" in problems
    assert "n3 is unreachable: not heard (last heard 4.2 s ago)" in problems
    assert "witness w is not heard (never heard)" in problems
    assert "no backup can take over" in problems


def test_a_single_member_cannot_be_drilled() -> None:
    (problem,) = health_problems(_view(), None)
    assert "a drill needs a second member that can lead" in problem


def test_a_primary_whose_takeover_is_not_done_is_not_drilled() -> None:
    problems = health_problems(_view(_member("n2", "backup")), "taking over")
    assert problems == ["the primary is not serving: taking over"]
