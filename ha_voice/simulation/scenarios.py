"""The classic failover cases, scripted on the simulator, each producing a readable transcript.

The transcripts under tests/sim/scenarios/ are these functions' output, checked in; a change
in election behaviour shows up as a diff to review (`HA_VOICE_REGEN=1 pytest tests/sim`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ha_voice.cluster.protocol import NodeId
from ha_voice.simulation.checker import Checker, Trace
from ha_voice.simulation.engine import ClusterSpec, SimCluster

__all__ = ["SCENARIOS", "Scenario", "run_scenario"]

_SEED = 7


@dataclass(frozen=True)
class Scenario:
    name: str
    spec: ClusterSpec
    summary: str
    script: Callable[[SimCluster, Trace], None]


def _primary(cluster: SimCluster) -> NodeId:
    primaries = cluster.primaries()
    if len(primaries) != 1:
        raise RuntimeError(f"expected one primary at t={cluster.now:.3f}, found {primaries}")
    return primaries[0]


def _act(cluster: SimCluster, trace: Trace, at: float, text: str) -> None:
    cluster.run_until(at)
    trace.note(f"** {text}")


def primary_crash(cluster: SimCluster, trace: Trace) -> None:
    cluster.run_until(2.0)
    old = _primary(cluster)
    _act(cluster, trace, 2.0, f"SIGKILL {old}")
    cluster.crash(old)
    cluster.run_until(4.0)
    _act(cluster, trace, 4.0, f"restart {old}")
    cluster.start(old)
    cluster.run_until(6.0)


def paused_primary_returns(cluster: SimCluster, trace: Trace) -> None:
    cluster.run_until(2.0)
    old = _primary(cluster)
    _act(cluster, trace, 2.0, f"SIGSTOP {old} for 1.5 s (three election timeouts)")
    cluster.pause(old)
    _act(cluster, trace, 3.5, f"SIGCONT {old}")
    cluster.resume(old)
    cluster.run_until(5.0)


def partition_heals(cluster: SimCluster, trace: Trace) -> None:
    cluster.run_until(2.0)
    old = _primary(cluster)
    others = [n for n in cluster.nodes if n != old]
    minority, majority = {old, others[0]}, set(others[1:])
    _act(cluster, trace, 2.0, f"partition {sorted(minority)} | {sorted(majority)}")
    cluster.network.partition(minority, majority)
    _act(cluster, trace, 4.0, "heal the partition")
    cluster.network.heal()
    cluster.run_until(6.0)


def graceful_transfer(cluster: SimCluster, trace: Trace) -> None:
    cluster.run_until(2.0)
    old = _primary(cluster)
    _act(cluster, trace, 2.0, f"ha-voice step-down on {old}")
    cluster.request_step_down(old)
    cluster.run_until(3.0)
    _act(cluster, trace, 3.0, f"SIGTERM {_primary(cluster)} (hand over, then exit)")
    leaving = _primary(cluster)
    cluster.request_shutdown(leaving)
    cluster.run_until(3.3)
    cluster.crash(leaving)
    cluster.run_until(5.0)


def witness_decides(cluster: SimCluster, trace: Trace) -> None:
    cluster.run_until(2.0)
    old = _primary(cluster)
    other = next(n for n in cluster.nodes if n not in (old, "w"))
    _act(cluster, trace, 2.0, f"cut {old} <-> {other}; both still reach the witness")
    cluster.network.partition({old}, {other})
    _act(cluster, trace, 4.0, f"SIGKILL {old}: now the witness's vote elects {other}")
    cluster.crash(old)
    cluster.run_until(6.0)


def two_node_partition(cluster: SimCluster, trace: Trace) -> None:
    cluster.run_until(2.0)
    _act(cluster, trace, 2.0, "cut n1 <-> n2 (two_node: each may lead alone: split brain)")
    cluster.network.partition({"n1"}, {"n2"})
    _act(cluster, trace, 4.0, "heal: the lower term steps down at the first heartbeat")
    cluster.network.heal()
    cluster.run_until(5.0)


def crash_alone(cluster: SimCluster, trace: Trace) -> None:
    cluster.run_until(2.0)
    old = _primary(cluster)
    _act(cluster, trace, 2.0, f"SIGKILL {old}: the survivors' own probes find its ports closed")
    cluster.crash(old)
    cluster.run_until(3.0)


def crash_behind_a_partition(cluster: SimCluster, trace: Trace) -> None:
    cluster.run_until(2.0)
    old = _primary(cluster)
    others = {n for n in cluster.nodes if n != old}
    _act(cluster, trace, 2.0, f"cut {old} off, then SIGKILL it: no probe reaches it")
    cluster.network.partition({old}, others)
    cluster.crash(old)
    cluster.run_until(3.5)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "primary-crash",
            ClusterSpec(3),
            "SIGKILL the primary; it returns as backup",
            primary_crash,
        ),
        Scenario(
            "paused-primary-returns",
            ClusterSpec(3),
            "a primary paused past its lease finds it expired and follows",
            paused_primary_returns,
        ),
        Scenario(
            "partition-heals",
            ClusterSpec(5),
            "the primary's minority side steps down, the majority elects, then they merge",
            partition_heals,
        ),
        Scenario(
            "graceful-transfer",
            ClusterSpec(3, priorities=(150, 100, 120)),
            "step-down and SIGTERM hand over to the best backup without an election timeout",
            graceful_transfer,
        ),
        Scenario(
            "witness-decides",
            ClusterSpec(2, witness=True),
            "two nodes that cannot see each other: the witness keeps one primary",
            witness_decides,
        ),
        Scenario(
            "two-node-crash",
            ClusterSpec(2, two_node=True),
            "two_node mode: the survivor's own evidence spares it the silent round",
            crash_alone,
        ),
        Scenario(
            "witness-crash",
            ClusterSpec(2, witness=True),
            "SIGKILL the primary of two nodes and a witness: the witness probes for itself",
            crash_alone,
        ),
        Scenario(
            "crash-behind-partition",
            ClusterSpec(3),
            "a primary cut off and then killed leaves no evidence: the lease runs its course",
            crash_behind_a_partition,
        ),
        Scenario(
            "two-node-partition",
            ClusterSpec(2, two_node=True),
            "two_node mode under partition: both lead until it heals (the documented risk)",
            two_node_partition,
        ),
    )
}


def _role_name(cluster: SimCluster, node: NodeId) -> str:
    role = cluster.role(node)
    return role.value if role is not None else "down"


def run_scenario(name: str, seed: int = _SEED) -> list[str]:
    """The transcript of scenario `name`: a header, every role change, and the checks."""
    scenario = SCENARIOS[name]
    cluster = SimCluster(scenario.spec, seed)
    trace = Trace(cluster, keep_all=True)
    checker = Checker(cluster)
    cluster.start_all()
    scenario.script(cluster, trace)
    roles = ", ".join(f"{n}={_role_name(cluster, n)}" for n in cluster.nodes)
    return [
        f"# {scenario.name}: {scenario.summary}",
        f"# cluster {scenario.spec.name}, {scenario.spec.profile} timers, seed {seed}",
        *trace.lines,
        f"# end t={cluster.now:.3f}: {roles}",
        f"# safety violations: {len(checker.violations)}"
        + (f"; split-brain instants (two_node): {checker.split_brain_instants}"),
    ]
