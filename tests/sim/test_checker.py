"""The checker is not vacuous: cores broken on purpose are caught."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ha_voice.cluster.durability import Durability
from ha_voice.cluster.election import Election
from ha_voice.cluster.replication import Changes, Replication
from ha_voice.errors import LocalError
from ha_voice.simulation import engine
from ha_voice.simulation.checker import Checker
from ha_voice.simulation.engine import ClusterSpec, SimCluster
from ha_voice.simulation.schedules import run_hostile


def _overlaps(cluster: SimCluster, checker: Checker) -> list[str]:
    return [v for v in checker.violations if "two primaries with valid leases" in v]


def _cut_primary_from_one_backup(cluster: SimCluster) -> SimCluster:
    checker = Checker(cluster)
    cluster.start_all()
    cluster.run_until(2.0)
    (primary,) = cluster.primaries()
    victim = next(n for n in cluster.nodes if n != primary)
    # The other backup still hears the primary and must refuse to help the victim take over.
    cluster.network.partition({primary}, {victim})
    cluster.run_until(5.0)
    cluster.checker = checker  # type: ignore[attr-defined]
    return cluster


def test_a_correct_core_keeps_its_primary_when_one_backup_is_cut_off() -> None:
    cluster = _cut_primary_from_one_backup(SimCluster(ClusterSpec(3), 3))
    assert cluster.checker.violations == []  # type: ignore[attr-defined]


def test_without_stickiness_a_cut_off_backup_makes_a_second_primary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Forgetful(Election):
        def _sticky(self, now: float) -> bool:
            return False

    monkeypatch.setattr(engine, "Election", Forgetful)
    cluster = _cut_primary_from_one_backup(SimCluster(ClusterSpec(3), 3))
    assert _overlaps(cluster, cluster.checker)  # type: ignore[attr-defined]


def test_a_lease_longer_than_the_refusal_window_is_caught() -> None:
    spec = ClusterSpec(3)
    timers = spec.timers()
    unsafe = replace(timers, lease_timeout_s=timers.lease_timeout_s / 2)  # valid shape...
    object.__setattr__(unsafe, "lease_timeout_s", 3 * timers.election_timeout_s)  # ...then not
    cluster = SimCluster(spec, 11, timers=unsafe)
    checker = Checker(cluster)
    cluster.start_all()
    cluster.run_until(2.0)
    (primary,) = cluster.primaries()
    cluster.network.partition({primary}, set(cluster.nodes) - {primary})
    cluster.run_until(4.0)
    assert _overlaps(cluster, checker)


def test_double_voting_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    class Promiscuous(Election):
        def _answer_vote(self, msg, now, out):  # type: ignore[no-untyped-def]
            self.voted_for = None
            super()._answer_vote(msg, now, out)

    monkeypatch.setattr(engine, "Election", Promiscuous)
    found: list[str] = []
    for seed in range(40):
        try:
            found += run_hostile(ClusterSpec(5), seed).safety
        except LocalError as exc:  # a primary that hears another primary of its term
            found.append(str(exc))
        if found:
            break
    assert any("voted twice" in v or "two primaries" in v for v in found)


def _journal_violations(result_violations: list[str]) -> list[str]:
    markers = ("committed", "applied", "lacks")
    return [v for v in result_violations if any(m in v for m in markers)]


def test_committing_without_a_quorum_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A primary that counts only itself commits entries a new primary never saw."""
    from ha_voice.cluster.membership import Membership

    monkeypatch.setattr(Membership, "is_quorum", lambda self, nodes: True)
    found = []
    for seed in range(10):
        try:
            result = run_hostile(ClusterSpec(3), seed)
        except LocalError as exc:  # a follower told to drop a committed entry refuses loudly
            found.append(str(exc))
            continue
        found += _journal_violations(result.safety)
    assert found


def test_forgetting_the_journal_on_a_crash_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that loses its journal when it crashes may elect a primary without it."""
    monkeypatch.setattr(engine, "apply_write", lambda log, write: None)
    found = []
    for seed in range(10):
        try:
            result = run_hostile(ClusterSpec(3), seed)
        except LocalError as exc:
            found.append(str(exc))
            continue
        found += _journal_violations(result.safety)
    assert found


# --- the shell's send gate (cluster/durability.py), with a slow disk so crashes meet writes --


def _slow_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SimCluster, "_disk_time", lambda self: self._disk_rng.uniform(0.02, 0.08))


def _hostile_findings(spec: ClusterSpec, seeds: range, pick: list[str]) -> list[str]:
    found: list[str] = []
    for seed in seeds:
        try:
            result = run_hostile(spec, seed)
        except LocalError as exc:  # a follower told to drop a committed entry refuses loudly
            found.append(str(exc))
            continue
        found += [v for v in result.safety if any(marker in v for marker in pick)]
        if found:
            break
    return found


def test_the_real_gate_survives_a_slow_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_disk(monkeypatch)
    assert _hostile_findings(ClusterSpec(3), range(20), ["t="]) == []


def test_acking_entries_before_they_are_on_disk_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """An AppendAck that leaves before its write lets a crash lose a committed entry."""
    _slow_disk(monkeypatch)
    monkeypatch.setattr(Durability, "_needs", lambda self, out: self._hard_state_at)
    # Since the simulator models probes for evidence of death, seed 248 is the first.
    assert _hostile_findings(ClusterSpec(3), range(300), ["committed", "applied", "lacks"])


def test_a_primary_counting_entries_not_on_its_disk_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With its own unwritten copy counted, one backup's ack commits what a crash loses."""
    _slow_disk(monkeypatch)
    real = Replication._advance_commit

    def eager(self: Replication, node_id: str, ch: Changes) -> bool:
        self.stable = self.log.last.index
        return real(self, node_id, ch)

    monkeypatch.setattr(Replication, "_advance_commit", eager)
    # Rare: since protocol 3 (a restarted node is re-admitted by challenge) it takes up to
    # ~200 hostile schedules to meet it.
    assert _hostile_findings(ClusterSpec(3), range(200), ["committed", "applied", "lacks"])


def test_voting_before_the_vote_is_on_disk_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vote that leaves before it is durable is forgotten by a crash and given again."""
    _slow_disk(monkeypatch)
    monkeypatch.setattr(Durability, "_needs", lambda self, out: 0)
    # Since the simulator models probes for evidence of death, seed 113 is the first.
    assert _hostile_findings(ClusterSpec(5), range(130), ["voted twice", "two primaries"])
