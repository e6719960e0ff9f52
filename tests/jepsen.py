"""A Jepsen-style run: a client, a nemesis, a history, and a checker of exactly-once commands.

A `Workload` thread sends commands, each under a fresh idempotency key, and records every try
(`Attempt`); an unanswered key is retried later through the next node. A `Nemesis` thread kills,
pauses and restarts nodes of a 3-node `LocalCluster` one at a time, so a quorum always runs, and
records every `Fault`. Afterwards the cluster is healed and left to settle, every node's journal
and the simulated robot's journal are fetched, and `check` judges them.

`check` is a pure function of the history and the journals. Its rules (see each `_check_*`):
- An answer the client got (done/stopped/failed/unknown) is durable: the key is committed on
  every node at the index it was answered with, with the status it was answered with.
- Node journals agree on every committed command, and no journal holds a key twice.
- The robot executed a non-idempotent command at most once, and every command answered "done"
  at least once; an execution is a (term, node, index) group of accepted robot calls whose index
  is a command index (the takeover calls carry no-op indices, which no journal lists).
- The robot's own verdict holds: one writer at a time, no stale term, nothing after a lease.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import json
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ha_voice.journal import MAX_TAIL
from ha_voice.local_cluster import LocalCluster, LocalNode, SimRobotProcess
from ha_voice.robot.base import ACTIONS, Action, Mode
from ha_voice.robot.guard import POSTURE_GOALS, posture_plan
from ha_voice.robot.sim import EntryKind, JournalEntry, Verdict, ViolationKind, entry_to_json
from ha_voice.robot.sim_server import fetch_journal, fetch_verdict

__all__ = [
    "FINAL_STATUSES",
    "Answer",
    "Attempt",
    "Fault",
    "FaultKind",
    "JepsenRun",
    "Nemesis",
    "NodeJournal",
    "Record",
    "Report",
    "Workload",
    "check",
    "fetch_node_journal",
    "heal",
    "node_journal_from_json",
    "quiesce",
    "run_jepsen",
    "the_primary",
]

FINAL_STATUSES = frozenset({"done", "stopped", "failed", "unknown"})


# --- The history ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """The final answer a node gave for a key."""

    status: str
    index: int
    term: int
    node: str
    executed_by: str | None = None
    duplicate: bool = False
    attempts: int = 1


@dataclass(frozen=True)
class Attempt:
    """One try of one command: through which node, when (monotonic s), and what came of it."""

    key: str
    action: str
    idempotent: bool
    node_url: str
    invoke_s: float
    complete_s: float
    answer: Answer | None = None
    error: str | None = None  # why there is no answer
    refused: bool = False  # a 4xx: the command was turned down, not left in doubt


class FaultKind(enum.Enum):
    KILL_PRIMARY = "kill_primary"  # SIGKILL, restart after a second
    PAUSE_PRIMARY = "pause_primary"  # SIGSTOP for 0.3-1.5 s, then SIGCONT
    KILL_BACKUP = "kill_backup"  # SIGKILL of a backup, restart after a second
    RESTART_PRIMARY = "restart_primary"  # SIGTERM (graceful hand-over), then start again
    PARTITION_PRIMARY = "partition_primary"  # its link down for 1-3 s (network namespaces)
    # The chaos suite's (tests/chaos/nemesis.py): nftables, fsfreeze and a busy loop in namespaces.
    KILL_ANY = "kill_any"  # SIGKILL of any node, the primary too, restart after a second
    ISOLATE_PRIMARY = "isolate_primary"  # no packet between it and the other members
    CUT_BACKUP = "cut_backup"  # a backup cut off from the other members: the majority is elsewhere
    ONE_WAY = "one_way"  # the primary hears no member (detail "in") or no member hears it ("out")
    CUT_ROBOT = "cut_robot"  # the primary and the robot cannot reach each other
    LOSS_DUP = "loss_dup"  # random loss and duplication between every two members
    FREEZE_DISK = "freeze_disk"  # fsfreeze of the filesystem under a node's state directory
    CPU_HOG = "cpu_hog"  # a busy loop on the primary's CPU


# Processes only: a partition needs each node in its own network namespace.
PROCESS_FAULTS = (
    FaultKind.KILL_PRIMARY,
    FaultKind.PAUSE_PRIMARY,
    FaultKind.KILL_BACKUP,
    FaultKind.RESTART_PRIMARY,
)


@dataclass(frozen=True)
class Fault:
    """One fault the nemesis caused: at `at_s` to `target`, over by `healed_s` (monotonic s);
    `detail` says how (a direction, a loss rate), for a replay."""

    kind: FaultKind
    target: str
    at_s: float
    healed_s: float
    detail: str = ""


# --- Node journals ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One command entry of a node journal (GET /api/journal)."""

    index: int
    term: int
    key: str
    action: str
    status: str
    committed: bool
    executed_by: str | None = None
    outcome: str = ""


@dataclass(frozen=True)
class NodeJournal:
    """The command entries one node holds, in index order, and how far its log goes."""

    node: str
    term: int
    commit_index: int
    last_index: int
    records: tuple[Record, ...]


def node_journal_from_json(data: Mapping[str, Any]) -> NodeJournal:
    """The journal GET /api/journal answered; KeyError or TypeError if malformed."""
    records = tuple(
        Record(
            index=int(r["index"]),
            term=int(r["term"]),
            key=str(r["key"]),
            action=str(r["action"]),
            status=str(r["status"]),
            committed=bool(r["committed"]),
            executed_by=r.get("executed_by"),
            outcome=str(r.get("outcome") or ""),
        )
        for r in data["entries"]
    )
    return NodeJournal(
        str(data["node"]),
        int(data["term"]),
        int(data["commit_index"]),
        int(data["last_index"]),
        records,
    )


# --- The checker ------------------------------------------------------------------------------

VIOLATIONS = (
    "lost",
    "diverged",
    "duplicate_keys",
    "duplicate_executions",
    "missing_execution",
    "foreign_executions",
    "overlapping_writers",
    "stale_terms",
    "after_lease",
)


@dataclass
class Report:
    """What `check` found: one list per broken rule (empty when kept), and the counts."""

    lost: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    duplicate_keys: list[str] = field(default_factory=list)
    duplicate_executions: list[str] = field(default_factory=list)
    missing_execution: list[str] = field(default_factory=list)
    foreign_executions: list[str] = field(default_factory=list)
    overlapping_writers: list[str] = field(default_factory=list)
    stale_terms: list[str] = field(default_factory=list)
    after_lease: list[str] = field(default_factory=list)
    sent: int = 0
    acknowledged: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    indeterminate: int = 0
    refused: int = 0
    tries: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # unanswered tries, by exception
    executions: int = 0
    unresolved: int = 0  # committed journal entries still not in a final status
    faults: Counter[str] = field(default_factory=Counter)
    unavailable_ms: dict[str, list[float]] = field(default_factory=dict)
    unmeasured: int = 0  # faults after which no command was answered

    @property
    def violations(self) -> dict[str, list[str]]:
        return {name: getattr(self, name) for name in VIOLATIONS}

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def all_unavailable_ms(self) -> list[float]:
        return sorted(ms for values in self.unavailable_ms.values() for ms in values)

    def summary(self, shown: int = 10) -> str:
        """A few lines for people: verdict, counts, unavailability, then each violation."""
        broken = sum(len(v) for v in self.violations.values())
        statuses = ", ".join(f"{s} {self.statuses[s]}" for s in sorted(FINAL_STATUSES))
        lines = [
            "jepsen: OK" if self.ok else f"jepsen: FAILED, {broken} violations",
            f"commands: {self.sent} sent, {self.acknowledged} answered ({statuses}), "
            f"{self.indeterminate} indeterminate, {self.refused} refused; {self.tries} tries "
            f"({', '.join(f'{e} {n}' for e, n in self.errors.most_common(3)) or 'all answered'})",
            f"robot: {self.executions} command executions; "
            f"{self.unresolved} committed entries not final",
            f"faults: {sum(self.faults.values())} "
            f"({', '.join(f'{k} {n}' for k, n in sorted(self.faults.items()))})",
            "unavailability ms p50/p90/max:",
        ]
        for kind, values in sorted(self.unavailable_ms.items()):
            lines.append(f"  {kind}: {percentiles(values)} (n={len(values)})")
        every = self.all_unavailable_ms()
        lines.append(f"  all: {percentiles(every)} (n={len(every)}, unmeasured {self.unmeasured})")
        lines.append(", ".join(f"{name} {len(found)}" for name, found in self.violations.items()))
        for name, found in self.violations.items():
            lines.extend(f"  {name}: {detail}" for detail in found[:shown])
        return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank `q` quantile of `values` (sorted here); nan if there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def percentiles(values: Sequence[float]) -> str:
    """p50/p90/max, or "-" for none."""
    return "/".join(f"{percentile(values, q):.0f}" for q in (0.5, 0.9, 1.0)) if values else "-"


def check(
    history: Sequence[Attempt],
    node_journals: Sequence[NodeJournal],
    robot_journal: Sequence[JournalEntry],
    verdict: Verdict,
    faults: Sequence[Fault] = (),
) -> Report:
    """Judge one run; `Report.ok` iff no rule is broken."""
    report = Report()
    answers = _answers(history, report)
    _check_acknowledged(answers, node_journals, report)
    commands = _check_agreement(node_journals, report)
    _check_executions(answers, commands, robot_journal, report)
    _check_verdict(verdict, report)
    _count(history, answers, node_journals, report)
    _measure_unavailability(history, faults, report)
    return report


def _answers(history: Sequence[Attempt], report: Report) -> dict[str, Answer]:
    """The final answer per key; two different final answers for one key diverge."""
    answers: dict[str, Answer] = {}
    for attempt in history:
        answer = attempt.answer
        if answer is None or answer.status not in FINAL_STATUSES:
            continue
        first = answers.setdefault(attempt.key, answer)
        if (first.index, first.status) != (answer.index, answer.status):
            report.diverged.append(
                f"{attempt.key}: answered {first.status} at index {first.index}, "
                f"then {answer.status} at index {answer.index}"
            )
    return answers


def _check_acknowledged(
    answers: Mapping[str, Answer], journals: Sequence[NodeJournal], report: Report
) -> None:
    """Each answer is on every node: at its index (else diverged), committed, same status."""
    for journal in journals:
        by_key: dict[str, list[Record]] = defaultdict(list)
        for record in journal.records:
            by_key[record.key].append(record)
        for key, answer in answers.items():
            said = f"{key} (answered {answer.status} at index {answer.index})"
            records = by_key.get(key, [])
            record = next((r for r in records if r.index == answer.index), None)
            if not records:
                report.lost.append(f"{said} is not in {journal.node}'s journal")
            elif record is None:
                indices = [r.index for r in records]
                report.diverged.append(f"{said} is at index {indices} on {journal.node}")
            elif not record.committed:
                report.lost.append(f"{said} is not committed on {journal.node}")
            elif record.status != answer.status:
                report.lost.append(f"{said} is {record.status} on {journal.node}")


def _check_agreement(journals: Sequence[NodeJournal], report: Report) -> dict[int, Record]:
    """Committed commands agree across nodes; no key twice in a journal. Index -> command."""
    committed: dict[int, list[tuple[NodeJournal, Record]]] = defaultdict(list)
    commands: dict[int, Record] = {}
    for journal in journals:
        first_index: dict[str, int] = {}
        for record in journal.records:
            first = first_index.setdefault(record.key, record.index)
            if first != record.index:
                report.duplicate_keys.append(
                    f"{journal.node} holds {record.key} at index {first} and {record.index}"
                )
            commands.setdefault(record.index, record)
            if record.committed:
                committed[record.index].append((journal, record))
                commands[record.index] = committed[record.index][0][1]
    for index, holders in sorted(committed.items()):
        _agree_at(index, holders, journals, report)
    return commands


def _agree_at(
    index: int,
    holders: Sequence[tuple[NodeJournal, Record]],
    journals: Sequence[NodeJournal],
    report: Report,
) -> None:
    """The nodes that committed `index` hold the same command there, and no node lacks it."""
    first_journal, first = holders[0]
    for journal, record in holders[1:]:
        same = (record.key, record.term, record.action) == (first.key, first.term, first.action)
        # A status is decided by a later entry: compare it only between equally advanced nodes.
        settled = journal.commit_index == first_journal.commit_index
        if not same or (settled and record.status != first.status):
            report.diverged.append(
                f"index {index}: {first_journal.node} has {_describe(first)}, "
                f"{journal.node} has {_describe(record)}"
            )
    holding = {journal.node for journal, _ in holders}
    for journal in journals:
        if journal.node not in holding and index <= journal.commit_index:
            report.diverged.append(
                f"index {index}: {first_journal.node} committed {_describe(first)}, "
                f"{journal.node} committed past it without it"
            )


def _describe(record: Record) -> str:
    return f"{record.key} ({record.action}, term {record.term}, {record.status})"


def _idempotent(action: str) -> bool:
    return ACTIONS[Action(action)].idempotent


def _own_actions(action: str) -> frozenset[str]:
    """The robot calls that can show a command of `action` ran: a move is MOVEs then STOP_MOVE;
    a posture command is the guard's plan from whatever mode the robot was in (from walking,
    "sta op" is one STOP_MOVE)."""
    if action == "move":
        return frozenset({"move", "stop_move"})
    if Action(action) not in POSTURE_GOALS:
        return frozenset({action})
    plans = (posture_plan(Action(action), mode) for mode in (None, *Mode))
    return frozenset({action} | {call.value for plan in plans for call in plan})


def _check_executions(
    answers: Mapping[str, Answer],
    commands: Mapping[int, Record],
    robot_journal: Sequence[JournalEntry],
    report: Report,
) -> None:
    """Non-idempotent commands ran at most once; every command answered "done" ran."""
    groups: dict[tuple[int, str, int], list[JournalEntry]] = defaultdict(list)
    for entry in robot_journal:
        token = entry.token
        if token is not None and entry.accepted and entry.kind is EntryKind.COMMAND:
            groups[(token.term, token.node, token.index)].append(entry)
    executions: Counter[str] = Counter()
    for (term, node, index), entries in sorted(groups.items()):
        record = commands.get(index)
        if record is None:
            continue  # a takeover call under a no-op's index
        executions[record.key] += _executions_in(record, term, node, entries, report)
    report.executions = sum(executions.values())
    actions = {record.key: record.action for record in commands.values()}
    for key, count in sorted(executions.items()):
        if count > 1 and not _idempotent(actions[key]):
            report.duplicate_executions.append(f"{key} ({actions[key]}) ran {count} times")
    for key, answer in sorted(answers.items()):
        if answer.status == "done" and executions[key] == 0:
            report.missing_execution.append(
                f"{key} (answered done at index {answer.index}) never reached the robot"
            )


def _executions_in(
    record: Record, term: int, node: str, entries: Sequence[JournalEntry], report: Report
) -> int:
    """How many times one (term, node, index) group ran `record`; 0 if it ran something else.

    A token older than the entry's term means the sender ran another entry at that index, one
    that was later overwritten: it sent a command before a quorum held it.
    """
    sent = {entry.action.value for entry in entries}
    if term < record.term or not sent & _own_actions(record.action):
        report.foreign_executions.append(
            f"{node} (term {term}) sent {sorted(sent)} under index {record.index}, "
            f"which holds {_describe(record)}"
        )
        return 0
    if record.action == "move" or Action(record.action) in POSTURE_GOALS:
        return 1  # a stream of MOVE, or a posture's plan, under one index is one execution
    return sum(entry.action.value == record.action for entry in entries)


_VERDICT_LISTS = {
    ViolationKind.OVERLAPPING_WRITERS: "overlapping_writers",
    ViolationKind.STALE_TERM: "stale_terms",
    ViolationKind.AFTER_LEASE: "after_lease",
}


def _check_verdict(verdict: Verdict, report: Report) -> None:
    for violation in verdict.violations:
        name = _VERDICT_LISTS[violation.kind]
        getattr(report, name).append(f"robot journal #{violation.entry}: {violation.detail}")


def _count(
    history: Sequence[Attempt],
    answers: Mapping[str, Answer],
    journals: Sequence[NodeJournal],
    report: Report,
) -> None:
    keys = {attempt.key for attempt in history}
    refused = {a.key for a in history if a.refused} - set(answers)
    report.sent = len(keys)
    report.acknowledged = len(answers)
    report.statuses = Counter(answer.status for answer in answers.values())
    report.refused = len(refused)
    report.indeterminate = len(keys) - len(answers) - len(refused)
    report.tries = len(history)
    report.errors = Counter(a.error.split(":")[0] for a in history if a.error is not None)
    if journals:
        furthest = max(journals, key=lambda journal: journal.commit_index)
        report.unresolved = sum(
            r.committed and r.status not in FINAL_STATUSES for r in furthest.records
        )


def _measure_unavailability(
    history: Sequence[Attempt], faults: Sequence[Fault], report: Report
) -> None:
    """Per fault: from the fault to the first answer to a command sent after it."""
    answered = sorted((a.invoke_s, a.complete_s) for a in history if a.answer is not None)
    invoked = [invoke_s for invoke_s, _ in answered]
    # earliest[i]: the first completion among the commands invoked at invoked[i] or later.
    earliest = [complete_s for _, complete_s in answered]
    for i in reversed(range(len(earliest) - 1)):
        earliest[i] = min(earliest[i], earliest[i + 1])
    for fault in faults:
        report.faults[fault.kind.value] += 1
        i = bisect.bisect_left(invoked, fault.at_s)
        if i == len(invoked):
            report.unmeasured += 1
            continue
        gap_ms = (earliest[i] - fault.at_s) * 1000
        report.unavailable_ms.setdefault(fault.kind.value, []).append(gap_ms)


# --- The workload -----------------------------------------------------------------------------


class CommandClient(Protocol):
    """What the workload needs of `ha_voice.client.HAVoiceClient`."""

    def command(
        self,
        action: str,
        params: Mapping[str, float] | None = None,
        duration_s: float | None = None,
        key: str | None = None,
    ) -> Any:
        """The final answer for `key` (status, index, term, node, ...), or raise."""


@dataclass
class _Op:
    key: str
    action: str
    params: dict[str, float] | None
    duration_s: float | None
    url_index: int
    belief: str  # the posture the workload believed in when it chose this command
    tries: int = 0
    due_s: float = 0.0


# What the workload believes the robot's posture is, and what it sends in each belief but
# "balance" (sim.py's TRANSITIONS). The robot starts lying; "unknown" (after a doubt) probes
# rise_sit (legal sitting or balancing), then balance_stand (locked, balancing, walking), then
# recovery_stand (lying, damped).
_FORCED = {
    "low": "recovery_stand",
    "sit": "rise_sit",
    "unknown": "rise_sit",
    "not_sit": "balance_stand",
}
_NEXT_PROBE = {"unknown": "not_sit", "not_sit": "low"}  # when the probe was refused
_AFTER = {"sit": "sit"}  # every other command that is done leaves the robot in balance stand
# From balance stand, weighted: about a third of all commands are not idempotent.
_MIX = (
    ("sit", 2),
    ("hello", 1),
    ("stretch", 1),
    ("move", 2),
    ("stand_up", 1),
    ("balance_stand", 1),
)
MOVE_PARAMS = {"vx": 0.2}
MOVE_DURATION_S = 0.2


def ha_voice_client_factory(
    deadline_s: float, timeout_s: float, urls: Sequence[str] = (), token: str | None = None
) -> Callable[[str], CommandClient]:
    """One `HAVoiceClient` per node URL, that node first, the others as fallbacks (as a client
    configured with every node's address; any node forwards to the primary), sending `token`."""
    from ha_voice.client import HAVoiceClient

    def make(url: str) -> CommandClient:
        others = [u for u in urls if u != url]
        every = ",".join([url, *others])
        return HAVoiceClient(url=every, deadline_s=deadline_s, timeout_s=timeout_s, token=token)

    return make


def _refusal(exc: Exception) -> bool:
    """Whether the client says the command was turned down (a 4xx), not left in doubt."""
    try:
        from ha_voice.client import RequestError
    except ImportError:
        return False
    return isinstance(exc, RequestError)


class Workload:
    """One client thread: commands under fresh keys; an unanswered key retried via the next node."""

    def __init__(
        self,
        urls: Sequence[str],
        make_client: Callable[[str], CommandClient],
        *,
        seed: int = 0,
        max_tries: int = 4,
        retry_after_s: float = 0.3,
        pause_s: float = 0.02,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.history: list[Attempt] = []
        self._urls = list(urls)
        self._make_client = make_client
        self._clients: dict[str, CommandClient] = {}
        self._random = random.Random(seed)
        self._max_tries = max_tries
        self._retry_after_s = retry_after_s
        self._pause_s = pause_s
        self._now = now
        self._retries: deque[_Op] = deque()
        self._url_index = 0  # where new commands go: the last node that answered
        self._belief = "low"
        self._stop = threading.Event()
        self._drain = True
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="jepsen-workload", daemon=True)
        self._thread.start()

    def stop(self, *, drain: bool = True, timeout_s: float = 120.0) -> None:
        """Send no new command; with `drain`, first retry every key still in doubt."""
        self._drain = drain
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError("the workload did not stop")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
                self._stop.wait(self._pause_s)
            while self._drain and self._retries:
                time.sleep(max(0.0, self._retries[0].due_s - self._now()))
                self._attempt(self._retries.popleft())
        except BaseException as exc:
            self.error = exc

    def step(self) -> None:
        """Send one command: a key due for a retry, else a new one."""
        if self._retries and self._retries[0].due_s <= self._now():
            self._attempt(self._retries.popleft())
        else:
            self._attempt(self._new_op())

    def _new_op(self) -> _Op:
        action = _FORCED.get(self._belief)
        if action is None:
            names, weights = zip(*_MIX, strict=True)
            action = self._random.choices(names, weights)[0]
        key = str(uuid.UUID(int=self._random.getrandbits(128), version=4))
        move = action == "move"
        return _Op(
            key,
            action,
            dict(MOVE_PARAMS) if move else None,
            MOVE_DURATION_S if move else None,
            self._url_index,
            self._belief,
        )

    def _attempt(self, op: _Op) -> None:
        url = self._urls[op.url_index % len(self._urls)]
        client = self._clients.get(url) or self._clients.setdefault(url, self._make_client(url))
        op.tries += 1
        invoke_s = self._now()
        answer, error, refused = None, None, False
        try:
            result = client.command(op.action, op.params, op.duration_s, key=op.key)
        except Exception as exc:  # every way a try can end without an answer
            error, refused = f"{type(exc).__name__}: {exc}", _refusal(exc)
        else:
            answer = _to_answer(result)  # outside the try: a malformed result is our bug
        self.history.append(
            Attempt(
                op.key,
                op.action,
                _idempotent(op.action),
                url,
                invoke_s,
                self._now(),
                answer,
                error,
                refused,
            )
        )
        self._learn(op, answer, refused)

    def _learn(self, op: _Op, answer: Answer | None, refused: bool) -> None:
        """Update the posture belief and the node to use; queue an unanswered key for later."""
        if answer is None and not refused:
            self._url_index = op.url_index + 1
            if op.tries < self._max_tries:
                op.url_index += 1
                op.due_s = self._now() + self._retry_after_s
                self._retries.append(op)
        else:
            self._url_index = op.url_index
        if answer is not None and answer.status == "done" and op.tries == 1:
            self._belief = _AFTER.get(op.action, "balance")
        elif answer is not None and answer.status == "failed" and op.tries == 1:
            self._belief = _NEXT_PROBE.get(op.belief, "unknown")
        else:
            self._belief = "unknown"


def _to_answer(result: Any) -> Answer:
    body = getattr(result, "body", None)
    executed_by = getattr(result, "executed_by", None)
    if executed_by is None and isinstance(body, Mapping):
        executed_by = body.get("executed_by")
    return Answer(
        status=str(result.status),
        index=int(result.index),
        term=int(result.term),
        node=str(result.node),
        executed_by=executed_by,
        duplicate=bool(result.duplicate),
        attempts=int(result.attempts),
    )


# --- The nemesis ------------------------------------------------------------------------------


class Nemesis:
    """Causes `faults` faults one at a time, `interval_s` apart, each healed before the next."""

    def __init__(
        self,
        cluster: LocalCluster,
        faults: int,
        *,
        interval_s: float = 2.5,
        seed: int = 0,
        kinds: Sequence[FaultKind] = PROCESS_FAULTS,
        restart_after_s: float = 1.0,
        pause_range_s: tuple[float, float] = (0.3, 1.5),
        partition: Callable[[str, bool], None] | None = None,
        partition_range_s: tuple[float, float] = (1.0, 3.0),
    ) -> None:
        """`partition(node, cut)` cuts a node's link (True) or mends it (False)."""
        if FaultKind.PARTITION_PRIMARY in kinds and partition is None:
            raise ValueError("partition faults need a way to partition")
        self.faults: list[Fault] = []
        self.error: BaseException | None = None
        self._cluster = cluster
        self._count = faults
        self._interval_s = interval_s
        self._random = random.Random(seed)
        self._kinds = tuple(kinds)
        self._restart_after_s = restart_after_s
        self._pause_range_s = pause_range_s
        self._partition = partition
        self._partition_range_s = partition_range_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jepsen-nemesis", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the last fault to be healed; re-raise what went wrong in the thread."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._stop.set()
            raise TimeoutError(f"the nemesis caused {len(self.faults)} faults in time")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            next_s = time.monotonic() + self._interval_s
            while len(self.faults) < self._count and not self._stop.is_set():
                self._stop.wait(max(0.0, next_s - time.monotonic()))
                _wait_until_all_answer(self._cluster, timeout_s=30.0)
                fault = self._inflict(self._random.choice(self._kinds))
                if fault is not None:
                    self.faults.append(fault)
                    next_s = fault.at_s + self._interval_s
        except BaseException as exc:
            self.error = exc

    def _inflict(self, kind: FaultKind) -> Fault | None:
        """Cause one fault and heal it; None if there was no primary to cause it to."""
        primary = the_primary(self._cluster, timeout_s=10.0)
        if primary is None:
            return None
        if kind is FaultKind.KILL_BACKUP:
            target = self._random.choice([n for n in self._cluster.nodes if n != primary])
        else:
            target = primary
        node = self._cluster.nodes[target]
        at_s = time.monotonic()
        if kind is FaultKind.PAUSE_PRIMARY:
            node.signal(signal.SIGSTOP)
            time.sleep(self._random.uniform(*self._pause_range_s))
            node.signal(signal.SIGCONT)
        elif kind is FaultKind.PARTITION_PRIMARY:
            assert self._partition is not None
            self._partition(target, True)
            try:
                time.sleep(self._random.uniform(*self._partition_range_s))
            finally:
                self._partition(target, False)
        elif kind is FaultKind.RESTART_PRIMARY:
            node.signal(signal.SIGTERM)
            if node.wait(15.0) is None:
                self._cluster.kill(target)
            node.start()
        else:
            self._cluster.kill(target)
            time.sleep(self._restart_after_s)
            node.start()
        return Fault(kind, target, at_s, time.monotonic())


def the_primary(cluster: LocalCluster, timeout_s: float) -> str | None:
    """The one node that says it is primary, waiting up to `timeout_s` for exactly one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        primaries = cluster.primaries()
        if len(primaries) == 1:
            return primaries[0]
        time.sleep(0.05)
    return None


def _wait_until_all_answer(cluster: LocalCluster, timeout_s: float) -> None:
    """Every node runs and answers /cluster: so that the next fault leaves a quorum up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(node.running and node.cluster() is not None for node in cluster.nodes.values()):
            return
        time.sleep(0.05)
    raise TimeoutError("a restarted node did not come back")


# --- Heal, settle, fetch ----------------------------------------------------------------------


def heal(cluster: LocalCluster) -> None:
    """SIGCONT every node and start every one that is not running."""
    for node in cluster.nodes.values():
        if node.running:
            node.signal(signal.SIGCONT)
        else:
            node.start()


def _journal_page(node: LocalNode, since: int, limit: int) -> dict[str, Any] | None:
    response = node.get(f"/api/journal?since={since}&limit={limit}", timeout_s=10.0)
    if response is None or response.status_code != 200:
        return None
    data: dict[str, Any] = response.json()
    return data


def fetch_node_journal(node: LocalNode, limit: int = MAX_TAIL) -> NodeJournal:
    """Every command entry `node` holds, fetched `limit` at a time."""
    entries: dict[int, dict[str, Any]] = {}
    since = 0
    while True:
        page = _journal_page(node, since, limit)
        if page is None:
            raise RuntimeError(f"{node.node_id} did not answer GET /api/journal")
        new = [e for e in page["entries"] if e["index"] not in entries]
        entries.update((e["index"], e) for e in new)
        if not new:
            return node_journal_from_json({**page, "entries": sorted(entries.values(), key=_index)})
        since = max(entries)


def _index(entry: Mapping[str, Any]) -> int:
    return int(entry["index"])


def quiesce(cluster: LocalCluster, timeout_s: float = 60.0) -> list[NodeJournal]:
    """Wait until one primary leads and every node has committed its whole log; the journals
    (of the nodes: a witness, "w", holds none)."""
    deadline = time.monotonic() + timeout_s
    previous: dict[str, tuple[int, int]] | None = None
    heads: dict[str, tuple[int, int]] = {}
    nodes = {n: node for n, node in cluster.nodes.items() if n != "w"}
    while time.monotonic() < deadline:
        pages = {n: _journal_page(node, 0, 1) for n, node in nodes.items()}
        heads = {n: (p["commit_index"], p["last_index"]) for n, p in pages.items() if p}
        primaries = cluster.primaries()
        if len(heads) == len(nodes) and len(primaries) == 1:
            last = heads[primaries[0]][1]
            if heads == previous and all(commit == last for commit, _ in heads.values()):
                return [fetch_node_journal(node) for node in nodes.values()]
        previous = heads
        time.sleep(0.3)
    raise TimeoutError(f"the cluster did not settle: (commit, last) per node {heads}")


# --- One run ----------------------------------------------------------------------------------


@dataclass
class JepsenRun:
    """Everything one run produced, and the verdict on it."""

    history: list[Attempt]
    faults: list[Fault]
    journals: list[NodeJournal]
    robot_journal: tuple[JournalEntry, ...]
    verdict: Verdict
    report: Report
    took_s: float
    cluster_dir: Path

    def dump(self, directory: Path) -> None:
        """Write the history, faults and journals as JSON files into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        files: dict[str, Iterable[Any]] = {
            "history.json": (asdict(a) for a in self.history),
            "faults.json": ({**asdict(f), "kind": f.kind.value} for f in self.faults),
            "journals.json": (asdict(j) for j in self.journals),
            "robot_journal.json": (entry_to_json(e) for e in self.robot_journal),
        }
        for name, items in files.items():
            (directory / name).write_text(json.dumps(list(items), indent=1))


def run_jepsen(
    faults: int,
    *,
    seed: int = 0,
    interval_s: float = 2.5,
    deadline_s: float = 3.0,
    timeout_s: float = 1.0,
    keep_dir: bool = False,
    hosts: Sequence[str] = (),
    prefixes: Sequence[Sequence[str]] = (),
    robot_host: str = "127.0.0.1",
    partition: Callable[[str, bool], None] | None = None,
) -> JepsenRun:
    """A 3-node cluster and a sim robot, a workload under `faults` faults, then the check.

    With `hosts` and `prefixes` (each node in its own network namespace, see
    tests/e2e/test_netns_jepsen.py) and `partition`, partitions join the faults.
    """
    started = time.monotonic()
    kinds = (*PROCESS_FAULTS, FaultKind.PARTITION_PRIMARY) if partition else PROCESS_FAULTS
    with (
        SimRobotProcess(robot_host) as sim,
        LocalCluster(
            3,
            # Keep every command: the checker compares the whole history with the journals
            # (retention and snapshots are the simulator's to exercise).
            extra_flags=(f"--robot={sim.spec}", "--journal-max-entries=1000000"),
            keep_dir=keep_dir,
            hosts=hosts,
            prefixes=prefixes,
        ) as cluster,
    ):
        cluster.start()
        if cluster.wait_for_primary(30.0) is None:
            raise RuntimeError(f"no primary; logs in {cluster.dir}")
        urls = [node.url for node in cluster.nodes.values()]
        factory = ha_voice_client_factory(deadline_s, timeout_s, urls, cluster.token)
        workload = Workload(urls, factory, seed=seed)
        nemesis = Nemesis(
            cluster, faults, interval_s=interval_s, seed=seed, kinds=kinds, partition=partition
        )
        workload.start()
        nemesis.start()
        try:
            nemesis.join(timeout_s=faults * (interval_s + 30.0))
        except BaseException:
            workload.stop(drain=False)
            raise
        heal(cluster)
        workload.stop(drain=True)
        journals = quiesce(cluster)
        robot_journal = asyncio.run(fetch_journal(sim.host, sim.port, timeout_s=30.0))
        verdict = asyncio.run(fetch_verdict(sim.host, sim.port, timeout_s=30.0))
    report = check(workload.history, journals, robot_journal, verdict, nemesis.faults)
    return JepsenRun(
        workload.history,
        nemesis.faults,
        journals,
        robot_journal,
        verdict,
        report,
        time.monotonic() - started,
        cluster.dir,
    )
