"""The Jepsen checker on synthetic histories: a correct run passes, runs broken on purpose do not.

The correct run has two failovers: n1 dies after sending an idempotent "sit" to the robot and
before recording it (n2 runs it again), n2 dies after sending a "stretch" (n3 records it as
unknown and never repeats it). The workload's routing is tested here too, with a fake client.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest

from ha_voice.robot.base import ACTIONS, Action, ErrorCode, FencingToken
from ha_voice.robot.sim import EntryKind, JournalEntry, check_journal
from tests.jepsen import (
    Answer,
    Attempt,
    Fault,
    FaultKind,
    NodeJournal,
    Record,
    Report,
    Workload,
    check,
    node_journal_from_json,
)

NODES = ("n1", "n2", "n3")
URLS = ("http://n1", "http://n2", "http://n3")

# (index, term, key, action, final status); indices 1, 6 and 9 are the no-ops of terms 1, 2, 3.
COMMANDS = (
    (2, 1, "k-up", "recovery_stand", "done"),
    (3, 1, "k-hello", "hello", "done"),
    (4, 1, "k-move", "move", "done"),
    (5, 1, "k-sit", "sit", "done"),
    (7, 2, "k-rise", "rise_sit", "done"),
    (8, 2, "k-stretch", "stretch", "unknown"),
    (10, 3, "k-sit2", "sit", "done"),
    (11, 3, "k-hello2", "hello", "failed"),
    (12, 3, "k-doubt", "stretch", "unknown"),
)


def _sent(
    action: str, term: int, index: int, node: str, at_s: float, *, accepted: bool = True
) -> JournalEntry:
    code = None if accepted else ErrorCode.NOT_AVAILABLE_IN_MODE
    token = FencingToken(term, index, node)
    return JournalEntry(EntryKind.COMMAND, at_s, Action(action), {}, token, accepted, code)


# What the robot saw, in arrival order: (action, term, index, node, accepted).
ROBOT = (
    ("stop_move", 1, 1, "n1", True),  # n1's takeover
    ("recovery_stand", 1, 2, "n1", True),
    ("hello", 1, 3, "n1", True),
    ("move", 1, 4, "n1", True),
    ("move", 1, 4, "n1", True),
    ("move", 1, 4, "n1", True),
    ("stop_move", 1, 4, "n1", True),
    ("sit", 1, 5, "n1", True),  # then n1 dies before recording it
    ("stop_move", 2, 6, "n2", True),  # n2's takeover
    ("sit", 2, 5, "n2", True),  # idempotent: run again
    ("rise_sit", 2, 7, "n2", True),
    ("stretch", 2, 8, "n2", True),  # then n2 dies: unknown, never repeated
    ("stop_move", 3, 9, "n3", True),
    ("balance_stand", 3, 9, "n3", True),
    ("sit", 3, 10, "n3", True),
    ("hello", 3, 11, "n3", False),  # refused while sitting
    ("stretch", 3, 12, "n3", False),
)


def robot_journal(rows: Iterable[tuple[str, int, int, str, bool]] = ROBOT) -> list[JournalEntry]:
    return [
        _sent(action, term, index, node, 10.0 + i * 0.1, accepted=accepted)
        for i, (action, term, index, node, accepted) in enumerate(rows)
    ]


def journal(node: str, rows: Sequence[tuple[int, int, str, str, str]] = COMMANDS) -> NodeJournal:
    records = tuple(
        Record(index, term, key, action, status, committed=True)
        for index, term, key, action, status in rows
    )
    return NodeJournal(node, 3, 12, 12, records)


def journals() -> list[NodeJournal]:
    return [journal(node) for node in NODES]


def _answered(
    key: str, action: str, url: int, at_s: float, status: str, index: int, term: int
) -> Attempt:
    idempotent = ACTIONS[Action(action)].idempotent
    answer = Answer(status, index, term, NODES[url], duplicate=key == "k-sit")
    return Attempt(key, action, idempotent, URLS[url], at_s, at_s + 0.05, answer)


def _unanswered(key: str, action: str, url: int, at_s: float) -> Attempt:
    idempotent = ACTIONS[Action(action)].idempotent
    error = "DeadlineExceeded: no answer"
    return Attempt(key, action, idempotent, URLS[url], at_s, at_s + 3.0, None, error)


HISTORY = (
    _answered("k-up", "recovery_stand", 0, 1.0, "done", 2, 1),
    _answered("k-hello", "hello", 0, 1.1, "done", 3, 1),
    _answered("k-move", "move", 0, 1.2, "done", 4, 1),
    _unanswered("k-sit", "sit", 0, 1.5),
    _answered("k-sit", "sit", 1, 4.8, "done", 5, 2),
    _answered("k-rise", "rise_sit", 1, 5.0, "done", 7, 2),
    _unanswered("k-stretch", "stretch", 1, 5.1),
    _answered("k-stretch", "stretch", 2, 8.4, "unknown", 8, 3),
    _answered("k-sit2", "sit", 2, 8.5, "done", 10, 3),
    _answered("k-hello2", "hello", 2, 8.6, "failed", 11, 3),
    _unanswered("k-doubt", "stretch", 2, 8.7),
)
FAULTS = (
    Fault(FaultKind.KILL_PRIMARY, "n1", 1.5, 2.5),
    Fault(FaultKind.KILL_PRIMARY, "n2", 5.1, 6.1),
)


def run(
    history: Sequence[Attempt] = HISTORY,
    nodes: Sequence[NodeJournal] | None = None,
    robot: Sequence[JournalEntry] | None = None,
) -> Report:
    robot = robot_journal() if robot is None else robot
    return check(
        history, journals() if nodes is None else nodes, robot, check_journal(robot), FAULTS
    )


def test_a_correct_run_with_two_failovers_passes() -> None:
    report = run()
    assert report.ok, report.summary()
    assert (report.sent, report.acknowledged, report.indeterminate, report.tries) == (9, 8, 1, 11)
    assert report.statuses == {"done": 6, "unknown": 1, "failed": 1}
    # recovery_stand, hello, move, sit twice, rise_sit, stretch, sit: the refused ones ran nothing.
    assert report.executions == 8
    assert report.faults == {"kill_primary": 2}
    assert report.summary().startswith("jepsen: OK")


def _without(node: NodeJournal, key: str) -> NodeJournal:
    return replace(node, records=tuple(r for r in node.records if r.key != key))


def _edit(node: NodeJournal, of: str, **changes: Any) -> NodeJournal:
    records = tuple(replace(r, **changes) if r.key == of else r for r in node.records)
    return replace(node, records=records)


def test_an_answer_missing_from_one_node_is_lost() -> None:
    n1, n2, n3 = journals()
    report = run(nodes=[n1, n2, _without(n3, "k-hello")])
    assert not report.ok
    assert len(report.lost) == 1
    assert "k-hello" in report.lost[0]
    assert "n3" in report.lost[0]


@pytest.mark.parametrize(
    "changes", [{"committed": False}, {"status": "unknown"}, {"status": "executing"}]
)
def test_an_answer_uncommitted_or_recorded_otherwise_is_lost(changes: dict[str, Any]) -> None:
    n1, n2, n3 = journals()
    report = run(nodes=[n1, _edit(n2, "k-move", **changes), n3])
    assert any("k-move" in line and "n2" in line for line in report.lost)


def test_an_answer_at_another_index_diverges() -> None:
    n1, n2, n3 = journals()
    moved = [_edit(n, "k-rise", index=13) for n in (n1, n2, n3)]
    report = run(nodes=moved)
    assert any("k-rise" in line and "13" in line for line in report.diverged)


def test_a_lost_ack_that_the_nodes_still_agree_on_is_lost_not_diverged() -> None:
    report = run(nodes=[_without(n, "k-sit2") for n in journals()])
    assert len(report.lost) == 3  # once per node
    assert report.diverged == []
    # Its execution is nobody's now: no journal lists index 10.
    assert report.missing_execution == [
        "k-sit2 (answered done at index 10) never reached the robot"
    ]


def test_a_non_idempotent_command_run_again_in_a_new_term_is_caught() -> None:
    rows = list(ROBOT)
    rows.insert(rows.index(("sit", 2, 5, "n2", True)), ("hello", 2, 3, "n2", True))
    report = run(robot=robot_journal(rows))
    assert report.duplicate_executions == ["k-hello (hello) ran 2 times"]
    assert not report.ok


def test_a_non_idempotent_command_sent_twice_under_one_token_is_caught() -> None:
    rows = list(ROBOT)
    rows.insert(rows.index(("hello", 1, 3, "n1", True)), ("hello", 1, 3, "n1", True))
    assert run(robot=robot_journal(rows)).duplicate_executions == ["k-hello (hello) ran 2 times"]


def test_an_unknown_or_unanswered_command_that_ran_twice_is_caught() -> None:
    rows = [*ROBOT, ("stretch", 3, 8, "n3", True), ("stretch", 3, 12, "n3", True)]
    report = run(robot=robot_journal(rows))
    assert report.duplicate_executions == ["k-stretch (stretch) ran 2 times"]
    assert report.lost == []


def test_a_move_stream_is_one_execution_and_an_idempotent_rerun_is_allowed() -> None:
    report = run()
    assert report.duplicate_executions == []  # k-move: 3 MOVE + STOP_MOVE; k-sit: terms 1 and 2


def test_a_posture_plan_under_one_index_is_that_command_s_execution() -> None:
    # "sta op" (rise_sit) to a dog that walks is one STOP_MOVE (the guard's plan): it is
    # neither foreign nor missing.
    rise = [row for row in ROBOT if row[2] == 7]
    assert rise, "the fixture runs k-rise at index 7"
    term, node = rise[0][1], rise[0][3]
    rows = [row for row in ROBOT if row[2] != 7] + [("stop_move", term, 7, node, True)]
    report = run(robot=robot_journal(rows))
    assert report.foreign_executions == []
    assert report.missing_execution == []
    # A call no plan of rise_sit makes is still someone else's.
    rows = [row for row in ROBOT if row[2] != 7] + [("hello", term, 7, node, True)]
    report = run(robot=robot_journal(rows))
    assert any("index 7" in line for line in report.foreign_executions)


def test_a_command_answered_done_that_never_reached_the_robot_is_missing() -> None:
    rows = [row for row in ROBOT if row[2] != 3]
    report = run(robot=robot_journal(rows))
    assert len(report.missing_execution) == 1
    assert "k-hello" in report.missing_execution[0]


def test_a_refused_command_counts_as_no_execution() -> None:
    rows = [row for row in ROBOT if row[2] != 3] + [("hello", 3, 3, "n3", False)]
    assert run(robot=robot_journal(rows)).missing_execution


def test_a_key_at_two_indices_is_caught() -> None:
    n1, n2, n3 = journals()
    extra = Record(13, 3, "k-hello", "hello", "done", committed=False)
    report = run(nodes=[replace(n1, records=(*n1.records, extra), last_index=13), n2, n3])
    assert report.duplicate_keys == ["n1 holds k-hello at index 3 and 13"]


def test_journals_that_disagree_on_a_committed_index_diverge() -> None:
    n1, n2, n3 = journals()
    report = run(nodes=[n1, _edit(n2, "k-rise", key="k-other"), n3])
    assert any("index 7" in line and "k-other" in line for line in report.diverged)
    assert any("k-rise" in line and "n2" in line for line in report.lost)


def test_a_node_that_committed_past_an_entry_without_holding_it_diverges() -> None:
    n1, n2, n3 = journals()
    records = tuple(r for r in n3.records if r.index != 12)
    report = run(nodes=[n1, n2, replace(n3, records=records)])
    expected = "index 12: n1 committed k-doubt (stretch, term 3, unknown), n3 committed past it"
    assert report.diverged == [f"{expected} without it"]


def test_uncommitted_entries_may_differ_but_settled_statuses_may_not() -> None:
    n1, n2, n3 = journals()
    tail = Record(13, 3, "k-new", "sit", "accepted", committed=False)
    other = Record(13, 2, "k-old", "hello", "accepted", committed=False)
    nodes = [replace(n1, records=(*n1.records, tail)), replace(n2, records=(*n2.records, other))]
    assert run(nodes=[*nodes, n3]).ok
    report = run(nodes=[n1, n2, _edit(n3, "k-doubt", status="done")])
    assert any("index 12" in line for line in report.diverged)


def test_an_execution_under_an_older_term_than_its_entry_is_foreign() -> None:
    # n1 (term 1) sent a hello under index 7 before a quorum held it; term 2 put k-rise there.
    rows = list(ROBOT)
    rows.insert(rows.index(("sit", 1, 5, "n1", True)) + 1, ("hello", 1, 7, "n1", True))
    report = run(robot=robot_journal(rows))
    assert len(report.foreign_executions) == 1
    assert "k-rise" in report.foreign_executions[0]


def test_two_writers_at_once_are_taken_from_the_robot_verdict() -> None:
    rows = list(ROBOT)
    rows.insert(rows.index(("rise_sit", 2, 7, "n2", True)), ("sit", 2, 5, "n1", True))
    report = run(robot=robot_journal(rows))
    assert report.overlapping_writers == [
        "robot journal #10: n1 (term 2) sent again after n2 (term 2) had taken over: both drove "
        "the robot",
        "robot journal #11: n2 (term 2) sent again after n1 (term 2) had taken over: both drove "
        "the robot",
    ]
    assert not report.ok


def test_a_stale_term_is_taken_from_the_robot_verdict() -> None:
    rows = [*ROBOT, ("sit", 1, 5, "n1", True)]
    report = run(robot=robot_journal(rows))
    assert report.stale_terms
    assert "stale_terms 1" in report.summary()


def test_unavailability_runs_from_each_fault_to_the_first_answer_after_it() -> None:
    report = run()
    # n1 killed at 1.5: the next answered command was sent at 4.8 and answered at 4.85.
    # n2 killed at 5.1: sent at 8.4, answered at 8.45.
    assert report.unavailable_ms["kill_primary"] == pytest.approx([3350.0, 3350.0])
    late = Fault(FaultKind.PAUSE_PRIMARY, "n3", 9.0, 9.5)
    robot = robot_journal()
    report = check(HISTORY, journals(), robot, check_journal(robot), [*FAULTS, late])
    assert report.unmeasured == 1
    assert "pause_primary" not in report.unavailable_ms


def test_the_summary_lists_counts_and_violations() -> None:
    n1, n2, n3 = journals()
    summary = run(nodes=[n1, n2, _without(n3, "k-hello")]).summary()
    assert summary.startswith("jepsen: FAILED, 2 violations")
    assert "9 sent, 8 answered (done 6, failed 1, stopped 0, unknown 1)" in summary
    assert "1 indeterminate, 0 refused; 11 tries (DeadlineExceeded 3)" in summary
    assert "kill_primary: 3350/3350/3350 (n=2)" in summary
    assert "lost 1, diverged 1," in summary
    assert "  lost: k-hello (answered done at index 3) is not in n3's journal" in summary


def test_a_node_journal_is_read_from_its_json() -> None:
    data = {
        "node": "n2",
        "term": 4,
        "commit_index": 9,
        "last_index": 10,
        "entries": [
            {
                "index": 9,
                "term": 4,
                "key": "k",
                "action": "sit",
                "params": {},
                "status": "done",
                "outcome": "",
                "executed_by": "n2",
                "committed": True,
            }
        ],
    }
    node = node_journal_from_json(data)
    assert (node.node, node.term, node.commit_index, node.last_index) == ("n2", 4, 9, 10)
    assert node.records == (Record(9, 4, "k", "sit", "done", True, "n2", ""),)


# --- The workload, with a fake client ----------------------------------------------------------


@dataclass
class FakeResult:
    status: str
    index: int
    key: str
    node: str = "n1"
    term: int = 1
    duplicate: bool = False
    attempts: int = 1
    body: Mapping[str, Any] | None = None


class FakeClient:
    """Answers "done" unless the test queued an exception or a status for the next call."""

    def __init__(self, url: str, calls: list[tuple[str, str, str]], plan: list[Any]) -> None:
        self.url, self.calls, self.plan = url, calls, plan

    def command(
        self,
        action: str,
        params: Mapping[str, float] | None = None,
        duration_s: float | None = None,
        key: str | None = None,
    ) -> FakeResult:
        assert key is not None
        self.calls.append((self.url, action, key))
        outcome = self.plan.pop(0) if self.plan else "done"
        if isinstance(outcome, Exception):
            raise outcome
        return FakeResult(outcome, len(self.calls), key)


def _workload(plan: list[Any]) -> tuple[Workload, list[tuple[str, str, str]]]:
    calls: list[tuple[str, str, str]] = []
    workload = Workload(
        URLS, lambda url: FakeClient(url, calls, plan), retry_after_s=0.0, now=lambda: 0.0
    )
    return workload, calls


def test_an_unanswered_key_is_retried_later_through_the_next_node() -> None:
    workload, calls = _workload([TimeoutError("deadline")])
    for _ in range(3):
        workload.step()
    (url1, first, key1), (url2, retried, key2), (url3, _, key3) = calls
    assert (url1, url2, url3) == ("http://n1", "http://n2", "http://n2")
    assert (first, retried) == ("recovery_stand", "recovery_stand")
    assert key1 == key2 != key3
    assert [a.answer is None for a in workload.history] == [True, False, False]


def test_a_key_is_given_up_after_max_tries() -> None:
    workload, calls = _workload([TimeoutError("deadline")] * 9)
    for _ in range(6):
        workload.step()
    keys = [key for _, _, key in calls]
    assert keys[:4] == [keys[0]] * 4
    assert keys[4] != keys[0]


def test_posture_belief_picks_legal_commands() -> None:
    workload, calls = _workload([])
    for _ in range(200):
        workload.step()
    actions = [action for _, action, _ in calls]
    assert actions[0] == "recovery_stand"  # the robot starts lying
    for before, after in itertools.pairwise(actions):
        if before == "sit":
            assert after == "rise_sit"
    assert {"hello", "stretch", "move", "sit", "stand_up"} <= set(actions)


def test_after_a_failure_the_workload_probes_its_way_back() -> None:
    workload, calls = _workload(["done", "failed", "failed", "failed", "done"])
    for _ in range(5):
        workload.step()
    assert [action for _, action, _ in calls][2:] == ["rise_sit", "balance_stand", "recovery_stand"]


def test_a_result_the_workload_cannot_read_is_an_error_not_a_doubt() -> None:
    workload = Workload(URLS, lambda url: _Mute(), now=lambda: 0.0)
    with pytest.raises(AttributeError):
        workload.step()


class _Mute:
    def command(self, *args: Any, **kwargs: Any) -> object:
        return object()
