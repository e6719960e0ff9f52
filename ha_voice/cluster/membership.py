"""Who votes, who may lead, and how many make a quorum.

Invariants:
- The voter set comes from static configuration only. Peers found by discovery join as
  non-voting members (they hear heartbeats and learn who leads) and never change the quorum:
  a quorum that could shrink with what a partitioned node happens to see is no quorum.
- A witness votes and acknowledges heartbeats but never leads.
- `two_node` (exactly two voters, no witness) lowers the quorum to one: either node may lead
  alone. That trades safety under partition for availability; see docs/design.md.

Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ha_voice.cluster.protocol import NodeId

__all__ = ["Membership"]


@dataclass(frozen=True)
class Membership:
    """The configured voters (with witnesses among them) and the discovered non-voters."""

    self_id: NodeId
    voters: frozenset[NodeId]
    witnesses: frozenset[NodeId] = frozenset()
    two_node: bool = False
    non_voters: frozenset[NodeId] = field(default=frozenset())

    def __post_init__(self) -> None:
        if not self.witnesses <= self.voters:
            raise ValueError("every witness must be a voter")
        if self.voters & self.non_voters:
            raise ValueError("a node is either a voter or a non-voter")
        if len(self.voters - self.witnesses) == 0:
            raise ValueError("at least one voter must be able to lead")
        if self.two_node and (len(self.voters) != 2 or self.witnesses):
            raise ValueError("two_node needs exactly two voters and no witness")

    @classmethod
    def from_config(
        cls,
        self_id: NodeId,
        peers: Iterable[NodeId],
        witness: NodeId | None = None,
        *,
        two_node: bool = False,
        self_is_voter: bool = True,
    ) -> Membership:
        """The membership of node `self_id` given the configured peer and witness ids."""
        voters = set(peers)
        if self_is_voter:
            voters.add(self_id)
        witnesses = frozenset({witness}) if witness else frozenset()
        return cls(self_id, frozenset(voters | witnesses), witnesses, two_node)

    @property
    def quorum(self) -> int:
        """Votes or acks needed: a majority of the voters, or one in two-node mode."""
        return 1 if self.two_node else len(self.voters) // 2 + 1

    @property
    def peers(self) -> frozenset[NodeId]:
        """Everyone we send heartbeats to: voters and non-voters but ourselves."""
        return (self.voters | self.non_voters) - {self.self_id}

    @property
    def voting_peers(self) -> frozenset[NodeId]:
        """The other voters: whom we ask for votes."""
        return self.voters - {self.self_id}

    def is_quorum(self, nodes: Iterable[NodeId]) -> bool:
        """Whether `nodes` holds a quorum of voters; non-voters in it count for nothing."""
        return len(self.voters.intersection(nodes)) >= self.quorum

    def can_lead(self, node: NodeId) -> bool:
        """Whether `node` may become primary: a voter that is not a witness."""
        return node in self.voters and node not in self.witnesses

    def with_non_voter(self, node: NodeId) -> Membership:
        """This membership plus a discovered peer; a voter or ourselves is left as it is."""
        if node in self.voters or node in self.non_voters or node == self.self_id:
            return self
        return replace(self, non_voters=self.non_voters | {node})

    def rank(self, node: NodeId) -> int:
        """A stable position of `node` among the voters (by id), to break ties between equals."""
        return sorted(self.voters).index(node) if node in self.voters else len(self.voters)
