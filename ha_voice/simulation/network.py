"""A hostile virtual network: loss, delay, spikes, duplication, corruption, partitions.

Deterministic for a given `random.Random`. Links are directed, so a partition can be
asymmetric: `block(a, b)` stops a→b and leaves b→a alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from ha_voice.cluster.protocol import NodeId

__all__ = ["LinkConditions", "Network"]


@dataclass(frozen=True)
class LinkConditions:
    """How every unblocked link behaves; probabilities are per datagram."""

    loss: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    delay_min_s: float = 0.0002
    delay_max_s: float = 0.002
    # A delay spike (Wi-Fi retries, a full queue) with this probability, up to spike_max_s.
    spike: float = 0.0
    spike_max_s: float = 0.1

    def with_(self, **changes: float) -> LinkConditions:
        return replace(self, **changes)

    @property
    def max_delay_s(self) -> float:
        return max(self.delay_max_s, self.spike_max_s if self.spike > 0 else 0.0)


@dataclass
class Network:
    """Decides, for each datagram, whether and when (and how many times) it arrives."""

    rng: random.Random
    conditions: LinkConditions = field(default_factory=LinkConditions)
    blocked: set[tuple[NodeId, NodeId]] = field(default_factory=set)
    sent: int = 0
    lost: int = 0

    def transmit(self, src: NodeId, dst: NodeId, data: bytes) -> list[tuple[float, bytes]]:
        """The (delay, bytes) deliveries of one datagram: none, one, or a duplicate too."""
        self.sent += 1
        c = self.conditions
        if (src, dst) in self.blocked or self.rng.random() < c.loss:
            self.lost += 1
            return []
        copies = 2 if self.rng.random() < c.duplicate else 1
        deliveries = []
        for _ in range(copies):
            delay = self.rng.uniform(c.delay_min_s, c.delay_max_s)
            if self.rng.random() < c.spike:
                delay += self.rng.uniform(0.0, c.spike_max_s)
            payload = data
            if self.rng.random() < c.corrupt:
                payload = self._flip_a_bit(data)
            deliveries.append((delay, payload))
        return deliveries

    def _flip_a_bit(self, data: bytes) -> bytes:
        position = self.rng.randrange(len(data) * 8)
        flipped = bytearray(data)
        flipped[position // 8] ^= 1 << (position % 8)
        return bytes(flipped)

    def partition(self, *groups: set[NodeId], one_way: bool = False) -> None:
        """Cut every link between different groups (only from earlier to later if one_way)."""
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in group:
                    for b in other:
                        self.blocked.add((a, b))
                        if not one_way:
                            self.blocked.add((b, a))

    def heal(self) -> None:
        self.blocked.clear()

    @property
    def impaired(self) -> bool:
        """Whether anything but plain delay is in force."""
        c = self.conditions
        return bool(self.blocked) or c.loss > 0 or c.spike > 0 or c.corrupt > 0
