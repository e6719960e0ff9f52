"""Seeded schedules: a hostile nemesis, a lossy-but-healthy run, and failover measurements.

`run_hostile` throws crashes, restarts, pauses longer than the election timeout, symmetric and
one-way partitions, loss, duplication, corruption, delay spikes, robot outages, step-downs and
graceful restarts at a cluster, then stops the faults and checks that a primary appears within
`liveness_bound_s` and stays. `run_stability` runs a healthy cluster on a lossy network and
checks that the first primary is never replaced. Every run is a pure function of its seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ha_voice.cluster.events import Compact, Propose, Role
from ha_voice.cluster.protocol import EntryKind, NodeId
from ha_voice.cluster.timers import ElectionTimers
from ha_voice.simulation.checker import Checker, Trace, liveness_bound_s
from ha_voice.simulation.engine import ClusterSpec, SimCluster
from ha_voice.simulation.network import LinkConditions

__all__ = [
    "CONFIGURATIONS",
    "Measurement",
    "ScheduleResult",
    "measure_crash_failover",
    "measure_transfer",
    "run_hostile",
    "run_stability",
]

# The configurations every schedule kind runs against.
CONFIGURATIONS: tuple[ClusterSpec, ...] = (
    ClusterSpec(2),
    ClusterSpec(2, two_node=True),
    ClusterSpec(2, witness=True),
    ClusterSpec(3),
    ClusterSpec(3, witness=True),
    ClusterSpec(5),
    ClusterSpec(5, witness=True),
)

# Wired LAN: 0.2-2 ms one way. Stability and speed runs use this unless told otherwise.
QUIET = LinkConditions()
_SETTLE_S = 3.0


@dataclass
class ScheduleResult:
    """What one seeded run found; `trace` explains it."""

    spec: str
    seed: int
    kind: str
    faults: int = 0
    safety: list[str] = field(default_factory=list)
    liveness: list[str] = field(default_factory=list)
    split_brain_instants: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.safety and not self.liveness

    def replay_hint(self) -> str:
        return f"ha-voice simulate --spec {self.spec} --kind {self.kind} --seed {self.seed} --trace"


class _Nemesis:
    """Picks and applies one fault at a time; `heal_all` undoes every one of them."""

    def __init__(self, cluster: SimCluster, trace: Trace, rng: random.Random) -> None:
        self.cluster = cluster
        self.trace = trace
        self.rng = rng
        self.faults = 0
        self.crashed: set[NodeId] = set()
        self.draining: set[NodeId] = set()
        timers = cluster.timers
        self._e = timers.election_timeout_s
        self._faults: list[tuple[float, Callable[[], None]]] = [
            (3, self.crash),
            (3, self.restart),
            (2, self.pause),
            (2, self.partition),
            (1, self.isolate_primary),
            (2, self.degrade_network),
            (1, self.robot_outage),
            (1, self.step_down),
            (1, self.graceful_restart),
        ]

    def strike(self) -> None:
        weights = [w for w, _ in self._faults]
        (_, fault) = self.rng.choices(self._faults, weights=weights)[0]
        fault()

    def _later(self, delay: float, fn: Callable[..., None], *args: object) -> None:
        self.cluster.at(self.cluster.now + delay, fn, *args)

    def _note(self, text: str) -> None:
        self.faults += 1
        self.trace.note(f"nemesis: {text}")

    def _up(self) -> list[NodeId]:
        return [n for n, node in self.cluster.nodes.items() if node.up]

    def _pick(self, prefer_primary: float = 0.5) -> NodeId | None:
        up = self._up()
        primaries = [n for n in up if self.cluster.role(n) is Role.PRIMARY]
        if primaries and self.rng.random() < prefer_primary:
            return primaries[0]
        return self.rng.choice(up) if up else None

    def crash(self) -> None:
        node = self._pick()
        if node is not None:
            self._note(f"SIGKILL {node}")
            self.cluster.crash(node)
            self.crashed.add(node)

    def restart(self) -> None:
        if self.crashed:
            node = self.rng.choice(sorted(self.crashed))
            self._note(f"restart {node}")
            self.crashed.discard(node)
            self.cluster.start(node)

    def pause(self) -> None:
        node = self._pick()
        if node is None:
            return
        duration = self.rng.uniform(0.05, 3 * self._e)
        self._note(f"SIGSTOP {node} for {duration:.3f}s")
        self.cluster.pause(node)
        self._later(duration, self.cluster.resume, node)

    def partition(self) -> None:
        nodes = list(self.cluster.nodes)
        self.rng.shuffle(nodes)
        cut = self.rng.randrange(1, len(nodes))
        left, right = set(nodes[:cut]), set(nodes[cut:])
        one_way = self.rng.random() < 0.3
        duration = self.rng.uniform(0.2, 4.0)
        arrow = "->" if one_way else "<->"
        self._note(f"partition {sorted(left)} {arrow} {sorted(right)} for {duration:.3f}s")
        self.cluster.network.partition(left, right, one_way=one_way)
        self._later(duration, self._heal_partition)

    def isolate_primary(self) -> None:
        node = self._pick(prefer_primary=1.0)
        if node is None:
            return
        duration = self.rng.uniform(0.2, 4.0)
        self._note(f"isolate {node} for {duration:.3f}s")
        self.cluster.network.partition({node}, set(self.cluster.nodes) - {node})
        self._later(duration, self._heal_partition)

    def _heal_partition(self) -> None:
        self.trace.note("nemesis: heal partition")
        self.cluster.network.heal()

    def degrade_network(self) -> None:
        c = LinkConditions(
            loss=self.rng.uniform(0, 0.3),
            duplicate=self.rng.uniform(0, 0.1),
            corrupt=self.rng.uniform(0, 0.05),
            spike=self.rng.uniform(0, 0.2),
            spike_max_s=self.rng.uniform(0.01, 0.3),
        )
        duration = self.rng.uniform(0.5, 5.0)
        self._note(
            f"network loss {c.loss:.2f} dup {c.duplicate:.2f} corrupt {c.corrupt:.2f} "
            f"spikes {c.spike:.2f}x{c.spike_max_s:.3f}s for {duration:.3f}s"
        )
        self.cluster.network.conditions = c
        self._later(duration, self._restore_network)

    def _restore_network(self) -> None:
        self.trace.note("nemesis: network restored")
        self.cluster.network.conditions = QUIET

    def robot_outage(self) -> None:
        node = self._pick()
        if node is None:
            return
        duration = self.rng.uniform(0.2, 3.0)
        self._note(f"robot unreachable from {node} for {duration:.3f}s")
        self.cluster.set_robot_reachable(node, False)
        self._later(duration, self.cluster.set_robot_reachable, node, True)

    def step_down(self) -> None:
        node = self._pick(prefer_primary=1.0)
        if node is not None and self.cluster.role(node) is Role.PRIMARY:
            self._note(f"step-down {node}")
            self.cluster.request_step_down(node)

    def graceful_restart(self) -> None:
        node = self._pick()
        if node is None:
            return
        self._note(f"SIGTERM {node}, restart after drain")
        self.cluster.request_shutdown(node)
        self.draining.add(node)
        self._later(0.3, self._finish_graceful, node)

    def _finish_graceful(self, node: NodeId) -> None:
        if node in self.draining:
            self.draining.discard(node)
            if self.cluster.nodes[node].up:
                self.cluster.crash(node)
                self.cluster.start(node)

    def heal_all(self) -> None:
        self.trace.note("nemesis: faults stop; heal everything")
        cluster = self.cluster
        for node_id in sorted(self.draining):
            self._finish_graceful(node_id)
        cluster.network.heal()
        cluster.network.conditions = QUIET
        for node_id, node in cluster.nodes.items():
            if not node.up:
                cluster.start(node_id)
            elif node.paused:
                cluster.resume(node_id)
            if not node.robot_reachable:
                cluster.set_robot_reachable(node_id, True)
        self.crashed.clear()


def run_hostile(
    spec: ClusterSpec,
    seed: int,
    *,
    fault_window_s: float = 20.0,
    keep_trace: bool = False,
    timers: ElectionTimers | None = None,
) -> ScheduleResult:
    """Faults for `fault_window_s`, then quiet: safety throughout, a primary within the bound."""
    cluster = SimCluster(spec, seed, timers=timers)
    trace = Trace(cluster, keep_all=keep_trace)
    checker = Checker(cluster)
    nemesis = _Nemesis(cluster, trace, random.Random(f"nemesis/{seed}"))
    cluster.start_all()
    workload = _Workload(cluster, random.Random(f"workload/{seed}"))
    workload.start()
    t = nemesis.rng.uniform(0.5, 2.0)
    while t < fault_window_s:
        cluster.run_until(t)
        nemesis.strike()
        t += nemesis.rng.uniform(0.1, 2.0)
    cluster.run_until(fault_window_s)
    # Undo callbacks the nemesis scheduled may still fire later; they only heal what is healed.
    nemesis.heal_all()
    workload.running = False
    healed_at = cluster.now
    bound = liveness_bound_s(cluster.timers, len(cluster.membership("n1").voters), 0.002)
    cluster.run_until(healed_at + 5.0 + bound)
    result = _result(spec, seed, "hostile", cluster, checker, trace, nemesis.faults)
    _judge_liveness(result, checker, healed_at, bound)
    _judge_catch_up(result, cluster)
    return result


def _judge_catch_up(result: ScheduleResult, cluster: SimCluster) -> None:
    """Seconds after healing, every node holds the primary's journal, all of it committed."""
    primaries = [
        n.election for n in cluster.nodes.values() if n.election and n.election.role is Role.PRIMARY
    ]
    if len(primaries) != 1:
        return  # `_judge_liveness` has said so
    leader_log = primaries[0].replication.log
    if leader_log.commit != leader_log.last.index:
        result.liveness.append(f"primary committed {leader_log.commit} of {leader_log.last.index}")
    for node_id, node in cluster.nodes.items():
        assert node.election is not None  # healed: every node is up
        log = node.election.replication.log
        if (log.last, log.commit) != (leader_log.last, leader_log.commit):
            result.liveness.append(
                f"{node_id} holds {log.last} committed {log.commit}, primary "
                f"{leader_log.last} committed {leader_log.commit}"
            )


class _Workload:
    """A client of the journal: proposes an entry to whoever leads every 20-200 ms, and makes
    each node fold its applied entries into a snapshot now and then (retention), so that
    nodes that fall far behind are caught up by snapshot."""

    def __init__(self, cluster: SimCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.sent = 0
        self.running = True

    def start(self) -> None:
        self.cluster.at(self.cluster.now + 0.5, self._next)

    def _next(self) -> None:
        cluster = self.cluster
        if not self.running:
            return
        for node_id, node in cluster.nodes.items():
            election = node.election
            if election is None or node.paused:
                continue
            local = node.local(cluster.now)
            if election.role is Role.PRIMARY:
                self.sent += 1
                data = f"{cluster.seed}:{self.sent}".encode()
                cluster.inject(node_id, Propose(EntryKind.COMMAND, data, local))
            replication = election.replication
            if replication.applied - replication.log.base.index > 40 and self.rng.random() < 0.2:
                upto = replication.applied - 10
                cluster.inject(node_id, Compact(upto, f"upto {upto}".encode(), local))
        cluster.at(cluster.now + self.rng.uniform(0.02, 0.2), self._next)


def _judge_liveness(result: ScheduleResult, checker: Checker, since: float, bound: float) -> None:
    """From some time within `bound` of `since` on, one node must be primary without a break."""
    settled = checker.timeline.settled_since(since)
    if settled is None:
        result.liveness.append(f"no single primary at the end of the run (faults stopped {since})")
    elif settled[0] - since > bound:
        lag = settled[0] - since
        result.liveness.append(f"primary {settled[1]} settled {lag:.3f}s after faults stopped")


def run_stability(
    spec: ClusterSpec,
    seed: int,
    *,
    duration_s: float = 30.0,
    max_loss: float | None = None,
    keep_trace: bool = False,
    timers: ElectionTimers | None = None,
    fixed_loss: bool = False,
) -> ScheduleResult:
    """A healthy cluster on a lossy network: after the first election, no leader change.

    The loss is drawn from [0, max_loss) per seed, or is exactly `max_loss` if `fixed_loss`.
    """
    if max_loss is None:
        max_loss = 0.20 if spec.profile == "wifi" else 0.05
    rng = random.Random(f"stability/{seed}")
    loss = max_loss if fixed_loss else rng.uniform(0.0, max_loss)
    conditions = QUIET.with_(loss=loss)
    cluster = SimCluster(spec, seed, conditions=conditions, timers=timers)
    trace = Trace(cluster, keep_all=keep_trace)
    trace.note(f"loss {loss:.3f} for {duration_s}s")
    checker = Checker(cluster)
    cluster.start_all()
    cluster.run_until(duration_s)
    result = _result(spec, seed, "stability", cluster, checker, trace, 0)
    # Healthy: it has held its lease for one election timeout; the race at boot does not count.
    first = checker.timeline.first_healthy_primary(cluster.timers.election_timeout_s)
    if first is None:
        result.liveness.append("no primary at all")
    else:
        for t, node, old, new, term in checker.timeline.leader_changes_after(first[0]):
            result.liveness.append(f"t={t:.3f}: {node} {old.value}->{new.value} term {term}")
    return result


def _result(
    spec: ClusterSpec,
    seed: int,
    kind: str,
    cluster: SimCluster,
    checker: Checker,
    trace: Trace,
    faults: int,
) -> ScheduleResult:
    dropped: dict[str, int] = {}
    for node in cluster.nodes.values():
        for reason, count in node.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    return ScheduleResult(
        spec=spec.name,
        seed=seed,
        kind=kind,
        faults=faults,
        safety=list(checker.violations),
        split_brain_instants=checker.split_brain_instants,
        dropped=dropped,
        trace=list(trace.lines),
    )


@dataclass(frozen=True)
class Measurement:
    """One failover: from the fault to the new primary's election and to its first lease."""

    elected_s: float
    lease_s: float


def _settled(
    spec: ClusterSpec, seed: int, timers: ElectionTimers | None
) -> tuple[SimCluster, Checker, NodeId]:
    cluster = SimCluster(spec, seed, conditions=QUIET, timers=timers)
    checker = Checker(cluster)
    cluster.start_all()
    rng = random.Random(f"settle/{seed}")
    cluster.run_until(_SETTLE_S + rng.uniform(0, 1))
    primaries = cluster.primaries()
    if len(primaries) != 1:
        raise RuntimeError(f"{spec.name} seed {seed}: no single primary after settling")
    return cluster, checker, primaries[0]


def _measure(cluster: SimCluster, checker: Checker, old: NodeId, t0: float) -> Measurement:
    cluster.run_until(t0 + 10.0)
    elected = next(
        t
        for t, node, _, new, _ in checker.timeline.role_changes
        if t >= t0 and new is Role.PRIMARY and node != old
    )
    lease = next(t for t, nodes in checker.timeline.primaries if t >= t0 and nodes)
    return Measurement(elected - t0, lease - t0)


def measure_crash_failover(
    spec: ClusterSpec, seed: int, timers: ElectionTimers | None = None
) -> Measurement:
    """SIGKILL the primary of a settled cluster; time until a backup leads."""
    cluster, checker, primary = _settled(spec, seed, timers)
    t0 = cluster.now
    cluster.crash(primary)
    return _measure(cluster, checker, primary, t0)


def measure_transfer(
    spec: ClusterSpec, seed: int, timers: ElectionTimers | None = None
) -> Measurement:
    """Ask the primary of a settled cluster to step down; time until the target leads."""
    cluster, checker, primary = _settled(spec, seed, timers)
    t0 = cluster.now
    cluster.request_step_down(primary)
    return _measure(cluster, checker, primary, t0)
