"""What the rest of the daemon may know of the cluster core: an immutable view, swapped whole.

The core runs on a thread of its own (`runner.py`); everything else reads the newest `NodeView`
it published. A view is built after a batch of inputs has been stepped and before anything that
batch produced leaves the node, so a lease the core gave up is gone from the view before any
other node can hear of it.

Pure data: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ha_voice.cluster.events import Role
from ha_voice.cluster.followers import PeerView
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import Address, Load, NodeId

__all__ = ["PRIMARY_WITHOUT_LEASE", "Failover", "NodeView", "PeerInfo"]

# What a node reports as its role while elected but holding no valid lease.
PRIMARY_WITHOUT_LEASE = "primary_without_lease"


@dataclass(frozen=True)
class PeerInfo:
    """A member's address and what this node heard from it (monotonic seconds)."""

    node_id: NodeId
    address: Address | None = None
    static: bool = False
    last_heard_at: float | None = None
    priority: int | None = None
    api_port: int | None = None
    boot: int | None = None  # its boot id this node admitted (`Sessions`); None: none yet
    # Its monotonic clock minus ours, from its last heartbeat (seconds; short by the one-way
    # delay): how a forward's seal reads its clock (forward_seal.py). None: no heartbeat yet.
    clock_offset_s: float | None = None
    # Its speech load as it last told us (heartbeat, ack or load report) and when (monotonic
    # seconds); None: not told yet, or what it sent was malformed.
    load: Load | None = None
    load_heard_at: float | None = None


@dataclass(frozen=True)
class Failover:
    """The last time the primary changed to this node, as it saw it."""

    old: NodeId | None
    new: NodeId
    term: int
    duration_s: float | None
    at_unix_s: float
    cause: str = "timeout"  # why this node stood (`events.TAKEOVER_CAUSES`)


@dataclass(frozen=True)
class NodeView:
    """One consistent picture of the core after a batch of inputs."""

    node_id: NodeId
    role: Role
    term: int
    leader: NodeId | None
    lease_expiry: float  # local monotonic seconds; -inf unless primary with a lease
    accepting: bool  # primary, lease valid when published, no transfer under way
    eligible: bool
    fault_reason: str
    robot_reachable: bool
    membership: Membership
    commit_index: int = 0
    last_index: int = 0
    first_index: int = 1
    term_start: int = 0  # the first entry of the term this node leads
    peers: Mapping[NodeId, PeerInfo] = field(default_factory=dict)
    followers: tuple[PeerView, ...] = ()  # the primary's view of its peers' acks
    votes_granted: int = 0
    votes_denied: int = 0
    lease_renew_failures: int = 0
    elections_started: int = 0
    implausible_terms: int = 0
    snapshots_installed: int = 0
    last_failover: Failover | None = None
    published_at: float = -math.inf  # monotonic seconds
    write_pending_since: float | None = None  # oldest write not yet on disk
    # Since when the primary's heartbeats have arrived without counting us (a one-way link, or
    # our datagrams dropped there: unverified_boot while another process holds our node id, ...).
    unheard_since: float | None = None
    # "two processes claim node_id n2: 10.0.0.2:7400 and 10.0.0.9:7400", seen or told.
    boot_id: int = 0  # this process's random nonce (`protocol.Codec`)
    identity_conflicts: tuple[str, ...] = ()
    refused_by: tuple[NodeId, ...] = ()  # peers that keep this process out as the duplicate

    def lease_valid(self, now: float) -> bool:
        """Whether this node may command the robot at `now` (`Guard`'s `LeaseView`)."""
        return self.role is Role.PRIMARY and now < self.lease_expiry

    def shown_role(self, now: float) -> str:
        """The role to report at `now`: "primary" only while the lease is valid. A primary
        without one (just elected, before a quorum acknowledged it; handing over; its core
        stuck while others elect) is PRIMARY_WITHOUT_LEASE: it commands nothing."""
        if self.role is Role.PRIMARY and not self.lease_valid(now):
            return PRIMARY_WITHOUT_LEASE
        return self.role.value

    def no_primary_reason(self, now: float, patience_s: float, mdns: bool) -> str | None:
        """Why this node follows no primary, naming the peers it does not hear within
        `patience_s` and where it looked for them; None while it leads or follows one."""
        if self.role is Role.PRIMARY or self.leader is not None:
            return None
        peers = sorted(self.membership.voters - {self.node_id})
        heard = [p for p in peers if self._heard_within(p, now, patience_s)]
        counted = f"{len(heard)} of {len(peers)} peers heard"
        if self.membership.is_quorum({self.node_id, *heard}):
            return f"no primary yet: election under way in term {self.term} ({counted})"
        missing = [self._where_not_heard(p, mdns) for p in peers if p not in heard]
        return f"no quorum: {counted}; " + "; ".join(missing)

    def _heard_within(self, node: NodeId, now: float, patience_s: float) -> bool:
        peer = self.peers.get(node)
        heard = None if peer is None else peer.last_heard_at
        return heard is not None and now - heard < patience_s

    def _where_not_heard(self, node: NodeId, mdns: bool) -> str:
        peer = self.peers.get(node)
        if peer is None or peer.address is None:
            return f"{node} not found by mDNS" if mdns else f"{node} has no address (mDNS off)"
        return f"{node} not heard at {peer.address[0]}:{peer.address[1]}"

    def unheard_reason(self, now: float, patience_s: float) -> str | None:
        """Why this backup is useless to the primary, if its acks have gone unheard there for
        longer than `patience_s` (an election timeout): it could not take over in time."""
        if self.unheard_since is None or now - self.unheard_since <= patience_s:
            return None
        return (
            f"the primary {self.leader} does not hear this node for "
            f"{now - self.unheard_since:.1f} s: its heartbeats arrive, our answers are not "
            "counted (a one-way link, or dropped there: see its "
            "ha_voice_cluster_packets_dropped_total and identity_conflicts in its /cluster)"
        )

    def identity_reason(self) -> str | None:
        """Why this process is kept out of its cluster, if a peer refuses it as a duplicate."""
        if not self.refused_by or not self.identity_conflicts:
            return None
        return (
            f"{self.identity_conflicts[0]}; refused by {', '.join(self.refused_by)}: this "
            "process is the newcomer and stays out (give it its own node_id or stop it)"
        )

    def leader_info(self) -> PeerInfo | None:
        """The primary's peer record, if another node leads and we know of it."""
        if self.leader is None or self.leader == self.node_id:
            return None
        return self.peers.get(self.leader)
