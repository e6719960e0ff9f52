"""Properties checked on a simulated cluster, at every step, and the trace that explains them.

Safety, at every virtual instant (checked after every step, which is enough: a node's lease
can only start at one of its own steps, so any overlap of two leases begins at a step):
- never two nodes that are primary with a valid lease — except in `two_node` mode while the
  network between the two is, or just was, impaired: that split brain is the documented price
  of `two_node`;
- at most one primary per term;
- at most one granted vote per (voter, term), across restarts;
- terms never decrease on a node, across restarts;
- a node becomes primary only while it knows it can serve (reaches the robot, not stopping);
- the journal: no two nodes commit different entries at one index; a node applies committed
  entries in index order without gaps (after a snapshot, from the entry after it); a node that
  becomes primary holds every entry committed anywhere so far (nothing committed is lost).
  `two_node` is exempt from the first and last: its quorum of one cannot promise them.

Liveness and stability are judged afterwards from the recorded timeline (`Timeline`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ha_voice.cluster.events import (
    BecomePrimary,
    Effects,
    Event,
    Outgoing,
    Role,
    RoleChanged,
    StepDownRefused,
)
from ha_voice.cluster.protocol import EntryKind, NodeId, VoteResponse
from ha_voice.cluster.timers import ElectionTimers
from ha_voice.simulation.engine import SimCluster, SimNode

__all__ = ["Checker", "Timeline", "Trace", "liveness_bound_s"]


def liveness_bound_s(timers: ElectionTimers, voters: int, max_delay_s: float) -> float:
    """How long after the last fault a primary with a valid lease must exist.

    - a primary left over from before the faults gives up within one lease (`lease_timeout_s`);
    - the slowest backup asks for votes within an election timeout plus the skew of the last
      place in the line of succession (`voters + 1` places, unranked) plus jitter;
    - an election (pre-vote, vote, first ack) takes three round trips; a split vote retries
      after `retry_timeout_s` plus skew and jitter: we allow three rounds;
    - every duration is measured on a clock that may run `clock_drift` slow.
    """
    t = timers
    skew = (voters + 1) * t.priority_skew_s + t.election_jitter_s
    first_try = t.election_timeout_s + skew
    round_s = t.retry_timeout_s + skew + 6 * max_delay_s
    return (t.lease_timeout_s + first_try + 3 * round_s) / (1 - t.clock_drift)


class Trace:
    """Human-readable lines of what happened; a ring buffer unless `keep_all`."""

    def __init__(self, cluster: SimCluster, *, keep_all: bool = False, limit: int = 400) -> None:
        self.lines: deque[str] = deque(maxlen=None if keep_all else limit)
        self._cluster = cluster
        cluster.observers.append(self._observe)

    def note(self, text: str) -> None:
        self.lines.append(f"{self._cluster.now:9.3f}  {text}")

    def _observe(self, t: float, node: SimNode, event: Event, effects: Effects) -> None:
        for action in effects.actions:
            if isinstance(action, RoleChanged):
                self.lines.append(
                    f"{t:9.3f}  {node.node_id:<3} {action.old.value} -> {action.new.value}"
                    f"  term {action.term}  ({action.reason})"
                )
            elif isinstance(action, BecomePrimary):
                self.lines.append(
                    f"{t:9.3f}  {node.node_id:<3} lease valid, term {action.term}"
                    f" (by {action.cause})"
                )
            elif isinstance(action, StepDownRefused):
                self.lines.append(f"{t:9.3f}  {node.node_id:<3} step-down refused: {action.reason}")


@dataclass
class Timeline:
    """When leases were valid and roles changed, for liveness, stability and speed."""

    # (time, nodes primary with a valid lease at that time), one entry per change.
    primaries: list[tuple[float, tuple[NodeId, ...]]] = field(default_factory=list)
    role_changes: list[tuple[float, NodeId, Role, Role, int]] = field(default_factory=list)

    def first_healthy_primary(self, hold_s: float) -> tuple[float, NodeId] | None:
        """The first primary whose lease then stayed valid for `hold_s`, and when it started."""
        for (t, nodes), following in zip(self.primaries, [*self.primaries[1:], None], strict=True):
            if len(nodes) == 1 and (following is None or following[0] - t >= hold_s):
                return t, nodes[0]
        return None

    def settled_since(self, t0: float) -> tuple[float, NodeId] | None:
        """When the final primary became primary for good (not before `t0`), and who it is.

        None unless exactly one node holds a valid lease at the end of the run.
        """
        if not self.primaries or len(self.primaries[-1][1]) != 1:
            return None
        since = max(t0, self.primaries[-1][0])
        changes = self.leader_changes_after(t0)
        if changes:
            since = max(since, changes[-1][0])
        return since, self.primaries[-1][1][0]

    def leader_changes_after(self, t0: float) -> list[tuple[float, NodeId, Role, Role, int]]:
        return [
            change
            for change in self.role_changes
            if change[0] > t0 and Role.PRIMARY in (change[2], change[3])
        ]


class Checker:
    """Watches every step of a `SimCluster`; `violations` lists what broke safety."""

    def __init__(self, cluster: SimCluster, *, split_brain_window_s: float = 0.0) -> None:
        self.cluster = cluster
        self.violations: list[str] = []
        self.split_brain_instants = 0
        self.timeline = Timeline()
        self._primary_of_term: dict[int, NodeId] = {}
        self._votes: dict[tuple[NodeId, int], NodeId] = {}
        self._terms: dict[NodeId, int] = dict.fromkeys(cluster.nodes, 0)
        self._last_valid: tuple[NodeId, ...] = ()
        self._committed: dict[int, tuple[int, EntryKind, bytes]] = {}
        self._applied: dict[NodeId, tuple[int, int | None]] = {}  # (boot, last applied)
        self.entries_committed = 0
        self._impaired_at = -1e9
        timers = cluster.timers
        self._split_brain_window_s = split_brain_window_s or (
            2 * (timers.election_timeout_s + timers.lease_timeout_s) + 1.0
        )
        cluster.observers.append(self._observe)
        cluster.on_send.append(self._check_vote)
        cluster.on_process_change.append(self._check_leases)

    def _violate(self, t: float, what: str) -> None:
        self.violations.append(f"t={t:.3f}: {what}")

    def _observe(self, t: float, node: SimNode, event: Event, effects: Effects) -> None:
        self._check_term(t, node)
        self._check_actions(t, node, effects)
        self._check_journal(t, node, effects)
        self._check_leases(t)

    def _check_journal(self, t: float, node: SimNode, effects: Effects) -> None:
        election = node.election
        assert election is not None
        boot, last = self._applied.get(node.node_id, (node.boots, None))
        if boot != node.boots:
            last = None  # a new incarnation starts from what its disk says is committed
        if effects.restore is not None:
            last = election.replication.log.base.index
        witness = node.node_id in election.membership.witnesses
        exempt = self.cluster.spec.two_node
        for entry in effects.committed:
            if last is not None and entry.index != last + 1:
                self._violate(t, f"{node.node_id} applied {entry.index} after {last}")
            last = entry.index
            seen = self._committed.setdefault(entry.index, (entry.term, entry.kind, entry.data))
            if seen == (entry.term, entry.kind, entry.data) or (witness and seen[0] == entry.term):
                continue
            if not exempt:
                self._violate(t, f"{node.node_id} committed {entry} where {seen} was committed")
        self._applied[node.node_id] = (node.boots, last)
        self.entries_committed = len(self._committed)
        if exempt or not any(
            isinstance(a, RoleChanged) and a.new is Role.PRIMARY for a in effects.actions
        ):
            return
        log = election.replication.log
        for index, (term, _, _) in self._committed.items():
            if index > log.base.index and log.term_at(index) != term:
                self._violate(t, f"new primary {node.node_id} lacks committed entry {index}")

    def _check_term(self, t: float, node: SimNode) -> None:
        term = node.hard.term
        if term < self._terms[node.node_id]:
            self._violate(t, f"{node.node_id} term went back {self._terms[node.node_id]}->{term}")
        self._terms[node.node_id] = term

    def _check_actions(self, t: float, node: SimNode, effects: Effects) -> None:
        for action in effects.actions:
            if not isinstance(action, RoleChanged):
                continue
            self.timeline.role_changes.append(
                (t, node.node_id, action.old, action.new, action.term)
            )
            if action.new is not Role.PRIMARY:
                continue
            holder = self._primary_of_term.setdefault(action.term, node.node_id)
            if holder != node.node_id:
                self._violate(t, f"term {action.term} has two primaries: {holder}, {node.node_id}")
            if node.election is not None and not node.election.eligible:
                self._violate(t, f"{node.node_id} became primary while it knew it cannot serve")

    def _check_vote(self, t: float, node: SimNode, out: Outgoing) -> None:
        """A vote counts once it leaves: one that waited for a write lost in a crash never did."""
        message = out.message
        if isinstance(message, VoteResponse) and message.granted:
            key = (node.node_id, message.term)
            chosen = self._votes.setdefault(key, out.to)
            if chosen != out.to:
                self._violate(t, f"{node.node_id} voted twice in term {message.term}")

    def _check_leases(self, t: float) -> None:
        cluster = self.cluster
        if cluster.network.impaired:
            self._impaired_at = t
        valid = tuple(n for n, sim in cluster.nodes.items() if sim.valid_primary(t))
        if valid != self._last_valid:
            self.timeline.primaries.append((t, valid))
            self._last_valid = valid
        if len(valid) < 2:
            return
        if cluster.spec.two_node and t - self._impaired_at <= self._split_brain_window_s:
            self.split_brain_instants += 1
            return
        self._violate(t, f"two primaries with valid leases: {', '.join(valid)}")
