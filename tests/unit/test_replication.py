"""The replication core, one rule at a time (the simulator checks them together under faults)."""

from __future__ import annotations

import pytest

from ha_voice.cluster.events import LogWrite, Outgoing
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import Append, AppendAck, Entry, EntryKind, LogPosition, Snapshot
from ha_voice.cluster.replication import Changes, JournalLog, Replication, apply_write
from ha_voice.errors import LocalError


def entries(first: int, last: int, term: int) -> list[Entry]:
    return [
        Entry(i, term, EntryKind.COMMAND, f"{i}/{term}".encode()) for i in range(first, last + 1)
    ]


def node(me: str = "n2", log: JournalLog | None = None) -> Replication:
    membership = Membership.from_config(me, ["n1", "n2", "n3"])
    return Replication(membership, log or JournalLog(), retransmit_s=0.05)


def acks(out: list[Outgoing]) -> list[AppendAck]:
    return [o.message for o in out if isinstance(o.message, AppendAck)]


def test_a_follower_refuses_entries_after_a_gap_and_says_where_its_log_ends() -> None:
    follower = node(log=JournalLog(entries=entries(1, 3, 1)))
    out: list[Outgoing] = []
    follower.on_append(
        Append("n1", 2, LogPosition(1, 7), 0, tuple(entries(8, 8, 2))), "n2", out, Changes()
    )
    assert acks(out) == [AppendAck("n2", 2, False, 3)]


def test_a_conflicting_uncommitted_suffix_is_replaced() -> None:
    follower = node(log=JournalLog(entries=entries(1, 5, 1), commit=2))
    out: list[Outgoing] = []
    ch = Changes()
    follower.on_append(
        Append("n1", 2, LogPosition(1, 3), 3, tuple(entries(4, 4, 2))), "n2", out, ch
    )
    assert follower.log.entries == [*entries(1, 3, 1), *entries(4, 4, 2)]
    assert (ch.truncate_from, ch.entries) == (4, entries(4, 4, 2))
    assert [e.index for e in ch.committed] == [3]  # commit: min(primary's 3, last new 4)
    assert acks(out) == [AppendAck("n2", 2, True, 4)]


def test_replacing_a_committed_entry_is_refused_outside_two_node_mode() -> None:
    follower = node(log=JournalLog(entries=entries(1, 5, 1), commit=5))
    with pytest.raises(LocalError):
        follower.on_append(
            Append("n1", 2, LogPosition(1, 3), 5, tuple(entries(4, 4, 2))), "n2", [], Changes()
        )


def test_a_primary_commits_an_older_term_only_through_an_entry_of_its_own() -> None:
    """Raft figure 8: a quorum holding an entry of an earlier term does not commit it."""
    primary = node("n1", JournalLog(entries=entries(1, 2, 1)))
    out: list[Outgoing] = []
    ch = Changes()
    primary.lead(3, "n1", 0.0, out, ch)  # appends its NOOP at index 3
    assert primary.log.commit == 0
    primary.on_ack(AppendAck("n2", 3, True, 2), "n1", 0.01, out, ch)  # n2 holds 1..2 only
    assert primary.log.commit == 0
    primary.on_ack(AppendAck("n2", 3, True, 3), "n1", 0.02, out, ch)  # and now our NOOP
    assert primary.log.commit == 0  # n2 and our own copy, which is not on our disk yet
    primary.persisted(3, 3, "n1", 0.03, out, ch)
    assert primary.log.commit == 3
    assert [e.index for e in ch.committed] == [1, 2, 3]


def test_a_primary_counts_itself_only_for_what_its_disk_holds() -> None:
    """Raft thesis §10.2.1: the primary may send entries before writing them, never count them."""
    primary = node("n1")
    out: list[Outgoing] = []
    ch = Changes()
    primary.lead(1, "n1", 0.0, out, ch)
    entry = primary.propose(EntryKind.COMMAND, b"x", "n1", 0.01, out, ch)
    assert any(isinstance(o.message, Append) and o.message.entries for o in out)  # sent at once
    primary.persisted(entry.index, 1, "n1", 0.02, out, ch)  # our disk: a quorum of one
    assert primary.log.commit == 0
    primary.on_ack(AppendAck("n3", 1, True, entry.index), "n1", 0.03, out, ch)
    assert primary.log.commit == entry.index
    # Without our own write, two acks make the quorum just as well.
    other = node("n1")
    other.lead(1, "n1", 0.0, out, Changes())
    ch = Changes()
    other.on_ack(AppendAck("n2", 1, True, 1), "n1", 0.01, out, ch)
    assert other.log.commit == 0
    other.on_ack(AppendAck("n3", 1, True, 1), "n1", 0.01, out, ch)
    assert other.log.commit == 1


def test_a_write_reported_for_an_entry_replaced_since_counts_for_nothing() -> None:
    follower = node("n1", JournalLog(entries=entries(1, 3, 1)))
    assert follower.stable == 3  # loaded from disk
    ch = Changes()
    follower.on_append(Append("n2", 2, LogPosition(1, 1), 0, tuple(entries(2, 2, 2))), "n1", [], ch)
    assert follower.stable == 1  # 2 and 3 were replaced; the new 2 is not on disk yet
    follower.persisted(3, 1, "n1", 0.0, [], ch)  # the old write of 1..3 finishing late
    assert follower.stable == 1
    follower.persisted(2, 2, "n1", 0.0, [], ch)
    assert follower.stable == 2


def test_a_lost_append_is_sent_again_from_what_the_peer_acknowledged() -> None:
    primary = node("n1")
    out: list[Outgoing] = []
    ch = Changes()
    primary.lead(1, "n1", 0.0, out, ch)
    primary.on_ack(AppendAck("n2", 1, True, 1), "n1", 0.001, out, ch)
    out.clear()
    primary.propose(EntryKind.COMMAND, b"x", "n1", 0.01, out, ch)  # to n2: lost
    out.clear()
    primary.heartbeat("n1", 0.1, out)
    resent = [o.message for o in out if o.to == "n2" and isinstance(o.message, Append)]
    assert [(m.prev.index, [e.index for e in m.entries]) for m in resent] == [(1, [2])]


def test_a_peer_behind_the_snapshot_gets_the_snapshot() -> None:
    log = JournalLog(LogPosition(1, 10), b"state", entries(11, 12, 1), commit=12)
    primary = node("n1", log)
    out: list[Outgoing] = []
    primary.lead(2, "n1", 0.0, out, Changes())
    primary.on_ack(AppendAck("n3", 2, False, 0), "n1", 0.01, out, Changes())
    snapshots = [o.message for o in out if isinstance(o.message, Snapshot) and o.to == "n3"]
    assert snapshots == [Snapshot("n1", 2, LogPosition(1, 10), b"state")]
    behind = node("n3")
    ch = Changes()
    behind.on_snapshot(snapshots[0], "n3", out, ch)
    assert (ch.restore, behind.log.base, behind.applied) == (b"state", LogPosition(1, 10), 10)


def test_a_store_replays_changes_as_the_core_made_them() -> None:
    disk = JournalLog(entries=entries(1, 5, 1), commit=2)
    apply_write(disk, LogWrite(truncate_from=4, entries=tuple(entries(4, 6, 2)), commit=4))
    apply_write(disk, LogWrite(compact_to=(LogPosition(1, 3), b"s"), commit=4))
    assert (disk.base, disk.snapshot, disk.entries, disk.commit) == (
        LogPosition(1, 3),
        b"s",
        entries(4, 6, 2),
        4,
    )
    with pytest.raises(LocalError):
        apply_write(disk, LogWrite(entries=tuple(entries(9, 9, 2))))
