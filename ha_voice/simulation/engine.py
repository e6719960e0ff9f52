"""A deterministic, seeded, virtual-time cluster of election cores on a hostile network.

Each node runs the real `Election` and the real `Codec` (HMAC, replay window), so every byte
the simulation moves is a byte the daemon would move. What is virtual: time (one heap of
events), the network (`network.py`), the disk, and each node's clock, which runs at its own
rate: local = offset + rate × t.

The disk is the daemon's: writes go through the same group commit and send gate
(`cluster/durability.py`), one batch at a time, each taking a drawn time (now and then a stall).
A crash keeps what the disk finished and loses what it had not (a batch on the disk when the
process dies is kept or lost at random), and with it every message that was waiting for it.

A node is up, crashed, or paused. A paused process keeps its clock running but handles
nothing: datagrams and ticks wait in its socket buffer and are handled, in order, when it
resumes — the way a SIGSTOPped daemon behaves.

A probe for evidence of death (`ProbeLeader`) crosses the network like a datagram: only a
crashed node's host answers it (ICMP port unreachable, back across the network), a paused or
cut-off node never does, and the prober hears "not gone" after half a heartbeat interval.

Observers see every step: `(virtual time, node, event, effects)`.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ha_voice.cluster.durability import Batch, Durability
from ha_voice.cluster.election import Election
from ha_voice.cluster.events import (
    Effects,
    Event,
    HardState,
    LeaderProbed,
    LogPersisted,
    MessageReceived,
    Outgoing,
    ProbeLeader,
    RobotReachability,
    Role,
    ShutdownRequested,
    StepDownRequested,
    Tick,
)
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import Codec, DecodeError, LoadReport, NodeId
from ha_voice.cluster.replication import JournalLog, apply_write
from ha_voice.cluster.timers import ElectionTimers, TimerProfile, timers_for
from ha_voice.simulation.network import LinkConditions, Network

__all__ = ["ClusterSpec", "SimCluster", "SimNode"]

_KEY = b"simulated-cluster-key-32-bytes!!"
# How late a tick fires after the deadline asked for: the event loop's scheduling slack.
_TICK_SLACK_S = 0.001

Observer = Callable[[float, "SimNode", Event, Effects], None]
SendObserver = Callable[[float, "SimNode", Outgoing], None]


@dataclass(frozen=True)
class ClusterSpec:
    """The shape of a simulated cluster."""

    nodes: int
    witness: bool = False
    two_node: bool = False
    profile: TimerProfile = "wired"
    priorities: tuple[int, ...] = ()
    preempt: bool = False

    @property
    def name(self) -> str:
        parts = [f"{self.nodes}n"]
        if self.witness:
            parts.append("witness")
        if self.two_node:
            parts.append("two_node")
        if self.profile != "wired":
            parts.append(self.profile)
        return "+".join(parts)

    @classmethod
    def from_name(cls, name: str) -> ClusterSpec:
        """The spec whose `name` is `name`, e.g. "3n+witness" or "2n+two_node+wifi"."""
        head, *flags = name.split("+")
        unknown = set(flags) - {"witness", "two_node", "wifi"}
        if not head.endswith("n") or not head[:-1].isdigit() or unknown:
            raise ValueError(f"bad cluster spec {name!r}: expected 3n, 3n+witness, 2n+two_node…")
        return cls(
            int(head[:-1]),
            witness="witness" in flags,
            two_node="two_node" in flags,
            profile="wifi" if "wifi" in flags else "wired",
        )

    @property
    def node_ids(self) -> list[NodeId]:
        ids = [f"n{i + 1}" for i in range(self.nodes)]
        return [*ids, "w"] if self.witness else ids

    def priority(self, node: NodeId) -> int:
        if node == "w" or not self.priorities:
            return 100
        return self.priorities[int(node[1:]) - 1]

    def timers(self) -> ElectionTimers:
        return timers_for(self.profile)


@dataclass
class _Probe:
    """One probe in flight: answered once, by the refusal or by the timeout."""

    node: SimNode
    boot: int
    leader: NodeId
    started: float  # the prober's local clock
    answered: bool = False


@dataclass
class SimNode:
    """One simulated process: its clock, its disk and, while up, its election core."""

    node_id: NodeId
    rate: float
    offset: float
    hard: HardState = field(default_factory=HardState)
    journal: JournalLog = field(default_factory=JournalLog)  # what its disk holds
    boots: int = 0
    election: Election | None = None
    codec: Codec | None = None
    paused: bool = False
    buffered: list[tuple[str, Any]] = field(default_factory=list)
    robot_reachable: bool = True
    tick_token: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    durability: Durability = field(default_factory=Durability)
    on_disk: Batch | None = None  # the batch being written
    written: list[Batch] = field(default_factory=list)  # finished while paused

    def local(self, t: float) -> float:
        return self.offset + self.rate * t

    def virtual(self, local: float) -> float:
        return (local - self.offset) / self.rate

    @property
    def up(self) -> bool:
        return self.election is not None

    def valid_primary(self, t: float) -> bool:
        """Up (or paused) and primary with an unexpired lease at virtual time t."""
        return self.election is not None and self.election.lease_valid(self.local(t))


class SimCluster:
    """Runs a `ClusterSpec` under a seed; nemesis methods inject faults."""

    def __init__(
        self,
        spec: ClusterSpec,
        seed: int,
        *,
        conditions: LinkConditions | None = None,
        drift: float | None = None,
        timers: ElectionTimers | None = None,
    ) -> None:
        self.spec = spec
        self.seed = seed
        self.timers = timers or spec.timers()
        self.rng = random.Random(seed)
        self.now = 0.0
        self.network = Network(random.Random(self.rng.random()), conditions or LinkConditions())
        self.observers: list[Observer] = []
        # Called with every message as it leaves a node (after the writes it waits for).
        self.on_send: list[SendObserver] = []
        self._disk_rng = random.Random(f"{seed}/disk")
        # Called with the virtual time after a process is started, killed or resumed.
        self.on_process_change: list[Callable[[float], None]] = []
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        drift = self.timers.clock_drift if drift is None else drift
        self.nodes = {
            node: SimNode(node, self._pick_rate(drift), self.rng.uniform(0, 1000))
            for node in spec.node_ids
        }

    def _pick_rate(self, drift: float) -> float:
        # Half the nodes sit at the edges of the allowed drift: the worst case is the point.
        if self.rng.random() < 0.5:
            return 1 + self.rng.choice((-drift, drift))
        return 1 + self.rng.uniform(-drift, drift)

    # --- the event loop --------------------------------------------------------------------

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` at virtual time `t`."""
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, fn, args))

    def run_until(self, t: float) -> None:
        while self._queue and self._queue[0][0] <= t:
            when, _, fn, args = heapq.heappop(self._queue)
            self.now = when
            fn(*args)
        self.now = t

    # --- nodes -----------------------------------------------------------------------------

    def membership(self, node: NodeId) -> Membership:
        spec = self.spec
        peers = [n for n in spec.node_ids if n != "w"]
        return Membership.from_config(
            node,
            peers,
            "w" if spec.witness else None,
            two_node=spec.two_node,
        )

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def start(self, node_id: NodeId) -> None:
        """Boot a node from what its disk holds."""
        node = self.nodes[node_id]
        node.boots += 1
        local = node.local(self.now)
        node.election = Election(
            membership=self.membership(node_id),
            timers=self.timers,
            priority=self.spec.priority(node_id),
            hard_state=node.hard,
            rng=random.Random(f"{self.seed}/{node_id}/{node.boots}"),
            now=local,
            journal=node.journal.copy(),
            preempt=self.spec.preempt,
        )
        nonces = random.Random(f"{self.seed}/{node_id}/{node.boots}/nonces")
        node.codec = Codec(
            cluster="sim",
            cluster_key=_KEY,
            node_id=node_id,
            boot_id=nonces.getrandbits(64),
            takeover_s=self.timers.election_timeout_s,
            nonce=lambda: nonces.getrandbits(64),
        )
        node.paused = False
        node.buffered.clear()
        node.durability = Durability()
        node.written.clear()
        if not node.robot_reachable:
            self._step(node, RobotReachability(False, local))
        self._schedule_tick(node)
        self._process_changed()

    def crash(self, node_id: NodeId) -> None:
        """Kill the process: soft state and buffered input are gone, the disk stays."""
        node = self.nodes[node_id]
        if node.on_disk is not None and self._disk_rng.random() < 0.5:
            self._store(node, node.on_disk)  # the batch on the disk made it, or it did not
        node.on_disk = None
        node.election = None
        node.codec = None
        node.paused = False
        node.buffered.clear()
        node.tick_token += 1
        self._process_changed()

    def pause(self, node_id: NodeId) -> None:
        node = self.nodes[node_id]
        if node.up:
            node.paused = True

    def resume(self, node_id: NodeId) -> None:
        node = self.nodes[node_id]
        if not node.paused:
            return
        node.paused = False
        backlog, node.buffered = node.buffered, []
        written, node.written = node.written, []
        for batch in written:  # the disk finished while we were stopped
            if node.up and not node.paused:
                self._written(node, batch)
        for kind, payload in backlog:
            if node.up and not node.paused:
                self._handle(node, kind, payload)
        if node.up:
            self._tick(node, node.tick_token)
        self._process_changed()

    def _process_changed(self) -> None:
        for callback in self.on_process_change:
            callback(self.now)

    def set_robot_reachable(self, node_id: NodeId, reachable: bool) -> None:
        node = self.nodes[node_id]
        node.robot_reachable = reachable
        self.inject(node_id, RobotReachability(reachable, node.local(self.now)))

    def request_step_down(self, node_id: NodeId, target: NodeId | None = None) -> None:
        node = self.nodes[node_id]
        self.inject(node_id, StepDownRequested(node.local(self.now), target))

    def request_shutdown(self, node_id: NodeId) -> None:
        node = self.nodes[node_id]
        self.inject(node_id, ShutdownRequested(node.local(self.now)))

    def inject(self, node_id: NodeId, event: Event) -> None:
        """Hand an input straight to a node's core, as its shell would (buffered if paused)."""
        node = self.nodes[node_id]
        if not node.up:
            return
        if node.paused:
            node.buffered.append(("event", event))
        else:
            self._step(node, event)

    # --- queries ---------------------------------------------------------------------------

    def role(self, node_id: NodeId) -> Role | None:
        election = self.nodes[node_id].election
        return election.role if election else None

    def primaries(self) -> list[NodeId]:
        """Nodes that are primary with a valid lease right now."""
        return [n for n, node in self.nodes.items() if node.valid_primary(self.now)]

    # --- internals -------------------------------------------------------------------------

    def _step(self, node: SimNode, event: Event) -> None:
        assert node.election is not None
        assert node.codec is not None
        effects = node.election.step(event)
        ready = node.durability.absorb(effects)
        for observer in self.observers:
            observer(self.now, node, event, effects)
        self._transmit(node, ready)
        for action in effects.actions:
            if isinstance(action, ProbeLeader):
                self._probe(node, action.leader)
        self._maybe_write(node)
        self._schedule_tick(node)

    # --- evidence of death -----------------------------------------------------------------

    def _probe(self, node: SimNode, leader: NodeId) -> None:
        probe = _Probe(node, node.boots, leader, node.local(self.now))
        for delay, _ in self.network.transmit(node.node_id, leader, b"probe"):
            self.at(self.now + delay, self._probe_arrives, probe)
        timeout_s = self.timers.heartbeat_interval_s / 2
        self.at(self.now + timeout_s, self._probe_answered, probe, False)

    def _probe_arrives(self, probe: _Probe) -> None:
        if self.nodes[probe.leader].up:
            return  # bound, if paused: the datagram waits in its buffer; no answer
        for delay, _ in self.network.transmit(probe.leader, probe.node.node_id, b"icmp"):
            self.at(self.now + delay, self._probe_answered, probe, True)

    def _probe_answered(self, probe: _Probe, gone: bool) -> None:
        node = probe.node
        if probe.answered or node.boots != probe.boot:
            return
        probe.answered = True
        self.inject(
            node.node_id, LeaderProbed(probe.leader, gone, probe.started, node.local(self.now))
        )

    def _transmit(self, node: SimNode, messages: list[Outgoing]) -> None:
        assert node.codec is not None
        for out in messages:
            for send_observer in self.on_send:
                send_observer(self.now, node, out)
            self._carry(node.node_id, out.to, node.codec.encode(out.to, out.message))

    def _address(self, node_id: NodeId) -> tuple[str, int]:
        """A node's made-up IPv4 address: the codec names peers by address."""
        return (f"10.0.0.{list(self.nodes).index(node_id) + 1}", 7400)

    def _node_at(self, address: tuple[str, int]) -> NodeId:
        return list(self.nodes)[int(address[0].rsplit(".", 1)[1]) - 1]

    def _carry(self, sender: NodeId, to: NodeId, data: bytes) -> None:
        for delay, payload in self.network.transmit(sender, to, data):
            self.at(self.now + delay, self._arrive, to, sender, payload)

    # --- the disk --------------------------------------------------------------------------

    def _disk_time(self) -> float:
        """How long one batch takes: a millisecond or so, now and then a stall."""
        if self._disk_rng.random() < 0.02:
            return self._disk_rng.uniform(0.02, 0.15)
        return self._disk_rng.uniform(0.0002, 0.003)

    def _maybe_write(self, node: SimNode) -> None:
        batch = node.durability.take_batch()
        if batch is not None:
            node.on_disk = batch
            self.at(self.now + self._disk_time(), self._disk_done, node, node.boots, batch)

    def _disk_done(self, node: SimNode, boot: int, batch: Batch) -> None:
        if boot != node.boots or node.on_disk is not batch:
            return  # the process died first (`crash` decided what became of the batch)
        node.on_disk = None
        self._store(node, batch)
        if node.paused:
            node.written.append(batch)
        else:
            self._written(node, batch)

    @staticmethod
    def _store(node: SimNode, batch: Batch) -> None:
        for hard, log in batch.writes:
            if hard is not None:
                node.hard = hard
            if log is not None:
                apply_write(node.journal, log)

    def _written(self, node: SimNode, batch: Batch) -> None:
        """The shell learns that `batch` is durable: held messages leave, the core hears."""
        self._transmit(node, node.durability.written(batch))
        last = batch.last_entry
        if last is not None:
            self._step(node, LogPersisted(last.index, last.term, node.local(self.now)))
        else:
            self._maybe_write(node)

    def _schedule_tick(self, node: SimNode) -> None:
        if node.election is None:
            return
        node.tick_token += 1
        deadline = node.election.next_deadline()
        if deadline == math.inf:
            return
        due = max(node.virtual(deadline), self.now)
        slack = self.rng.uniform(0.0, _TICK_SLACK_S)
        self.at(due + slack, self._tick, node, node.tick_token)

    def _tick(self, node: SimNode, token: int) -> None:
        if token != node.tick_token or not node.up:
            return
        if node.paused:
            node.buffered.append(("tick", None))
            return
        self._step(node, Tick(node.local(self.now)))

    def _arrive(self, node_id: NodeId, sender: NodeId, data: bytes) -> None:
        node = self.nodes[node_id]
        if not node.up:
            return
        if node.paused:
            node.buffered.append(("datagram", (sender, data)))
            return
        self._handle(node, "datagram", (sender, data))

    def _handle(self, node: SimNode, kind: str, payload: Any) -> None:
        if kind == "tick":
            self._step(node, Tick(node.local(self.now)))
        elif kind == "event":
            # Buffered while paused: the shell reads the clock when it finally gets to run.
            self._step(node, replace(payload, now=node.local(self.now)))
        else:
            assert node.codec is not None
            sender, data = payload
            local = node.local(self.now)
            try:
                message = node.codec.decode(data, source=self._address(sender), now=local)
            except DecodeError as exc:
                node.dropped[exc.reason] = node.dropped.get(exc.reason, 0) + 1
                return
            finally:
                for reply, address in node.codec.take_outgoing():
                    self._carry(node.node_id, self._node_at(address), reply)
            if message is not None and not isinstance(message, LoadReport):
                self._step(node, MessageReceived(message, local))
