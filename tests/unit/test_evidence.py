"""Failover by evidence of death: the core's side (probe, evidence, held pre-votes), no sockets."""

from __future__ import annotations

import itertools

from ha_voice.cluster.election import PROBE_AFTER_HEARTBEATS, PROBE_EVERY_HEARTBEATS
from ha_voice.cluster.events import (
    BecomePrimary,
    Effects,
    Event,
    LeaderProbed,
    MessageReceived,
    ProbeLeader,
    Tick,
)
from ha_voice.cluster.protocol import NodeId, PreVoteRequest, PreVoteResponse
from tests.unit.election_harness import WIRED, Harness

E = WIRED.election_timeout_s
H = WIRED.heartbeat_interval_s


class Probing(Harness):
    """The harness, plus a shell that answers every probe: a process in `dead` is gone (its
    ports refuse), any other (paused, cut off) leaves no evidence."""

    def __init__(self, ids: list[NodeId], **kwargs: object) -> None:
        super().__init__(ids, **kwargs)  # type: ignore[arg-type]
        self.dead: set[NodeId] = set()
        self.stopped: set[NodeId] = set()  # dead or paused: no ticks, no messages
        self.probes: list[tuple[NodeId, NodeId, float]] = []
        self.answer_probes = True

    def step(self, node: NodeId, event: Event) -> Effects:
        effects = super().step(node, event)
        for action in effects.actions:
            if isinstance(action, ProbeLeader):
                self.probes.append((node, action.leader, self.now))
        return effects

    def deliver(self) -> None:
        super().deliver()
        while self.answer_probes and self.probes:
            node, leader, started = self.probes.pop(0)
            self.step(node, LeaderProbed(leader, leader in self.dead, started, self.now))
            super().deliver()

    def tick_all(self, now: float) -> None:
        self.now = now
        for node in self.nodes:
            if node not in self.stopped:
                self.step(node, Tick(now))
        self.deliver()

    def kill(self, node: NodeId) -> None:
        self.dead.add(node)
        self.pause(node)

    def pause(self, node: NodeId) -> None:
        self.stopped.add(node)
        self.isolate(node)

    def primaries(self) -> list[NodeId]:
        """Nodes with a valid lease; a dead process holds none."""
        return [n for n in super().primaries() if n not in self.dead]

    def causes(self) -> list[tuple[NodeId, str]]:
        return [
            (node, action.cause)
            for node, effects in self.log
            for action in effects.actions
            if isinstance(action, BecomePrimary)
        ]


def elected(h: Probing) -> NodeId:
    h.run(2.0)
    return h.only_primary()


def test_a_killed_primary_is_replaced_long_before_the_election_timeout() -> None:
    h = Probing(["n1", "n2", "n3"])
    old = elected(h)
    h.log.clear()
    killed_at = h.now
    h.kill(old)
    h.run(killed_at + 0.2)  # the election timeout alone would take 0.5 s
    new = h.only_primary()
    assert new != old
    assert h.causes() == [(new, "evidence")]


def test_a_paused_primary_goes_through_the_lease_and_is_never_taken_for_dead() -> None:
    h = Probing(["n1", "n2", "n3"])
    old = elected(h)
    h.log.clear()
    paused_at = h.now
    h.pause(old)
    h.run(paused_at + E)
    assert h.primaries() in ([old], [])  # nobody else before the refusal window ends
    assert not [n for n, e in h.nodes.items() if n != old and e.stats.leaders_found_gone]
    assert sum(e.stats.probes_asked for e in h.nodes.values()) > 0
    h.run(paused_at + 1.0)
    new = [n for n in h.primaries() if n != old]
    assert len(new) == 1
    assert h.causes() == [(new[0], "timeout")]


def test_a_backup_asks_for_a_probe_once_the_heartbeat_is_overdue_then_at_a_steady_rate() -> None:
    h = Probing(["n1", "n2", "n3"])
    old = elected(h)
    backup = next(n for n in h.nodes if n != old)
    h.answer_probes = False
    h.pause(old)
    last_heard = h.now
    asked: list[float] = []
    t = h.now
    while t < last_heard + E:
        t = round(t + 0.001, 6)
        h.now = t
        effects = h.step(backup, Tick(t))
        asked += [t for a in effects.actions if isinstance(a, ProbeLeader) and a.leader == old]
    assert asked, "no probe asked"
    assert asked[0] >= last_heard + PROBE_AFTER_HEARTBEATS * H - H  # not before it is late
    gaps = [b - a for a, b in itertools.pairwise(asked)]
    every = PROBE_EVERY_HEARTBEATS * H
    assert all(gap >= every - 1e-9 for gap in gaps)
    assert len(asked) <= E / every


def test_evidence_older_than_a_heartbeat_does_not_count() -> None:
    h = Probing(["n1", "n2", "n3"])
    old = elected(h)
    backup = next(n for n in h.nodes if n != old)
    election = h.nodes[backup]
    started = h.now
    h.run(h.now + H)  # the primary's heartbeat arrives while the probe is out
    h.step(backup, LeaderProbed(old, True, started, h.now))
    assert election.leader == old
    assert election.stats.leaders_found_gone == 0


def test_a_probe_that_finds_the_primary_alive_changes_nothing() -> None:
    h = Probing(["n1", "n2", "n3"])
    old = elected(h)
    backup = next(n for n in h.nodes if n != old)
    deadline = h.nodes[backup].next_deadline()
    h.step(backup, LeaderProbed(old, False, h.now + 0.001, h.now + 0.001))
    assert h.nodes[backup].leader == old
    assert h.nodes[backup].next_deadline() == deadline


def _sent_pre_vote_answers(effects: Effects) -> list[PreVoteResponse]:
    return [o.message for o in effects.send if isinstance(o.message, PreVoteResponse)]


def _held_pre_vote(gone: bool) -> list[PreVoteResponse]:
    h = Probing(["n1", "n2", "n3"])
    old = elected(h)
    voter, candidate = (n for n in h.nodes if n != old)
    h.answer_probes = False
    h.pause(old)
    h.now += 1.1 * H  # a heartbeat late: not yet the voter's own probe time
    e = h.nodes[voter]
    request = PreVoteRequest(candidate, e.term + 1, h.nodes[candidate].log)
    held = h.step(voter, MessageReceived(request, h.now))
    assert _sent_pre_vote_answers(held) == []
    assert [a for a in held.actions if isinstance(a, ProbeLeader)] == [ProbeLeader(old)]
    again = h.step(voter, MessageReceived(request, h.now))  # a retry: still one held, no probe
    assert _sent_pre_vote_answers(again) == []
    assert not again.actions
    answered = h.step(voter, LeaderProbed(old, gone, h.now, h.now + 0.001))
    return _sent_pre_vote_answers(answered)


def test_a_pre_vote_held_for_the_voters_own_probe_is_granted_on_evidence() -> None:
    answers = _held_pre_vote(gone=True)
    assert [a.granted for a in answers] == [True]


def test_a_pre_vote_held_for_the_voters_own_probe_is_refused_without_evidence() -> None:
    answers = _held_pre_vote(gone=False)
    assert [a.granted for a in answers] == [False]


def test_a_pre_vote_while_the_primary_is_on_time_is_refused_at_once() -> None:
    h = Probing(["n1", "n2", "n3"])
    old = elected(h)
    voter, candidate = (n for n in h.nodes if n != old)
    e = h.nodes[voter]
    request = PreVoteRequest(candidate, e.term + 1, h.nodes[candidate].log)
    effects = h.step(voter, MessageReceived(request, h.now))
    assert [a.granted for a in _sent_pre_vote_answers(effects)] == [False]
    assert not [a for a in effects.actions if isinstance(a, ProbeLeader)]


def test_two_node_survivor_with_evidence_does_not_wait_a_silent_round() -> None:
    h = Probing(["n1", "n2"], two_node=True)
    old = elected(h)
    h.log.clear()
    killed_at = h.now
    h.kill(old)
    h.run(killed_at + 0.15)
    new = h.only_primary()
    assert new != old
    assert h.causes() == [(new, "evidence")]


def test_two_node_survivor_of_a_paused_peer_still_waits_out_the_timeout() -> None:
    h = Probing(["n1", "n2"], two_node=True)
    old = elected(h)
    h.log.clear()
    paused_at = h.now
    h.pause(old)
    h.run(paused_at + E)
    assert [n for n in h.primaries() if n != old] == []
    h.run(paused_at + 1.2)
    assert [cause for _, cause in h.causes()] == ["timeout"]


def test_a_witness_brings_its_own_evidence() -> None:
    h = Probing(["n1", "n2"], witness="w")
    old = elected(h)
    h.log.clear()
    killed_at = h.now
    h.kill(old)
    h.run(killed_at + 0.2)
    new = h.only_primary()
    assert new != old
    assert h.causes() == [(new, "evidence")]
    assert h.nodes["w"].stats.leaders_found_gone == 1
