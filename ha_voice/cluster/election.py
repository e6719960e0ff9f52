"""The election core: who is primary, in which term, and until when.

Invariants:
1. At most one primary per term: a node votes at most once per term (`voted_for` is persisted
   before the answer leaves) and a primary needs the votes of a quorum of voters.
2. Terms never decrease, also across restarts (`HardState` is persisted before any message of a
   new term leaves).
3. Leases never overlap. A primary may command the robot only while `lease_valid(now)`: until
   `lease_timeout_s` after the send time of the newest heartbeat that a quorum (itself
   included) has acknowledged. A voter refuses pre-votes and votes for `election_timeout_s`
   after it last heard the primary (leader stickiness, Raft thesis §4.2.3 and §9.6), and after
   it boots, because its memory of the last heartbeat is gone. `timers.py` keeps the lease
   shorter than that window under the configured clock drift.
4. The only way around stickiness is a transfer: the primary drops its lease first, then sends
   TimeoutNow, and the target's vote request carries `transfer` (etcd's campaignTransfer).
5. A primary that cannot renew its lease steps down by itself (check-quorum) before any backup
   can be elected; a primary that was paused finds its lease expired on its first tick.
6. Witnesses, non-voters and nodes in FAULT never stand for election.
7. Evidence of death (`LeaderProbed(gone=True)`) counts only when this node's own probe
   started after it last heard anything from that leader; it then ends stickiness to it, as a
   `Resign` would. A process whose sockets are closed holds no lease and commands nothing; a
   paused, partitioned or slow one leaves no such evidence and goes through the lease.
8. A term more than `MAX_TERM_JUMP` above ours is not believed (counted, dropped): no election
   ever jumps that far, and one message from whoever holds the key must not be able to push
   the cluster's term to where it can no longer count on.

Roles dispatch: one `_step_*` per role for messages, one `_tick_*` per role for time; only the
`_become_*` methods change the role, and they refuse illegal transitions.

Pure: takes `now` and a seeded `random.Random`; never reads a clock or touches I/O.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from ha_voice.cluster.events import (
    Action,
    BecomePrimary,
    Compact,
    Effects,
    Event,
    HardState,
    LeaderProbed,
    LogPersisted,
    LogWrite,
    MessageReceived,
    Outgoing,
    ProbeLeader,
    ProposalRefused,
    Propose,
    PublishEndpoint,
    Readiness,
    RobotReachability,
    RobotTermSeen,
    Role,
    RoleChanged,
    Serviceability,
    ShutdownRequested,
    StepDownRefused,
    StepDownRequested,
    StopRobot,
    Tick,
    WithdrawEndpoint,
)
from ha_voice.cluster.followers import Followers, PeerView
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import (
    NOT_A_SUCCESSOR,
    Append,
    AppendAck,
    Entry,
    Heartbeat,
    HeartbeatAck,
    LogPosition,
    Message,
    NodeId,
    PreVoteRequest,
    PreVoteResponse,
    Resign,
    Snapshot,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from ha_voice.cluster.replication import Changes, JournalLog, Replication
from ha_voice.cluster.timers import ElectionTimers
from ha_voice.errors import LocalError

__all__ = ["MAX_TERM_JUMP", "Election", "ElectionStats"]

_NEVER = -math.inf
# Four billion elections in one step: more than any partition or restart produces.
MAX_TERM_JUMP = 2**32
# A follower asks for a probe of its primary once the heartbeat is this many intervals late:
# past one interval's scheduling slack, well before the election timeout (10 intervals, wired).
PROBE_AFTER_HEARTBEATS = 1.2
# Then again this often (in heartbeat intervals) while it stays silent: a killed process keeps
# its ports until the kernel has torn down its memory (tens of ms for a daemon with a model
# loaded, measured in namespaces), so the first probe often comes too early. A probe of a live
# node costs it an empty datagram and a reset connection; only a dead one draws ICMP, once.
PROBE_EVERY_HEARTBEATS = 0.25
# At most this many pre-vote requests are held for a probe's answer (one per sender anyway).
_MAX_HELD_PRE_VOTES = 8

# Roles that follow a primary: they probe it when it falls silent.
_FOLLOWERS = frozenset({Role.BACKUP, Role.FAULT, Role.WITNESS})

# Legal role changes; anything else is a bug and raises.
_TRANSITIONS: dict[Role, frozenset[Role]] = {
    Role.BACKUP: frozenset({Role.BACKUP, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.FAULT}),
    Role.PRE_CANDIDATE: frozenset({Role.BACKUP, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.FAULT}),
    Role.CANDIDATE: frozenset(
        {Role.BACKUP, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.PRIMARY, Role.FAULT}
    ),
    Role.PRIMARY: frozenset({Role.BACKUP, Role.FAULT}),
    Role.FAULT: frozenset({Role.BACKUP, Role.FAULT}),
    Role.WITNESS: frozenset({Role.WITNESS}),
}


@dataclass
class ElectionStats:
    """Counters the shell exports as metrics."""

    elections_started: int = 0
    votes_granted: int = 0
    votes_denied: int = 0
    lease_renew_failures: int = 0
    terms_won: int = 0
    implausible_terms: int = 0
    probes_asked: int = 0
    leaders_found_gone: int = 0


@dataclass
class _Transfer:
    """A leadership transfer in progress on the primary."""

    target: NodeId
    deadline: float


@dataclass
class _Handoff:
    """After a transfer: keep nudging the target until it wins or the window closes."""

    target: NodeId
    term: int
    until: float
    next_send: float


@dataclass
class _Out:
    send: list[Outgoing] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    changes: Changes = field(default_factory=Changes)
    proposed: Entry | None = None


class Election:
    """One node's view of the election; feed it events with `step`, apply what it returns."""

    def __init__(
        self,
        *,
        membership: Membership,
        timers: ElectionTimers,
        priority: int,
        hard_state: HardState,
        rng: random.Random,
        now: float,
        journal: JournalLog | None = None,
        preempt: bool = False,
        api_port: int = 0,
        ready: bool = True,
    ) -> None:
        self.replication = Replication(
            membership,
            journal or JournalLog(),
            retransmit_s=timers.heartbeat_interval_s,
            keep_payloads=membership.self_id not in membership.witnesses,
        )
        self._membership = membership
        self.timers = timers
        self.priority = priority
        self.api_port = api_port
        self.term = hard_state.term
        self.voted_for = hard_state.voted_for
        self.leader: NodeId | None = None
        self.stats = ElectionStats()
        self._rng = rng
        self._preempt = preempt
        self._serviceable = True
        self._ready = ready
        self._fault_reason = ""
        self._robot_reachable = True
        self._robot_problem = ""
        self._stopping = False
        # Boot counts as having just heard a primary: see invariant 3.
        self._leader_contact_at = now
        self._successor_rank = NOT_A_SUCCESSOR
        self._election_deadline = now + self._election_timeout()
        self._round_term = 0
        self._grants: set[NodeId] = set()
        self._followers = Followers(membership, timers)
        self._lease_expiry = _NEVER
        self._quorum_deadline = _NEVER
        self._next_heartbeat_at = _NEVER
        self._transfer: _Transfer | None = None
        self._handoff: _Handoff | None = None
        self._announced = False
        self._term_start = 0  # index of the first entry of the term we lead
        # Evidence of death: when each member was last heard (any message), the next time we
        # may ask for a probe, the probe in flight, the member our own probe found gone, and
        # pre-vote requests held until that probe answers.
        self._heard_at: dict[NodeId, float] = {}
        self._next_probe_at = _NEVER
        self._probing: NodeId | None = None
        self._gone: NodeId | None = None
        self._held_pre_votes: dict[NodeId, PreVoteRequest] = {}
        self._cause = "timeout"
        self.role = Role.WITNESS if self._is_witness else Role.BACKUP

    # --- queries ---------------------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self.membership.self_id

    @property
    def membership(self) -> Membership:
        return self._membership

    @membership.setter
    def membership(self, membership: Membership) -> None:
        self._membership = membership
        self.replication.membership = membership

    @property
    def log(self) -> LogPosition:
        """(term, index) of the last journal entry: what the up-to-date check compares."""
        return self.replication.log.last

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for)

    @property
    def lease_expiry(self) -> float:
        """Local time at which the lease ends; -inf when this node holds none."""
        return self._lease_expiry if self.role is Role.PRIMARY else _NEVER

    @property
    def counted_by_leader(self) -> bool:
        """Whether the primary's last heartbeat placed us in its line of succession: a backup
        that can lead but is not placed is one whose acks the primary does not hear."""
        return self._successor_rank != NOT_A_SUCCESSOR

    @property
    def heartbeat_due_at(self) -> float:
        """When the primary's next heartbeat is due; -inf on other roles."""
        return self._next_heartbeat_at if self.role is Role.PRIMARY else _NEVER

    def lease_valid(self, now: float) -> bool:
        """Whether this node is primary and may command the robot at `now`."""
        return self.role is Role.PRIMARY and now < self._lease_expiry

    def accepting_commands(self, now: float) -> bool:
        """Primary with a valid lease and no transfer under way."""
        return self.lease_valid(now) and self._transfer is None

    @property
    def eligible(self) -> bool:
        """Whether this node could stand for election at all."""
        return (
            self._serviceable
            and self._robot_reachable
            and not self._stopping
            and self.membership.can_lead(self.node_id)
        )

    @property
    def ready(self) -> bool:
        """Done starting, with a loop that keeps time (`Readiness`)."""
        return self._ready

    @property
    def offers_to_lead(self) -> bool:
        """What our acks say: eligible, and with preempt on also done starting with a loop
        that keeps time, for a primary preempts only to a node that offers. (The ack has one
        bit for both: without preempt, a node still starting is offered, as it always was,
        so that a handover finds it.)"""
        return self.eligible and (self._ready or not self._preempt)

    @property
    def robot_reachable(self) -> bool:
        return self._robot_reachable

    @property
    def fault_reason(self) -> str:
        if self._stopping:
            return "shutting down"
        if not self._serviceable:
            return self._fault_reason or "not serviceable"
        if not self._robot_reachable:
            return " ".join(("robot unreachable:", self._robot_problem or "no answer"))
        return ""

    def peers(self) -> list[PeerView]:
        """The primary's view of its peers (empty on other roles)."""
        return self._followers.views() if self.role is Role.PRIMARY else []

    def next_deadline(self) -> float:
        """The latest local time by which the shell must deliver the next `Tick`."""
        deadlines = [math.inf]
        if self.role is Role.PRIMARY:
            deadlines += [self._next_heartbeat_at, self._quorum_deadline]
            if self._transfer is not None:
                deadlines.append(self._transfer.deadline)
        elif self.role in (Role.BACKUP, Role.PRE_CANDIDATE, Role.CANDIDATE):
            deadlines.append(self._election_deadline)
        deadlines.append(self._probe_due_at())
        if self._handoff is not None:
            deadlines.append(self._handoff.next_send)
        return min(deadlines)

    # --- the one entry point ---------------------------------------------------------------

    def step(self, event: Event) -> Effects:
        """Apply one input; the returned effects must be applied in their documented order."""
        before = self.hard_state
        out = _Out()
        if isinstance(event, Tick):
            self._TICKS[self.role](self, event.now, out)
        elif isinstance(event, MessageReceived):
            self._receive(event.message, event.now, out)
        elif isinstance(event, RobotReachability | Serviceability | Readiness | ShutdownRequested):
            self._condition(event, out)
        elif isinstance(event, RobotTermSeen):
            self._robot_term_seen(event.term, event.now, out)
        elif isinstance(event, StepDownRequested):
            self._step_down_requested(event.target, event.now, out)
        elif isinstance(event, Propose):
            self._propose(event, out)
        elif isinstance(event, Compact):
            self.replication.compact(event.upto, event.data, out.changes)
        elif isinstance(event, LogPersisted):
            self.replication.persisted(
                event.index, event.term, self.node_id, event.now, out.send, out.changes
            )
        elif isinstance(event, LeaderProbed):
            self._leader_probed(event, out)
        after = self.hard_state
        ch = out.changes
        write = None
        if ch.compact_to is not None or ch.truncate_from is not None or ch.entries:
            commit = self.replication.log.commit
            write = LogWrite(ch.compact_to, ch.truncate_from, tuple(ch.entries), commit)
        return Effects(
            persist=after if after != before else None,
            log=write,
            send=tuple(out.send),
            actions=tuple(out.actions),
            restore=ch.restore,
            committed=tuple(ch.committed),
            proposed=out.proposed,
        )

    def _condition(
        self,
        event: RobotReachability | Serviceability | Readiness | ShutdownRequested,
        out: _Out,
    ) -> None:
        """What this node can do changed: its robot link, its health, its start-up, a stop."""
        if isinstance(event, Readiness):
            self._ready = event.ready
            return
        if isinstance(event, RobotReachability):
            self._robot_reachable = event.reachable
            self._robot_problem = "" if event.reachable else event.reason
        elif isinstance(event, Serviceability):
            self._serviceable = event.serviceable
            self._fault_reason = event.reason
        else:
            self._stopping = True
        self._eligibility_changed(event.now, out)

    def _propose(self, event: Propose, out: _Out) -> None:
        if not self.accepting_commands(event.now):
            why = "handing over" if self.role is Role.PRIMARY else f"{self.role.value}, not primary"
            out.actions.append(ProposalRefused(f"{self.node_id} is {why}"))
            return
        out.proposed = self.replication.propose(
            event.kind, event.data, self.node_id, event.now, out.send, out.changes
        )

    # --- messages --------------------------------------------------------------------------

    def _receive(self, msg: Message, now: float, out: _Out) -> None:
        if msg.sender == self.node_id:
            return
        if msg.term > self.term + MAX_TERM_JUMP:
            self.stats.implausible_terms += 1
            return
        self._heard_at[msg.sender] = now
        if msg.sender == self._gone:
            self._gone = None
        if msg.term > self.term and not self._adopt_term(msg, now, out):
            return
        if msg.term < self.term:
            self._answer_stale(msg, out)
            return
        self._STEPS[self.role](self, msg, now, out)

    def _adopt_term(self, msg: Message, now: float, out: _Out) -> bool:
        """Move to a newer term announced by `msg`; False if `msg` must not move us."""
        if isinstance(msg, PreVoteRequest | PreVoteResponse) and (
            not isinstance(msg, PreVoteResponse) or msg.granted
        ):
            return True  # pre-votes ask about a term, they do not start it
        if isinstance(msg, VoteRequest) and not msg.transfer and self._sticky(now):
            self.stats.votes_denied += 1
            out.send.append(Outgoing(msg.sender, VoteResponse(self.node_id, self.term, False)))
            return False
        leader = msg.sender if isinstance(msg, Heartbeat | Append | Snapshot) else None
        self._become_follower(msg.term, leader, now, out, f"saw term {msg.term} from {msg.sender}")
        return True

    def _answer_stale(self, msg: Message, out: _Out) -> None:
        """Tell a node behind us our term, so that it steps down or catches up."""
        reply: Message | None = None
        if isinstance(msg, Heartbeat):
            reply = HeartbeatAck(self.node_id, self.term, msg.sent_at, False, self.log)
        elif isinstance(msg, PreVoteRequest):
            reply = PreVoteResponse(self.node_id, self.term, False)
        elif isinstance(msg, VoteRequest):
            reply = VoteResponse(self.node_id, self.term, False)
        elif isinstance(msg, Append | Snapshot):
            reply = AppendAck(self.node_id, self.term, False, self.log.index)
        if reply is not None:
            out.send.append(Outgoing(msg.sender, reply))

    def _step_backup(self, msg: Message, now: float, out: _Out) -> None:
        """Backup, FAULT and witness: follow the primary, answer votes, obey transfers."""
        if isinstance(msg, Heartbeat):
            self._heard_primary(msg, now, out)
        elif isinstance(msg, Append | Snapshot):
            self._replicated(msg, out)
        elif isinstance(msg, PreVoteRequest):
            self._answer_pre_vote(msg, now, out)
        elif isinstance(msg, VoteRequest):
            self._answer_vote(msg, now, out)
        elif isinstance(msg, TimeoutNow):
            if self.role is Role.BACKUP and self.eligible and msg.sender == self.leader:
                self._become_candidate(now, out, transfer=True)
        elif isinstance(msg, Resign) and msg.sender == self.leader:
            self._leader_left(now, "resignation")

    def _step_candidate(self, msg: Message, now: float, out: _Out) -> None:
        """Pre-candidate and candidate: count answers, yield to a primary of our term."""
        if isinstance(msg, PreVoteResponse) and self.role is Role.PRE_CANDIDATE:
            if msg.granted and msg.term == self._round_term:
                self._grants.add(msg.sender)
                if self.membership.is_quorum(self._grants):
                    self._become_candidate(now, out, transfer=False)
            elif self.membership.two_node:
                self._back_off(now, out, f"{msg.sender} refused the pre-vote")
        elif isinstance(msg, VoteResponse) and self.role is Role.CANDIDATE:
            if msg.granted and msg.term == self.term:
                self._grants.add(msg.sender)
                if self.membership.is_quorum(self._grants):
                    self._become_primary(now, out)
            elif self.membership.two_node:
                self._back_off(now, out, f"{msg.sender} refused the vote")
        elif isinstance(msg, Heartbeat | Append | Snapshot):
            self._become_follower(self.term, msg.sender, now, out, f"{msg.sender} leads")
            self._step_backup(msg, now, out)
        elif isinstance(msg, PreVoteRequest):
            self._answer_pre_vote(msg, now, out)
        elif isinstance(msg, VoteRequest):
            self._answer_vote(msg, now, out)

    def _replicated(self, msg: Append | Snapshot, out: _Out) -> None:
        """Journal entries from the primary of our term (only it sends them)."""
        self.leader = msg.sender
        if isinstance(msg, Append):
            self.replication.on_append(msg, self.node_id, out.send, out.changes)
        else:
            self.replication.on_snapshot(msg, self.node_id, out.send, out.changes)

    def _step_primary(self, msg: Message, now: float, out: _Out) -> None:
        """Primary: renew the lease from acks; refuse every vote of our own term."""
        if isinstance(msg, HeartbeatAck) and msg.success:
            self._acked(msg, now, out)
            self._maybe_finish_transfer(now, out)
        elif isinstance(msg, AppendAck):
            self.replication.on_ack(msg, self.node_id, now, out.send, out.changes)
            self._maybe_finish_transfer(now, out)
        elif isinstance(msg, PreVoteRequest):
            self.stats.votes_denied += 1
            out.send.append(Outgoing(msg.sender, PreVoteResponse(self.node_id, self.term, False)))
        elif isinstance(msg, VoteRequest):
            self.stats.votes_denied += 1
            out.send.append(Outgoing(msg.sender, VoteResponse(self.node_id, self.term, False)))
        elif isinstance(msg, Heartbeat | Append | Snapshot):
            raise LocalError(f"two primaries in term {self.term}: {self.node_id}, {msg.sender}")

    _STEPS: ClassVar[dict[Role, Callable[[Election, Message, float, _Out], None]]] = {
        Role.BACKUP: _step_backup,
        Role.FAULT: _step_backup,
        Role.WITNESS: _step_backup,
        Role.PRE_CANDIDATE: _step_candidate,
        Role.CANDIDATE: _step_candidate,
        Role.PRIMARY: _step_primary,
    }

    def _leader_left(self, now: float, cause: str) -> None:
        """The primary resigned, or our own probe found its process gone: no stickiness to
        it; stand after our place in the line of succession only."""
        self.leader = None
        self._leader_contact_at = _NEVER
        # Every voter finds the evidence within a probe of the others: the first in line need
        # not wait a jitter (~10 ms on average, wired) that only separates equal places.
        self._election_deadline = now + self._succession_wait(jitter=cause != "evidence")
        self._cause = cause

    def _heard_primary(self, msg: Heartbeat, now: float, out: _Out) -> None:
        self.leader = msg.sender
        self._cause = "timeout"
        self._release_held_pre_votes(now, out)
        if self.membership.two_node and self.replication.drop_split_brain(
            msg.log, self.term, out.changes
        ):
            # The primary may count entries we just dropped as ours: tell it where we end.
            nack = AppendAck(self.node_id, self.term, False, self.log.index)
            out.send.append(Outgoing(msg.sender, nack))
        self.replication.on_commit_hint(msg.commit, out.changes)
        self._leader_contact_at = now
        self._successor_rank = msg.successor_rank
        self._election_deadline = now + self._election_timeout()
        self._handoff = None
        ack = HeartbeatAck(
            self.node_id, self.term, msg.sent_at, True, self.log, self.priority, self.offers_to_lead
        )
        out.send.append(Outgoing(msg.sender, ack))

    def _answer_pre_vote(self, msg: PreVoteRequest, now: float, out: _Out) -> None:
        if self._hold_for_probe(msg, now, out):
            return
        granted = (
            msg.term > self.term
            and not self._sticky(now)
            and msg.log >= self.log
            and self.membership.can_lead(msg.sender)
        )
        self._count_vote(granted)
        term = msg.term if granted else self.term
        out.send.append(Outgoing(msg.sender, PreVoteResponse(self.node_id, term, granted)))

    def _answer_vote(self, msg: VoteRequest, now: float, out: _Out) -> None:
        granted = (
            msg.term == self.term
            and self.voted_for in (None, msg.sender)
            and self.leader in (None, msg.sender)
            and msg.log >= self.log
            and self.membership.can_lead(msg.sender)
        )
        if granted:
            self.voted_for = msg.sender
            self._election_deadline = now + self._election_timeout()
        self._count_vote(granted)
        out.send.append(Outgoing(msg.sender, VoteResponse(self.node_id, self.term, granted)))

    def _count_vote(self, granted: bool) -> None:
        if granted:
            self.stats.votes_granted += 1
        else:
            self.stats.votes_denied += 1

    def _sticky(self, now: float) -> bool:
        """Whether we heard a live primary (or booted) less than an election timeout ago."""
        if self.role is Role.PRIMARY:
            return now < self._lease_expiry
        return now - self._leader_contact_at < self.timers.election_timeout_s

    # --- time ------------------------------------------------------------------------------

    def _tick_backup(self, now: float, out: _Out) -> None:
        self._maybe_nudge_target(now, out)
        if now >= self._probe_due_at():
            self._ask_probe(now, out)
        if self.role is Role.BACKUP and self.eligible and now >= self._election_deadline:
            self._become_pre_candidate(now, out)

    def _tick_candidate(self, now: float, out: _Out) -> None:
        if now < self._election_deadline:
            return
        late = now - self._election_deadline > self.timers.heartbeat_interval_s
        if not self.membership.two_node or late:
            # A late tick means we were paused: the peer's answer may be waiting unread, so
            # silence proves nothing; ask again.
            self._become_pre_candidate(now, out)
            return
        # Two-node mode and the peer stayed silent for a whole round: go on alone.
        if self.role is Role.PRE_CANDIDATE:
            self._become_candidate(now, out, transfer=False)
        self._become_primary(now, out)

    def _back_off(self, now: float, out: _Out, reason: str) -> None:
        """Two-node mode: the peer answered no, so it is alive; wait for its heartbeats."""
        self._become(Role.BACKUP, now, out, reason)
        self._election_deadline = now + self._election_timeout()

    def _tick_primary(self, now: float, out: _Out) -> None:
        if now >= self._quorum_deadline:
            self.stats.lease_renew_failures += 1
            self._resign(now, out, "lease expired: no quorum of acks")
            return
        if self._transfer is not None and now >= self._transfer.deadline:
            self._transfer_timed_out(now, out)
        if now >= self._next_heartbeat_at:
            self._broadcast_heartbeat(now, out)
        self._maybe_preempt(now, out)

    _TICKS: ClassVar[dict[Role, Callable[[Election, float, _Out], None]]] = {
        Role.BACKUP: _tick_backup,
        Role.FAULT: _tick_backup,
        Role.WITNESS: _tick_backup,
        Role.PRE_CANDIDATE: _tick_candidate,
        Role.CANDIDATE: _tick_candidate,
        Role.PRIMARY: _tick_primary,
    }

    def _election_timeout(self) -> float:
        """How long a backup waits for a heartbeat before it asks for votes.

        Long enough that every voter that heard the same heartbeat has stopped refusing votes,
        even if its clock runs slow and ours fast, and it heard the heartbeat a little later.
        """
        t = self.timers
        drift = t.clock_drift
        sticky_s = t.election_timeout_s * (1 + drift) / (1 - drift)
        return sticky_s + t.heartbeat_interval_s / 10 + self._succession_wait()

    def _succession_wait(self, *, jitter: bool = True) -> float:
        """Skew by our place in the line of succession, plus jitter below one place; without
        `jitter` only for a node a primary has ranked (ranked places are distinct)."""
        t = self.timers
        ranked = self._successor_rank != NOT_A_SUCCESSOR
        if ranked:
            place = float(self._successor_rank)
        else:
            # No primary has ranked us: fall back to VRRP's rule, behind every ranked node.
            others = len(self.membership.voters)
            place = others + (255 - self.priority) / 255 + self.membership.rank(self.node_id) / 256
        spread = self._rng.uniform(0.0, t.election_jitter_s) if jitter or not ranked else 0.0
        return place * t.priority_skew_s + spread

    def _broadcast_heartbeat(self, now: float, out: _Out) -> None:
        self._followers.heartbeat_sent(now)
        self._renew_lease(now, out)
        ranks = self._followers.succession()
        for peer in sorted(self.membership.peers):
            rank = ranks.get(peer, NOT_A_SUCCESSOR)
            commit = self.replication.commit_for(peer)
            beat = Heartbeat(self.node_id, self.term, now, self.log, rank, self.api_port, commit)
            out.send.append(Outgoing(peer, beat))
        self.replication.heartbeat(self.node_id, now, out.send)
        self._next_heartbeat_at = now + self.timers.heartbeat_interval_s

    def _acked(self, msg: HeartbeatAck, now: float, out: _Out) -> None:
        self._followers.acked(msg, now)
        self._renew_lease(now, out)

    def _renew_lease(self, now: float, out: _Out) -> None:
        """Extend the lease to the quorum-th newest acknowledged send time plus the lease."""
        if self._transfer is not None:
            return  # handing over: the lease only runs out from here
        expiry = self._followers.lease_expiry()
        if expiry > self._lease_expiry:
            self._lease_expiry = expiry
            self._quorum_deadline = max(self._quorum_deadline, expiry)
        if not self._announced and now < self._lease_expiry:
            # First valid lease of this term: publish the endpoint, then make the robot safe.
            # Clients find the new primary while it stops the robot and settles the journal
            # (commands wait for that: /cluster/primary and the command routes answer 503
            # until it is done), and a robot that does not answer never hides the endpoint.
            self._announced = True
            out.actions.append(PublishEndpoint(self.term))
            out.actions.append(BecomePrimary(self.term, self._term_start, self._cause))

    # --- evidence of death -----------------------------------------------------------------

    def _probe_due_at(self) -> float:
        """When to ask for the next probe of the primary we follow: once its heartbeat is
        `PROBE_AFTER_HEARTBEATS` late, then every `PROBE_EVERY_HEARTBEATS` while we would still
        refuse votes for it; inf when there is nothing to probe."""
        leader = self.leader
        if leader is None or leader == self.node_id or self.role not in _FOLLOWERS:
            return math.inf
        t = self.timers
        overdue = self._leader_contact_at + PROBE_AFTER_HEARTBEATS * t.heartbeat_interval_s
        due = max(overdue, self._next_probe_at)
        return due if due < self._leader_contact_at + t.election_timeout_s else math.inf

    def _ask_probe(self, now: float, out: _Out) -> None:
        assert self.leader is not None
        self._probing = self.leader
        self._next_probe_at = now + PROBE_EVERY_HEARTBEATS * self.timers.heartbeat_interval_s
        self.stats.probes_asked += 1
        out.actions.append(ProbeLeader(self.leader))

    def _leader_probed(self, event: LeaderProbed, out: _Out) -> None:
        """Our own probe is in: evidence that started after we last heard the leader ends our
        stickiness to it (invariant 7); then answer the pre-votes held for it."""
        if event.leader == self._probing:
            self._probing = None
        if event.gone and event.started > self._heard_at.get(event.leader, _NEVER):
            self.stats.leaders_found_gone += 1
            self._gone = event.leader
            if event.leader == self.leader and self.role in _FOLLOWERS:
                self._leader_left(event.now, "evidence")
        self._release_held_pre_votes(event.now, out)

    def _hold_for_probe(self, msg: PreVoteRequest, now: float, out: _Out) -> bool:
        """Hold a pre-vote that only stickiness would refuse, while our primary is a heartbeat
        late: our own probe decides (`_leader_probed` answers it). False: answer now."""
        late_s = now - self._leader_contact_at
        if (
            self._probe_due_at() == math.inf
            or late_s <= self.timers.heartbeat_interval_s
            or not self._sticky(now)
            or msg.term <= self.term
            or msg.log < self.log
            or len(self._held_pre_votes.keys() - {msg.sender}) >= _MAX_HELD_PRE_VOTES
        ):
            return False
        if now >= self._next_probe_at:
            self._ask_probe(now, out)
        elif self._probing is None:
            return False  # our last probe, just now, found no evidence
        self._held_pre_votes[msg.sender] = msg
        return True

    def _release_held_pre_votes(self, now: float, out: _Out) -> None:
        held, self._held_pre_votes = self._held_pre_votes, {}
        if self.role in _FOLLOWERS:  # a candidate's voters ask again anyway
            for msg in held.values():
                self._answer_pre_vote(msg, now, out)

    # --- transfer, preemption, eligibility -------------------------------------------------

    def _step_down_requested(self, target: NodeId | None, now: float, out: _Out) -> None:
        if self.role is not Role.PRIMARY:
            out.actions.append(StepDownRefused(f"{self.node_id} is {self.role.value}, not primary"))
            return
        chosen = target or self._followers.best_successor()
        if chosen is None:
            out.actions.append(StepDownRefused("no eligible backup is alive to take over"))
        elif chosen not in {p.node for p in self._followers.live_candidates()}:
            out.actions.append(StepDownRefused(f"{chosen} is not a live, eligible backup"))
        else:
            self._start_transfer(chosen, now, out)

    def _start_transfer(self, target: NodeId, now: float, out: _Out) -> None:
        self._transfer = _Transfer(target, now + self.timers.election_timeout_s)
        self._maybe_finish_transfer(now, out)

    def _maybe_finish_transfer(self, now: float, out: _Out) -> None:
        """Hand over once the target's journal has caught up with ours."""
        transfer = self._transfer
        if transfer is None:
            return
        progress = self.replication.progress(transfer.target)
        if progress is None or progress.match < self.log.index:
            return
        self._lease_expiry = _NEVER
        out.send.append(Outgoing(transfer.target, TimeoutNow(self.node_id, self.term)))
        self._handoff = _Handoff(
            transfer.target,
            self.term,
            until=now + self.timers.election_timeout_s,
            next_send=now + self.timers.heartbeat_interval_s,
        )
        self._become_follower(self.term, None, now, out, f"handed over to {transfer.target}")

    def _transfer_timed_out(self, now: float, out: _Out) -> None:
        self._transfer = None
        if self.eligible:  # an operator's step-down or a preemption: keep serving
            out.actions.append(StepDownRefused("transfer timed out: target did not catch up"))
        else:
            self._resign(now, out, f"{self.fault_reason}; transfer timed out")

    def _maybe_nudge_target(self, now: float, out: _Out) -> None:
        """Resend TimeoutNow after a handover until someone leads or the window closes."""
        handoff = self._handoff
        if handoff is None or now < handoff.next_send:
            return
        if now >= handoff.until or self.term != handoff.term or self.leader is not None:
            self._handoff = None
            return
        out.send.append(Outgoing(handoff.target, TimeoutNow(self.node_id, handoff.term)))
        handoff.next_send = now + self.timers.heartbeat_interval_s

    def _maybe_preempt(self, now: float, out: _Out) -> None:
        """With preempt on, hand over to a better backup once it has been healthy long enough."""
        if not self._preempt or self._transfer is not None or self.role is not Role.PRIMARY:
            return
        better = self._followers.preemptor(now, self.priority, self.log)
        if better is not None:
            self._start_transfer(better, now, out)

    def _eligibility_changed(self, now: float, out: _Out) -> None:
        if self.eligible:
            if self.role is Role.FAULT:
                self._become(Role.BACKUP, now, out, "can serve again")
                self._election_deadline = now + self._election_timeout()
            return
        reason = self.fault_reason
        if self.role is Role.PRIMARY:
            target = self._followers.best_successor()
            if self._transfer is not None:
                pass  # already handing over; a timeout now resigns instead of staying
            elif target is None:
                self._resign(now, out, reason)
            else:
                self._start_transfer(target, now, out)
        elif self.role in (Role.BACKUP, Role.PRE_CANDIDATE, Role.CANDIDATE):
            self._become(Role.FAULT, now, out, reason)

    def _robot_term_seen(self, term: int, now: float, out: _Out) -> None:
        """The robot knows a newer term than ours (its fencing refused us): step down and move
        to that term, as on any message of a newer term (Raft §5.1), so that the next election
        is above it. A primary resigns first, so that the others elect without waiting."""
        if term <= self.term:
            return
        if term > self.term + MAX_TERM_JUMP:
            self.stats.implausible_terms += 1
            return
        reason = f"the robot has seen term {term}"
        if self.role is Role.PRIMARY:
            self._resign(now, out, reason)
        self._become_follower(term, None, now, out, reason)

    def _resign(self, now: float, out: _Out, reason: str) -> None:
        """Give up the lease and tell everyone, so that they elect without waiting."""
        self._lease_expiry = _NEVER
        for peer in sorted(self.membership.peers):
            out.send.append(Outgoing(peer, Resign(self.node_id, self.term)))
        self._become_follower(self.term, None, now, out, reason)
        self._leader_contact_at = _NEVER

    # --- role changes ----------------------------------------------------------------------

    @property
    def _follower_role(self) -> Role:
        if self._is_witness:
            return Role.WITNESS
        return Role.BACKUP if self.eligible else Role.FAULT

    @property
    def _is_witness(self) -> bool:
        return self.node_id in self.membership.witnesses

    def _become_follower(
        self, term: int, leader: NodeId | None, now: float, out: _Out, reason: str
    ) -> None:
        if term > self.term:
            self.term = term
            self.voted_for = None
        self.leader = leader
        if leader is not None:
            self._leader_contact_at = now
            self._cause = "timeout"
        self._election_deadline = now + self._election_timeout()
        self._become(self._follower_role, now, out, reason)

    def _become_pre_candidate(self, now: float, out: _Out) -> None:
        self._become(Role.PRE_CANDIDATE, now, out, self._campaign_reason())
        self.leader = None
        self._round_term = self._next_term()
        self._grants = {self.node_id}
        self._election_deadline = now + self.timers.retry_timeout_s + self._succession_wait()
        if self._won_alone():
            self._become_candidate(now, out, transfer=False)
            return
        request = PreVoteRequest(self.node_id, self._round_term, self.log)
        for peer in sorted(self.membership.voting_peers):
            out.send.append(Outgoing(peer, request))

    def _become_candidate(self, now: float, out: _Out, *, transfer: bool) -> None:
        self._become(Role.CANDIDATE, now, out, "transfer" if transfer else "won the pre-vote")
        if transfer:
            self._cause = "transfer"
        self.stats.elections_started += 1
        self.term = self._next_term()
        self.voted_for = self.node_id
        self.leader = None
        self._grants = {self.node_id}
        self._election_deadline = now + self.timers.retry_timeout_s + self._succession_wait()
        if self._won_alone():
            self._become_primary(now, out)
            return
        request = VoteRequest(self.node_id, self.term, self.log, transfer)
        for peer in sorted(self.membership.voting_peers):
            out.send.append(Outgoing(peer, request))

    def _campaign_reason(self) -> str:
        if self._cause == "evidence":
            return f"{self._gone or 'the primary'} is gone: its ports refuse"
        if self._cause == "resignation":
            return "the primary resigned"
        return "no heartbeat within the election timeout"

    def _won_alone(self) -> bool:
        """A single-voter cluster wins at once; two-node mode first asks its peer (see tick),
        unless our own probe found the peer's process gone since we last heard it."""
        if not self.membership.is_quorum(self._grants):
            return False
        peers = set(self.membership.voting_peers)
        return not self.membership.two_node or (self._gone is not None and peers <= {self._gone})

    def _next_term(self) -> int:
        """The term to campaign in; in two-node mode each node owns every other term.

        With a quorum of one, both nodes of a partitioned pair win whatever term they ask for;
        disjoint terms keep "one primary per term" true even then.
        """
        if not self.membership.two_node:
            return self.term + 1
        parity = self.membership.rank(self.node_id)
        return self.term + 1 if (self.term + 1) % 2 == parity else self.term + 2

    def _become_primary(self, now: float, out: _Out) -> None:
        self._become(Role.PRIMARY, now, out, f"won term {self.term}")
        self.stats.terms_won += 1
        self.leader = self.node_id
        self._followers = Followers(self.membership, self.timers)
        self._transfer = None
        self._handoff = None
        self._lease_expiry = _NEVER
        # Check-quorum from the start: without a first quorum of acks, give up like any lease.
        self._quorum_deadline = now + self.timers.lease_timeout_s
        self._announced = False
        self._gone = None
        # The NOOP goes right after our last entry; a lone voter's lease is valid at once, so
        # BecomePrimary may leave with the heartbeat below, before the NOOP is appended.
        self._term_start = self.log.index + 1
        self._broadcast_heartbeat(now, out)
        noop = self.replication.lead(self.term, self.node_id, now, out.send, out.changes)
        assert noop.index == self._term_start

    def _become(self, new: Role, now: float, out: _Out, reason: str) -> None:
        old = self.role
        if new not in _TRANSITIONS[old]:
            raise LocalError(f"illegal role change {old.value} -> {new.value} ({reason})")
        if old is Role.PRIMARY and new is not Role.PRIMARY:
            self._lease_expiry = _NEVER
            self._transfer = None
            self.replication.follow()
            out.actions.append(StopRobot(reason))
            out.actions.append(WithdrawEndpoint(self.term))
        self.role = new
        if old is not new:
            out.actions.append(RoleChanged(old, new, self.term, reason))
