"""The election core, one rule at a time, on a synchronous in-memory cluster."""

from __future__ import annotations

import math
import random

import pytest

from ha_voice.cluster.election import Election
from ha_voice.cluster.events import (
    BecomePrimary,
    HardState,
    MessageReceived,
    PublishEndpoint,
    Readiness,
    Role,
    RoleChanged,
    Serviceability,
    ShutdownRequested,
    StepDownRefused,
    StepDownRequested,
    StopRobot,
    Tick,
    WithdrawEndpoint,
)
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import (
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatAck,
    LogPosition,
    PreVoteRequest,
    PreVoteResponse,
    Resign,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from ha_voice.cluster.replication import JournalLog
from ha_voice.errors import LocalError
from tests.unit.election_harness import WIRED, Harness

E = WIRED.election_timeout_s
L = WIRED.lease_timeout_s
H = WIRED.heartbeat_interval_s


def lone(
    node: str = "n1",
    peers: tuple[str, ...] = ("n2", "n3"),
    now: float = 0.0,
    journal: JournalLog | None = None,
) -> Election:
    return Election(
        membership=Membership.from_config(node, peers),
        timers=WIRED,
        priority=100,
        hard_state=HardState(),
        rng=random.Random(1),
        now=now,
        journal=journal,
    )


def sent(effects, kind):  # type: ignore[no-untyped-def]
    return [o.message for o in effects.send if isinstance(o.message, kind)]


def settled(ids=("n1", "n2", "n3"), **kw) -> Harness:  # type: ignore[no-untyped-def]
    h = Harness(list(ids), **kw)
    h.run(2.0)
    return h


# --- elections ------------------------------------------------------------------------------


def test_single_node_elects_itself_and_publishes_before_making_the_robot_safe() -> None:
    # The endpoint first (clients reach the new primary while it stops the robot; commands
    # wait for that), so a robot that does not answer never hides the endpoint.
    h = Harness(["n1"])
    h.run(1.5)
    assert h.only_primary() == "n1"
    actions = [a for _, fx in h.log for a in fx.actions]
    kinds = [type(a) for a in actions if isinstance(a, BecomePrimary | PublishEndpoint)]
    assert kinds == [PublishEndpoint, BecomePrimary]


def test_three_nodes_elect_exactly_one_primary_that_the_others_follow() -> None:
    h = settled()
    primary = h.only_primary()
    for node, election in h.nodes.items():
        assert election.leader == primary
        assert election.role is (Role.PRIMARY if node == primary else Role.BACKUP)
        assert election.term == h.nodes[primary].term


def test_no_election_before_the_timeout() -> None:
    h = Harness(["n1", "n2", "n3"])
    h.run(E * 0.9)
    assert h.primaries() == []
    assert all(e.role is Role.BACKUP for e in h.nodes.values())


# --- votes ----------------------------------------------------------------------------------


def test_vote_is_persisted_in_the_same_effects_that_carry_it() -> None:
    voter = lone(now=0.0)
    fx = voter.step(MessageReceived(VoteRequest("n2", 1, LogPosition()), E + 0.01))
    assert fx.persist == HardState(1, "n2")
    assert sent(fx, VoteResponse) == [VoteResponse("n1", 1, True)]


def test_one_vote_per_term() -> None:
    voter = lone()
    voter.step(MessageReceived(VoteRequest("n2", 1), E + 0.01))
    fx = voter.step(MessageReceived(VoteRequest("n3", 1), E + 0.02))
    assert sent(fx, VoteResponse) == [VoteResponse("n1", 1, False)]
    assert fx.persist is None
    assert voter.voted_for == "n2"


def test_a_restarted_voter_keeps_its_vote() -> None:
    voter = lone()
    fx = voter.step(MessageReceived(VoteRequest("n2", 1), E + 0.01))
    assert fx.persist is not None
    restarted = Election(
        membership=voter.membership,
        timers=WIRED,
        priority=100,
        hard_state=fx.persist,
        rng=random.Random(2),
        now=10.0,
    )
    fx = restarted.step(MessageReceived(VoteRequest("n3", 1), 10.0 + E + 0.01))
    assert sent(fx, VoteResponse) == [VoteResponse("n1", 1, False)]


def test_vote_refused_to_a_candidate_with_an_older_journal() -> None:
    entries = [Entry(i, 1 if i < 5 else 2, EntryKind.COMMAND) for i in range(1, 8)]
    voter = lone(journal=JournalLog(entries=entries))
    older = voter.step(MessageReceived(VoteRequest("n2", 3, LogPosition(2, 6)), E + 0.01))
    assert sent(older, VoteResponse) == [VoteResponse("n1", 3, False)]
    newer = voter.step(MessageReceived(VoteRequest("n3", 4, LogPosition(3, 1)), E + 0.02))
    assert sent(newer, VoteResponse) == [VoteResponse("n1", 4, True)]


def test_a_node_refuses_votes_for_an_election_timeout_after_boot() -> None:
    voter = lone(now=100.0)
    early = voter.step(MessageReceived(PreVoteRequest("n2", 1), 100.0 + E / 2))
    assert sent(early, PreVoteResponse) == [PreVoteResponse("n1", 0, False)]
    late = voter.step(MessageReceived(PreVoteRequest("n2", 1), 100.0 + E + 0.001))
    assert sent(late, PreVoteResponse) == [PreVoteResponse("n1", 1, True)]


def test_pre_vote_changes_nobodys_term() -> None:
    voter = lone()
    fx = voter.step(MessageReceived(PreVoteRequest("n2", 5), E + 0.01))
    assert voter.term == 0
    assert fx.persist is None


def test_sticky_backup_refuses_a_plain_vote_without_adopting_its_term() -> None:
    h = settled()
    primary = h.only_primary()
    backup = next(n for n in h.nodes if n != primary)
    election = h.nodes[backup]
    term = election.term
    fx = election.step(MessageReceived(VoteRequest("n9", term + 5), h.now))
    assert sent(fx, VoteResponse) == [VoteResponse(backup, term, False)]
    assert election.term == term
    assert fx.persist is None


def test_a_transfer_vote_passes_stickiness() -> None:
    h = settled()
    primary = h.only_primary()
    backup, other = (n for n in h.nodes if n != primary)
    term = h.nodes[backup].term + 1
    vote = VoteRequest(other, term, h.nodes[other].log, transfer=True)
    fx = h.nodes[backup].step(MessageReceived(vote, h.now))
    assert sent(fx, VoteResponse) == [VoteResponse(backup, term, True)]
    assert fx.persist == HardState(term, other)


# --- terms ----------------------------------------------------------------------------------


def test_a_stale_heartbeat_is_answered_with_our_term() -> None:
    voter = lone()
    voter.step(MessageReceived(Heartbeat("n2", 4, 1.0), 1.0))
    fx = voter.step(MessageReceived(Heartbeat("n3", 2, 7.5), 1.1))
    assert sent(fx, HeartbeatAck) == [HeartbeatAck("n1", 4, 7.5, False, LogPosition())]


def test_a_primary_that_sees_a_newer_term_stops_the_robot_first() -> None:
    h = settled()
    primary = h.only_primary()
    fx = h.nodes[primary].step(MessageReceived(Heartbeat("n9", 9, 0.0), h.now))
    kinds = [type(a) for a in fx.actions]
    assert kinds == [StopRobot, WithdrawEndpoint, RoleChanged]
    assert fx.persist == HardState(9, None)
    assert h.nodes[primary].role is Role.BACKUP


# --- leases ---------------------------------------------------------------------------------


def test_lease_runs_from_the_quorum_th_newest_acknowledged_send_time() -> None:
    h = settled()
    primary = h.only_primary()
    election = h.nodes[primary]
    backup_a, backup_b = (n for n in h.nodes if n != primary)
    h.blocked = {(backup_a, primary), (backup_b, primary)}  # acks lost from here on
    last_acked = max(
        m.sent_at
        for node, fx in h.log
        if node == primary
        for m in sent(fx, Heartbeat)
        if h.log  # every heartbeat before the block was acked at once
    )
    h.run(h.now + 0.1)
    assert election.lease_expiry == pytest.approx(last_acked + L)


def test_primary_without_a_quorum_steps_down_before_the_lease_ends() -> None:
    h = settled()
    primary = h.only_primary()
    expiry = h.nodes[primary].lease_expiry
    h.isolate(primary)
    h.run(expiry - 0.001)
    assert h.nodes[primary].role is Role.PRIMARY
    h.run(expiry + 0.006)
    assert h.nodes[primary].role is Role.BACKUP
    assert h.nodes[primary].stats.lease_renew_failures == 1
    last = next(fx for node, fx in reversed(h.log) if node == primary and fx.actions)
    assert [type(a) for a in last.actions][:2] == [StopRobot, WithdrawEndpoint]
    assert {m.sender for m in sent(last, Resign)} == {primary}


def test_a_paused_primary_steps_down_before_it_sends_anything() -> None:
    h = settled()
    primary = h.only_primary()
    fx = h.nodes[primary].step(Tick(h.now + 5.0))
    assert sent(fx, Heartbeat) == []
    assert isinstance(fx.actions[0], StopRobot)


def test_lease_stays_shorter_than_every_voters_refusal_window() -> None:
    h = settled()
    primary = h.only_primary()
    expiry = h.nodes[primary].lease_expiry
    # Every backup refuses pre-votes until at least the lease has ended.
    for node, election in h.nodes.items():
        if node != primary:
            fx = election.step(MessageReceived(PreVoteRequest("n9", 2), expiry - 1e-6))
            assert sent(fx, PreVoteResponse)[0].granted is False


def test_a_new_primary_that_never_hears_an_ack_gives_up() -> None:
    h = Harness(["n1", "n2", "n3"])
    h.run(0.4)
    # Cut every ack: votes still flow, heartbeat acks do not.
    real_step = h.step

    def drop_acks(node, event):  # type: ignore[no-untyped-def]
        if isinstance(event, MessageReceived) and isinstance(event.message, HeartbeatAck):
            return real_step(node, Tick(event.now))
        return real_step(node, event)

    h.step = drop_acks  # type: ignore[method-assign]
    h.run(1.5)
    won = [a for _, fx in h.log for a in fx.actions if isinstance(a, RoleChanged)]
    assert any(a.new is Role.PRIMARY for a in won)
    assert any(a.old is Role.PRIMARY and "lease expired" in a.reason for a in won)
    assert not any(isinstance(a, BecomePrimary) for _, fx in h.log for a in fx.actions)


# --- succession, transfer, preemption -------------------------------------------------------


def test_heartbeats_rank_backups_by_priority() -> None:
    h = settled(priorities={"n1": 250, "n2": 100, "n3": 200})
    assert h.only_primary() == "n1"
    h.run(h.now + 0.2)
    beats = {
        o.to: o.message.successor_rank
        for node, fx in h.log[-30:]
        if node == "n1"
        for o in fx.send
        if isinstance(o.message, Heartbeat)
    }
    assert beats == {"n3": 0, "n2": 1}


def test_the_first_successor_takes_over_after_a_crash() -> None:
    h = settled(priorities={"n1": 250, "n2": 100, "n3": 200})
    h.isolate("n1")
    h.run(h.now + 2.0)
    assert h.nodes["n3"].role is Role.PRIMARY


def test_step_down_hands_over_to_the_best_backup_without_a_timeout() -> None:
    h = settled(priorities={"n1": 250, "n2": 100, "n3": 200})
    fx = h.step("n1", StepDownRequested(h.now))
    assert [o.to for o in fx.send if isinstance(o.message, TimeoutNow)] == ["n3"]
    assert h.nodes["n1"].lease_valid(h.now) is False
    h.deliver()
    assert h.only_primary() == "n3"
    assert h.nodes["n3"].term == 2


def test_step_down_is_refused_without_a_live_backup() -> None:
    h = Harness(["n1"])
    h.run(1.5)
    fx = h.step("n1", StepDownRequested(h.now))
    assert isinstance(fx.actions[0], StepDownRefused)
    assert h.only_primary() == "n1"
    backup = lone()
    fx = backup.step(StepDownRequested(1.0))
    assert isinstance(fx.actions[0], StepDownRefused)


def test_no_preemption_by_default() -> None:
    h = settled(priorities={"n1": 100, "n2": 100, "n3": 100})
    primary = h.only_primary()
    h.nodes[next(n for n in h.nodes if n != primary)].priority = 250
    h.run(h.now + 30.0, dt=0.02)
    assert h.only_primary() == primary


def test_preemption_waits_for_the_delay_then_hands_over() -> None:
    timers = WIRED.with_(preempt_delay_s=2.0)
    priorities = {"n1": 250, "n2": 100, "n3": 100}
    h = Harness(["n1", "n2", "n3"], timers=timers, priorities=priorities, preempt=True)
    h.isolate("n1")
    h.run(2.0)
    primary = h.only_primary()
    assert primary != "n1"
    h.blocked.clear()  # the preferred node comes back
    h.run(h.now + 1.5)
    assert h.only_primary() == primary
    h.run(h.now + 1.0)
    assert h.only_primary() == "n1"


def test_no_preemption_to_a_node_still_starting_and_the_delay_counts_from_ready() -> None:
    timers = WIRED.with_(preempt_delay_s=2.0)
    priorities = {"n1": 250, "n2": 100, "n3": 100}
    h = Harness(["n1", "n2", "n3"], timers=timers, priorities=priorities, preempt=True)
    h.isolate("n1")
    h.run(2.0)
    primary = h.only_primary()
    h.step("n1", Readiness(False, h.now))  # as a restarted daemon begins
    assert h.nodes["n1"].eligible
    assert not h.nodes["n1"].offers_to_lead
    h.blocked.clear()
    h.run(h.now + 5.0)  # healthy far past the delay, but still starting
    assert h.only_primary() == primary
    assert "n1" not in h.nodes[primary]._followers.succession()
    h.step("n1", Readiness(True, h.now))
    h.run(h.now + 1.5)
    assert h.only_primary() == primary  # the delay runs from readiness
    h.run(h.now + 1.0)
    assert h.only_primary() == "n1"


def test_a_node_still_starting_stands_when_no_primary_is_heard() -> None:
    h = Harness(["n1", "n2", "n3"], preempt=True)
    for node in h.nodes:
        h.step(node, Readiness(False, 0.0))
    h.run(3.0)
    assert h.only_primary() is not None


def test_without_preempt_a_node_still_starting_is_offered_for_a_handover() -> None:
    h = settled()
    primary = h.only_primary()
    for node in h.nodes:
        if node != primary:
            h.step(node, Readiness(False, h.now))
    h.run(h.now + 0.5)
    h.step(primary, StepDownRequested(h.now))
    h.deliver()
    assert h.only_primary() not in (None, primary)


def test_shutdown_of_the_primary_hands_over_and_leaves_it_in_fault() -> None:
    h = settled()
    primary = h.only_primary()
    h.step(primary, ShutdownRequested(h.now))
    h.deliver()
    new = h.only_primary()
    assert new != primary
    assert h.nodes[primary].role is Role.FAULT
    h.run(h.now + 3.0)
    assert h.only_primary() == new


# --- FAULT, witness, two-node ---------------------------------------------------------------


def test_a_node_that_cannot_serve_never_stands_and_comes_back() -> None:
    h = Harness(["n1", "n2", "n3"])
    for node in ("n1", "n2"):
        h.step(node, Serviceability(False, 0.0, "model not loaded"))
    h.run(3.0)
    assert h.only_primary() == "n3"
    assert h.nodes["n1"].role is Role.FAULT
    assert h.nodes["n1"].fault_reason == "model not loaded"
    h.step("n1", Serviceability(True, h.now))
    assert h.nodes["n1"].role is Role.BACKUP


def test_a_witness_votes_but_never_leads() -> None:
    h = Harness(["n1", "n2"], witness="w")
    h.isolate("n2")
    h.run(3.0)
    assert h.only_primary() == "n1"  # n1 + witness make the quorum
    assert h.nodes["w"].role is Role.WITNESS
    h.isolate("n1")
    h.run(h.now + 3.0)
    assert h.primaries() == []
    assert h.nodes["w"].role is Role.WITNESS


def test_two_node_mode_gives_each_node_its_own_terms() -> None:
    h = Harness(["n1", "n2"], two_node=True)
    h.isolate("n1")
    h.run(3.0)
    terms = {n: e.term for n, e in h.nodes.items() if e.role is Role.PRIMARY}
    assert set(terms) == {"n1", "n2"}  # the documented split brain
    assert terms["n1"] % 2 == 0
    assert terms["n2"] % 2 == 1
    h.blocked.clear()
    h.run(h.now + 0.2)
    assert len(h.primaries()) == 1


def test_two_node_mode_obeys_a_peer_that_answers_no() -> None:
    h = settled(("n1", "n2"), two_node=True)
    primary = h.only_primary()
    backup = next(n for n in h.nodes if n != primary)
    h.drop = lambda message: isinstance(message, Heartbeat)  # answers still get through
    h.run(h.now + 2.0)
    assert h.only_primary() == primary
    assert h.nodes[backup].role in (Role.BACKUP, Role.PRE_CANDIDATE)


# --- the machinery --------------------------------------------------------------------------


def test_illegal_role_changes_raise() -> None:
    election = lone()
    with pytest.raises(LocalError, match="backup -> primary"):
        election._become(Role.PRIMARY, 0.0, _out(), "test")


def _out():  # type: ignore[no-untyped-def]
    from ha_voice.cluster.election import _Out

    return _Out()


def test_two_primaries_in_one_term_is_a_bug_that_surfaces() -> None:
    h = settled()
    primary = h.only_primary()
    term = h.nodes[primary].term
    with pytest.raises(LocalError, match="two primaries"):
        h.nodes[primary].step(MessageReceived(Heartbeat("n9", term, 0.0), h.now))


def test_next_deadline_by_role() -> None:
    h = settled()
    primary = h.only_primary()
    assert h.nodes[primary].next_deadline() <= h.now + H
    h.step("n1", Serviceability(False, h.now))
    h.step("n2", Serviceability(False, h.now))
    h.step("n3", Serviceability(False, h.now))
    h.run(h.now + 2.0)
    assert all(e.next_deadline() == math.inf for e in h.nodes.values())


def test_a_term_beyond_any_election_is_not_believed() -> None:
    """A jump of more than MAX_TERM_JUMP is dropped and counted; a large but possible one is
    followed (a node back from a long partition)."""
    from ha_voice.cluster.election import MAX_TERM_JUMP

    election = lone("n2", peers=("n1", "n3"))
    fx = election.step(MessageReceived(Heartbeat("n1", MAX_TERM_JUMP + 1, 1.0), 1.0))
    assert election.term == 0
    assert fx.persist is None
    assert election.stats.implausible_terms == 1
    election.step(MessageReceived(Heartbeat("n1", MAX_TERM_JUMP, 1.1), 1.1))
    assert election.term == MAX_TERM_JUMP
    assert election.leader == "n1"
