"""Evidence of death in the simulator: a crash fails over within a few heartbeats of virtual
time, and nothing but a crash ever produces evidence (a pause or a partition never does)."""

from __future__ import annotations

import pytest

from ha_voice.cluster.events import BecomePrimary, Effects, Event, LeaderProbed
from ha_voice.simulation.checker import Checker
from ha_voice.simulation.engine import ClusterSpec, SimCluster, SimNode
from ha_voice.simulation.schedules import CONFIGURATIONS, measure_crash_failover

# Every configuration that can survive the loss of its primary (2 nodes alone cannot).
SURVIVABLE = tuple(spec for spec in CONFIGURATIONS if spec != ClusterSpec(2))
SEEDS = range(10)


@pytest.mark.parametrize("spec", SURVIVABLE, ids=lambda s: s.name)
def test_a_crash_fails_over_well_inside_the_election_timeout(spec: ClusterSpec) -> None:
    timers = spec.timers()
    for seed in SEEDS:
        took = measure_crash_failover(spec, seed).lease_s
        # Overdue (1.2 heartbeats) + probe + succession wait + pre-vote, vote, ack: virtual
        # time, so a bound on behaviour, not on a machine's speed.
        assert took < timers.election_timeout_s / 2, (spec.name, seed, took)


class _Evidence:
    """Every `LeaderProbed(gone=True)` stepped, and every takeover's cause."""

    def __init__(self, cluster: SimCluster) -> None:
        self.gone: list[tuple[float, str, str]] = []
        self.causes: list[tuple[float, str, str]] = []
        cluster.observers.append(self._observe)

    def _observe(self, t: float, node: SimNode, event: Event, effects: Effects) -> None:
        if isinstance(event, LeaderProbed) and event.gone:
            self.gone.append((t, node.node_id, event.leader))
        for action in effects.actions:
            if isinstance(action, BecomePrimary):
                self.causes.append((t, node.node_id, action.cause))


def _settled(spec: ClusterSpec, seed: int) -> tuple[SimCluster, Checker, _Evidence, str]:
    cluster = SimCluster(spec, seed)
    checker = Checker(cluster)
    evidence = _Evidence(cluster)
    cluster.start_all()
    cluster.run_until(3.0 + seed * 0.0137)  # the fault lands at a different heartbeat phase
    (primary,) = cluster.primaries()
    return cluster, checker, evidence, primary


@pytest.mark.parametrize("spec", SURVIVABLE, ids=lambda s: s.name)
def test_a_paused_primary_is_never_taken_for_dead(spec: ClusterSpec) -> None:
    for seed in SEEDS:
        cluster, checker, evidence, old = _settled(spec, seed)
        t0 = cluster.now
        cluster.pause(old)
        cluster.run_until(t0 + 1.5)
        cluster.resume(old)
        cluster.run_until(t0 + 3.0)
        assert evidence.gone == [], (spec.name, seed)
        assert checker.violations == [], (spec.name, seed, checker.violations)
        late = [c for c in evidence.causes if c[0] > t0]
        assert late, (spec.name, seed)
        assert {cause for _, _, cause in late} == {"timeout"}, (spec.name, seed, late)
        assert min(t for t, _, _ in late) - t0 > spec.timers().lease_timeout_s


@pytest.mark.parametrize("spec", SURVIVABLE, ids=lambda s: s.name)
def test_a_primary_cut_off_then_killed_leaves_no_evidence(spec: ClusterSpec) -> None:
    for seed in SEEDS:
        cluster, checker, evidence, old = _settled(spec, seed)
        t0 = cluster.now
        cluster.network.partition({old}, set(cluster.nodes) - {old})
        cluster.crash(old)
        cluster.run_until(t0 + 3.0)
        assert evidence.gone == [], (spec.name, seed)
        assert checker.violations == [], (spec.name, seed, checker.violations)
        assert [cause for t, _, cause in evidence.causes if t > t0] == ["timeout"]


@pytest.mark.parametrize("spec", SURVIVABLE, ids=lambda s: s.name)
def test_a_killed_primary_is_replaced_by_evidence(spec: ClusterSpec) -> None:
    for seed in SEEDS:
        cluster, checker, evidence, old = _settled(spec, seed)
        t0 = cluster.now
        cluster.crash(old)
        cluster.run_until(t0 + 1.0)
        assert checker.violations == [], (spec.name, seed, checker.violations)
        assert [cause for t, _, cause in evidence.causes if t > t0] == ["evidence"], (
            spec.name,
            seed,
        )
