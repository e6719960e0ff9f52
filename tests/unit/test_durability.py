"""The send gate and group commit (cluster/durability.py), one rule at a time."""

from __future__ import annotations

import pytest

from ha_voice.cluster.durability import Durability
from ha_voice.cluster.events import Effects, HardState, LogWrite, Outgoing
from ha_voice.cluster.protocol import (
    Append,
    AppendAck,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatAck,
    LogPosition,
    VoteResponse,
)

BEAT = Outgoing("n2", Heartbeat("n1", 3, 1.0))
BEAT_ACK = Outgoing("n1", HeartbeatAck("n2", 3, 1.0, True))
APPEND_ACK = Outgoing("n1", AppendAck("n2", 3, True, 7))
VOTE = Outgoing("n1", VoteResponse("n2", 4, True))


def entry(index: int, term: int = 3) -> Entry:
    return Entry(index, term, EntryKind.COMMAND, b"x")


def journal(*indices: int) -> LogWrite:
    return LogWrite(entries=tuple(entry(i) for i in indices), commit=0)


def test_with_nothing_on_its_way_to_disk_everything_leaves_at_once() -> None:
    gate = Durability()
    sends = (BEAT, BEAT_ACK, APPEND_ACK, VOTE)
    assert gate.absorb(Effects(send=sends)) == list(sends)
    assert gate.take_batch() is None


def test_heartbeats_and_their_acks_never_wait_for_journal_writes() -> None:
    gate = Durability()
    append = Outgoing("n2", Append("n1", 3, LogPosition(3, 6), 0, (entry(7),)))
    ready = gate.absorb(Effects(log=journal(7), send=(append, BEAT, BEAT_ACK, APPEND_ACK)))
    assert ready == [append, BEAT, BEAT_ACK]
    assert gate.held == 1
    # Later steps' heartbeats leave too while the write is still on the disk.
    batch = gate.take_batch()
    assert gate.absorb(Effects(send=(BEAT, BEAT_ACK))) == [BEAT, BEAT_ACK]
    assert batch is not None
    assert gate.written(batch) == [APPEND_ACK]


def test_an_append_ack_waits_for_every_journal_write_before_it() -> None:
    gate = Durability()
    gate.absorb(Effects(log=journal(7)))
    first = gate.take_batch()
    gate.absorb(Effects(log=journal(8)))
    # This ack speaks of 7 and 8: the first batch alone does not free it.
    assert gate.absorb(Effects(send=(APPEND_ACK,))) == []
    assert first is not None
    assert gate.written(first) == []
    second = gate.take_batch()
    assert second is not None
    assert gate.written(second) == [APPEND_ACK]


def test_every_message_waits_for_a_new_term_or_vote() -> None:
    gate = Durability()
    assert gate.absorb(Effects(persist=HardState(4, "n1"), send=(VOTE, BEAT_ACK))) == []
    gate.absorb(Effects(send=(BEAT,)))  # a later step, same unwritten term
    batch = gate.take_batch()
    assert batch is not None
    assert gate.written(batch) == [VOTE, BEAT_ACK, BEAT]


def test_writes_asked_while_the_disk_is_busy_share_the_next_fsync() -> None:
    gate = Durability()
    gate.absorb(Effects(log=journal(1)))
    first = gate.take_batch()
    assert first is not None
    assert gate.busy
    for index in (2, 3, 4):
        gate.absorb(Effects(log=journal(index)))
    assert gate.take_batch() is None  # one batch on the disk at a time
    gate.written(first)
    group = gate.take_batch()
    assert group is not None
    assert [log.entries[0].index for _, log in group.writes if log] == [2, 3, 4]
    assert group.last_entry == LogPosition(3, 4)


def test_a_batch_reports_the_last_position_it_leaves_on_disk() -> None:
    gate = Durability()
    snapshot = LogWrite(compact_to=(LogPosition(2, 9), b"s"), truncate_from=1, commit=9)
    gate.absorb(Effects(log=journal(5)))
    gate.absorb(Effects(log=snapshot))
    gate.absorb(Effects(persist=HardState(5, None)))
    batch = gate.take_batch()
    assert batch is not None
    assert batch.last_entry == LogPosition(2, 9)
    gate.written(batch)
    gate.absorb(Effects(persist=HardState(6, None)))
    only_hard_state = gate.take_batch()
    assert only_hard_state is not None
    assert only_hard_state.last_entry is None


def test_finishing_a_batch_that_is_not_on_the_disk_is_a_bug() -> None:
    gate = Durability()
    gate.absorb(Effects(log=journal(1)))
    batch = gate.take_batch()
    assert batch is not None
    gate.written(batch)
    with pytest.raises(ValueError, match="not the one"):
        gate.written(batch)
