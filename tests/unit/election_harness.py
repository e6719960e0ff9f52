"""A synchronous in-memory cluster of election cores for unit tests: manual time, no sockets."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from ha_voice.cluster.election import Election
from ha_voice.cluster.events import Effects, Event, HardState, MessageReceived, Tick
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import Message, NodeId
from ha_voice.cluster.timers import ElectionTimers, timers_for

WIRED = timers_for("wired")


class Harness:
    """Nodes that hand messages to each other at once, unless a link is blocked."""

    def __init__(
        self,
        ids: list[NodeId],
        *,
        witness: NodeId | None = None,
        two_node: bool = False,
        timers: ElectionTimers = WIRED,
        priorities: dict[NodeId, int] | None = None,
        preempt: bool = False,
    ) -> None:
        self.now = 0.0
        self.timers = timers
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        # Messages for which this returns True are lost, whatever the link.
        self.drop: Callable[[Message], bool] = lambda message: False
        self.inbox: deque[tuple[NodeId, Message]] = deque()
        self.log: list[tuple[NodeId, Effects]] = []
        everyone = [*ids, witness] if witness else ids
        self.nodes = {
            node: Election(
                membership=Membership.from_config(node, ids, witness, two_node=two_node),
                timers=timers,
                priority=(priorities or {}).get(node, 100),
                hard_state=HardState(),
                rng=random.Random(node),
                now=0.0,
                preempt=preempt,
            )
            for node in everyone
        }

    def step(self, node: NodeId, event: Event) -> Effects:
        effects = self.nodes[node].step(event)
        self.log.append((node, effects))
        for out in effects.send:
            self.inbox.append((out.to, out.message))
        return effects

    def deliver(self) -> None:
        while self.inbox:
            to, message = self.inbox.popleft()
            if (message.sender, to) not in self.blocked and not self.drop(message):
                self.step(to, MessageReceived(message, self.now))

    def tick_all(self, now: float) -> None:
        self.now = now
        for node in self.nodes:
            self.step(node, Tick(now))
        self.deliver()

    def run(self, until: float, dt: float = 0.005) -> None:
        t = self.now
        while t < until:
            t = round(t + dt, 6)
            self.tick_all(t)

    def isolate(self, node: NodeId) -> None:
        for other in self.nodes:
            if other != node:
                self.blocked |= {(node, other), (other, node)}

    def primaries(self) -> list[NodeId]:
        return [n for n, e in self.nodes.items() if e.lease_valid(self.now)]

    def only_primary(self) -> NodeId:
        primaries = self.primaries()
        assert len(primaries) == 1, primaries
        return primaries[0]
