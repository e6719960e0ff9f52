"""Who votes, who may lead, and how many make a quorum.

Invariants:
- The member set comes from static configuration only: discovery finds members' addresses,
  never new members, and a message from anyone else is dropped (protocol.py, `not_member`). A
  quorum that could shrink with what a partitioned node happens to see is no quorum, and a
  retired node or a second cluster set up with the same key must not move this one's term.
- A witness votes and acknowledges heartbeats but never leads.
- `two_node` (exactly two voters, no witness) lowers the quorum to one: either node may lead
  alone. That trades safety under partition for availability; see docs/design.md.

Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ha_voice.cluster.protocol import NodeId

__all__ = ["Membership"]


@dataclass(frozen=True)
class Membership:
    """The configured voters (with witnesses among them)."""

    self_id: NodeId
    voters: frozenset[NodeId]
    witnesses: frozenset[NodeId] = frozenset()
    two_node: bool = False

    def __post_init__(self) -> None:
        if not self.witnesses <= self.voters:
            raise ValueError("every witness must be a voter")
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
        """Everyone we send heartbeats to: the voters but ourselves."""
        return self.voters - {self.self_id}

    @property
    def voting_peers(self) -> frozenset[NodeId]:
        """The other voters: whom we ask for votes."""
        return self.voters - {self.self_id}

    def is_quorum(self, nodes: Iterable[NodeId]) -> bool:
        """Whether `nodes` holds a quorum of voters; anyone else in it counts for nothing."""
        return len(self.voters.intersection(nodes)) >= self.quorum

    def can_lead(self, node: NodeId) -> bool:
        """Whether `node` may become primary: a voter that is not a witness."""
        return node in self.voters and node not in self.witnesses

    def rank(self, node: NodeId) -> int:
        """A stable position of `node` among the voters (by id), to break ties between equals."""
        return sorted(self.voters).index(node) if node in self.voters else len(self.voters)
