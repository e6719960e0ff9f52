"""What the API reads of the cluster node, read in one place.

Routes that answer about leadership (forwarding, 503s, who answered) use `cluster_view` rather
than reaching into the node, so that how the node publishes its state can change here alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ha_voice import clock
from ha_voice.api.context import ApiContext
from ha_voice.api.tls import leader_url

__all__ = ["ClusterView", "cluster_view", "member_hosts"]


@dataclass(frozen=True)
class ClusterView:
    """This node's view of who leads, at one instant."""

    node: str
    role: str
    term: int
    leader: str | None
    leader_url: str | None  # the leader's API, if another node leads and we know where
    leader_silent_s: float | None  # since the leader was last heard; None if never, or us
    heartbeat_interval_s: float
    election_timeout_s: float

    @property
    def retry_after_s(self) -> float:
        """When to try again: two heartbeat intervals, about what a failover takes."""
        return round(2 * self.heartbeat_interval_s, 3)


def cluster_view(ctx: ApiContext) -> ClusterView:
    """The node's election state, the leader's address and how long it has been silent."""
    node = ctx.node
    view = node.view
    peer = view.leader_info()
    heard = peer.last_heard_at if peer is not None else None
    return ClusterView(
        node=view.node_id,
        role=view.role.value,
        term=view.term,
        leader=view.leader,
        leader_url=leader_url(ctx),
        leader_silent_s=None if heard is None else max(0.0, clock.monotonic() - heard),
        heartbeat_interval_s=node.timers.heartbeat_interval_s,
        election_timeout_s=node.timers.election_timeout_s,
    )


def member_hosts(ctx: ApiContext) -> frozenset[str]:
    """The IP addresses this node knows its peers by: where forwards between members come from."""
    peers = ctx.node.view.peers.values()
    return frozenset(peer.address[0] for peer in peers if peer.address is not None)
