"""What a primary knows of the other members during its term: its lease and its successors.

Invariants:
- The lease is computed from send times on the primary's own clock: it ends `lease_timeout_s`
  after the quorum-th newest heartbeat that voters acknowledged, the primary's own newest
  heartbeat counting as its ack. Acks from non-voters never count.
- A member is live if it acknowledged a heartbeat within one election timeout of our newest.
- The line of succession orders live, eligible members that may lead by priority, then journal
  position, then node id: deterministic, so every primary ranks the same cluster the same way.

Pure. A new `Followers` is made for every term a node wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import NOT_A_SUCCESSOR, HeartbeatAck, LogPosition, NodeId
from ha_voice.cluster.timers import ElectionTimers

__all__ = ["Followers", "PeerView"]

_NEVER = -math.inf


@dataclass
class PeerView:
    """What the primary knows of one peer, from its heartbeat acks."""

    node: NodeId
    last_ack_at: float = _NEVER
    priority: int = 0
    eligible: bool = False
    log: LogPosition = field(default_factory=LogPosition)
    # Since when it has been acking continuously while eligible (for preempt_delay).
    healthy_since: float = _NEVER


class Followers:
    """Acks and health of the other members, as seen by the primary of one term."""

    def __init__(self, membership: Membership, timers: ElectionTimers) -> None:
        self._membership = membership
        self._timers = timers
        self._acked_send_times: dict[NodeId, float] = {}
        self._views: dict[NodeId, PeerView] = {}

    def heartbeat_sent(self, now: float) -> None:
        """The primary sent a heartbeat at `now`: its own ack towards the lease."""
        self._acked_send_times[self._membership.self_id] = now

    def acked(self, msg: HeartbeatAck, now: float) -> None:
        """A successful ack of the heartbeat sent at `msg.sent_at` arrived at `now`."""
        if msg.sender in self._membership.voters:
            previous = self._acked_send_times.get(msg.sender, _NEVER)
            self._acked_send_times[msg.sender] = max(previous, msg.sent_at)
        view = self._views.setdefault(msg.sender, PeerView(msg.sender))
        if not (view.eligible and self._recent(view.last_ack_at, now)):
            view.healthy_since = now
        view.last_ack_at = now
        view.priority = msg.priority
        view.eligible = msg.eligible
        view.log = msg.log

    def lease_expiry(self) -> float:
        """Until when a quorum has promised not to elect anyone else; -inf without a quorum."""
        voters = self._membership.voters
        sent = sorted(
            (t for node, t in self._acked_send_times.items() if node in voters), reverse=True
        )
        quorum = self._membership.quorum
        if len(sent) < quorum:
            return _NEVER
        return sent[quorum - 1] + self._timers.lease_timeout_s

    def views(self) -> list[PeerView]:
        return [self._views[node] for node in sorted(self._views)]

    def view(self, node: NodeId) -> PeerView | None:
        return self._views.get(node)

    def live_candidates(self) -> list[PeerView]:
        """Members that acked lately, say they can serve, and may lead."""
        newest = self._acked_send_times.get(self._membership.self_id, _NEVER)
        return [
            view
            for view in self._views.values()
            if view.eligible
            and self._recent(view.last_ack_at, newest)
            and self._membership.can_lead(view.node)
        ]

    def succession(self) -> dict[NodeId, int]:
        """Each live candidate's place in line (0 takes over first)."""
        order = sorted(self.live_candidates(), key=_succession_key)
        return {view.node: min(rank, NOT_A_SUCCESSOR - 1) for rank, view in enumerate(order)}

    def best_successor(self) -> NodeId | None:
        order = sorted(self.live_candidates(), key=_succession_key)
        return order[0].node if order else None

    def preemptor(self, now: float, priority: int, log: LogPosition) -> NodeId | None:
        """The best live candidate with a higher priority, caught up and healthy long enough."""
        ready = [
            view
            for view in self.live_candidates()
            if view.priority > priority
            and now - view.healthy_since >= self._timers.preempt_delay_s
            and view.log >= log
        ]
        return min(ready, key=_succession_key).node if ready else None

    def _recent(self, then: float, now: float) -> bool:
        return now - then < self._timers.election_timeout_s


def _succession_key(view: PeerView) -> tuple[int, int, int, NodeId]:
    return (-view.priority, -view.log.term, -view.log.index, view.node)
