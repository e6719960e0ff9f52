"""The replicated journal: Raft log replication (§5.3, §5.4, §7) of opaque entries.

The election core owns terms, votes and roles and calls in here; this module owns the log, the
primary's view of each peer's log (`Progress`), the commit index and snapshots.

Invariants:
1. Log matching: a node appends entries only after the entry before them (`Append.prev`)
   matches its own, and drops a conflicting suffix before appending. So two logs that hold an
   entry with the same index and term are identical up to it.
2. An entry is committed when a quorum of voters holds it durably — a backup's ack leaves only
   after the `LogWrite` of that step is on disk (events.py), and the primary counts itself only
   up to `stable`, what its shell reported durable (`persisted`; Raft thesis §10.2.1: it may
   send entries before writing them, never count them before) — and it is of
   the primary's current term; earlier entries commit with it (§5.4.2), which is why a new
   primary starts its term with a NOOP. A committed entry is never dropped; dropping one raises,
   except in two-node mode, whose quorum of one cannot promise it after a split brain
   (`ReplicationStats.diverged` counts those).
3. The commit index never goes back. Committed entries reach the shell exactly once per
   incarnation, in index order (`Changes.committed`), after a snapshot they follow (`restore`).
4. The election's up-to-date check reads `log.last`: a node votes only for a candidate whose
   log is at least as up to date, so a new primary holds every committed entry.
5. A witness keeps each entry's index, term and kind but not its payload: enough to vote and to
   count towards commit, nothing to serve.

Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ha_voice.cluster.events import LogWrite, Outgoing
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import (
    APPEND_BUDGET,
    EMPTY_LOG,
    MAX_ENTRY_BYTES,
    Append,
    AppendAck,
    Entry,
    EntryKind,
    LogPosition,
    NodeId,
    Snapshot,
)
from ha_voice.errors import LocalError

__all__ = [
    "Changes",
    "JournalLog",
    "Progress",
    "Replication",
    "ReplicationStats",
    "apply_write",
]

# Entries a peer may have unacknowledged before the primary waits for it (flow control).
MAX_IN_FLIGHT = 64
_ENTRY_OVERHEAD = 11  # term u64, kind u8, length u16 before each payload in an Append
_NEVER = -math.inf


@dataclass
class JournalLog:
    """The log as one node holds it: a snapshot up to `base`, then `entries`, and `commit`."""

    base: LogPosition = EMPTY_LOG
    snapshot: bytes = b""
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0

    def __post_init__(self) -> None:
        for offset, entry in enumerate(self.entries):
            if entry.index != self.base.index + 1 + offset:
                raise LocalError(f"journal has a gap before index {entry.index}")
        self.commit = max(self.commit, self.base.index)

    @property
    def last(self) -> LogPosition:
        return self.entries[-1].position if self.entries else self.base

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`; None if compacted away or not there."""
        if index == self.base.index:
            return self.base.term
        offset = index - self.base.index - 1
        if 0 <= offset < len(self.entries):
            return self.entries[offset].term
        return None

    def copy(self) -> JournalLog:
        return JournalLog(self.base, self.snapshot, list(self.entries), self.commit)

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.base.index - 1]

    def after(self, index: int, budget: int) -> tuple[Entry, ...]:
        """Entries from `index + 1` on, as many as fit `budget` bytes (always at least one)."""
        out: list[Entry] = []
        used = 0
        for entry in self.entries[index - self.base.index :]:
            used += _ENTRY_OVERHEAD + len(entry.data)
            if out and used > budget:
                break
            out.append(entry)
        return tuple(out)


@dataclass
class Changes:
    """What one step did to the log: what to make durable and what became committed."""

    compact_to: tuple[LogPosition, bytes] | None = None
    truncate_from: int | None = None
    entries: list[Entry] = field(default_factory=list)
    restore: bytes | None = None
    committed: list[Entry] = field(default_factory=list)

    def truncate(self, index: int) -> None:
        self.entries = [e for e in self.entries if e.index < index]
        self.truncate_from = index if self.truncate_from is None else min(self.truncate_from, index)


@dataclass
class Progress:
    """The primary's view of one peer's log."""

    next: int
    match: int = 0
    probing: bool = True  # where the peer's log ends is not known yet
    sent_at: float = -math.inf
    commit_sent: int = 0


@dataclass
class ReplicationStats:
    appended: int = 0
    rejected: int = 0
    snapshots_sent: int = 0
    snapshots_installed: int = 0
    diverged: int = 0


class Replication:
    """One node's journal and, while it leads, its peers' progress."""

    def __init__(
        self,
        membership: Membership,
        log: JournalLog,
        *,
        retransmit_s: float,
        keep_payloads: bool = True,
    ) -> None:
        self.membership = membership
        self.log = log
        self.applied = log.commit  # the shell rebuilds its state up to here from disk
        self.stable = log.last.index  # what this node's disk holds (loaded from it)
        self.stats = ReplicationStats()
        self._retransmit_s = retransmit_s
        self._keep_payloads = keep_payloads
        self._term = 0
        self._progress: dict[NodeId, Progress] = {}

    @property
    def leading(self) -> bool:
        return self._term > 0

    def progress(self, peer: NodeId) -> Progress | None:
        return self._progress.get(peer)

    # --- roles -----------------------------------------------------------------------------

    def lead(
        self, term: int, node_id: NodeId, now: float, out: list[Outgoing], ch: Changes
    ) -> Entry:
        """Start leading `term`: every peer is assumed caught up until it says otherwise; the
        term's first entry (a NOOP)."""
        self._term = term
        start = self.log.last.index + 1
        self._progress = {peer: Progress(next=start) for peer in self.membership.peers}
        return self.propose(EntryKind.NOOP, b"", node_id, now, out, ch)

    def follow(self) -> None:
        self._term = 0
        self._progress = {}

    def persisted(
        self, index: int, term: int, node_id: NodeId, now: float, out: list[Outgoing], ch: Changes
    ) -> None:
        """The disk holds the log up to (`index`, `term`): count it; on the primary, commit."""
        if self.log.term_at(index) != term:
            return  # replaced since it was written: its successor's write will say so
        self.stable = max(self.stable, index)
        if self.leading and self._advance_commit(node_id, ch):
            for peer in sorted(self.membership.peers):
                self._replicate(peer, node_id, now, out)

    # --- the primary -----------------------------------------------------------------------

    def propose(
        self,
        kind: EntryKind,
        data: bytes,
        node_id: NodeId,
        now: float,
        out: list[Outgoing],
        ch: Changes,
    ) -> Entry:
        """Append an entry of our term and send it to every peer."""
        if not self.leading:
            raise LocalError("only the primary proposes entries")
        if len(data) > MAX_ENTRY_BYTES:
            raise LocalError(f"entry of {len(data)} bytes > {MAX_ENTRY_BYTES}")
        entry = Entry(self.log.last.index + 1, self._term, kind, data)
        self.log.entries.append(entry)
        ch.entries.append(entry)
        self.stats.appended += 1
        self._advance_commit(node_id, ch)
        for peer in sorted(self.membership.peers):
            self._replicate(peer, node_id, now, out)
        return entry

    def on_ack(
        self, msg: AppendAck, node_id: NodeId, now: float, out: list[Outgoing], ch: Changes
    ) -> None:
        progress = self._progress.get(msg.sender)
        if progress is None:
            return
        if self.membership.two_node and msg.match < progress.match:
            # The peer dropped a split brain's entries (or the ack is stale): believe it and
            # probe again. Harmless: with a quorum of one, its match never counts for commit.
            progress.match = msg.match
            progress.next = msg.match + 1
            progress.probing = True
            progress.sent_at = _NEVER
        if msg.success:
            progress.probing = False
            progress.match = max(progress.match, min(msg.match, self.log.last.index))
            progress.next = max(progress.next, progress.match + 1)
            if self._advance_commit(node_id, ch):
                for peer in sorted(self.membership.peers):
                    self._replicate(peer, node_id, now, out)
                return
        else:
            self.stats.rejected += 1
            # Look again just after what the peer says it has, never below what it acked.
            progress.next = max(progress.match + 1, min(progress.next - 1, msg.match + 1))
            progress.probing = True
            progress.sent_at = _NEVER
        self._replicate(msg.sender, node_id, now, out)

    def commit_for(self, peer: NodeId) -> int:
        """The commit index to tell `peer` in a heartbeat: never past what it is known to hold."""
        progress = self._progress.get(peer)
        return 0 if progress is None else min(self.log.commit, progress.match)

    def on_commit_hint(self, commit: int, ch: Changes) -> None:
        """A heartbeat's commit index (capped by the primary at what we hold): apply it."""
        if self.log.commit < commit <= self.log.last.index:
            self._commit_to(commit, ch)

    def drop_split_brain(self, leader_last: LogPosition, term: int, ch: Changes) -> bool:
        """Two-node mode: entries of an older term past the primary's last one can only come
        from a split brain (this node led alone); drop them, committed or not, and if the
        journal no longer meets the primary's where it ends, start it over from the primary."""
        log = self.log
        if log.last.index <= leader_last.index or log.last.term >= term:
            return False
        if log.term_at(leader_last.index) == leader_last.term:
            self._drop_from(leader_last.index + 1, ch)
            return True
        self._diverged(f"journal ({log.last}) does not meet the primary's at {leader_last}")
        self.stable = 0
        ch.truncate(log.base.index + 1)
        log.entries = []
        log.base, log.snapshot, log.commit = EMPTY_LOG, b"", 0
        ch.compact_to = (EMPTY_LOG, b"")
        self.applied = 0
        ch.restore = b""
        ch.committed.clear()
        return True

    def heartbeat(self, node_id: NodeId, now: float, out: list[Outgoing]) -> None:
        """Once a heartbeat interval: resend what was lost, tell laggards the commit index."""
        for peer in sorted(self.membership.peers):
            progress = self._progress.get(peer)
            if progress is None:
                continue
            log = self.log
            behind = progress.match < log.last.index or progress.commit_sent < log.commit
            if (behind or progress.probing) and now - progress.sent_at >= self._retransmit_s:
                # Nothing heard back for a while: something was lost; probe from what it acked.
                progress.next = progress.match + 1 if not progress.probing else progress.next
                progress.probing = True
                progress.sent_at = _NEVER
                self._replicate(peer, node_id, now, out)

    def _replicate(self, peer: NodeId, node_id: NodeId, now: float, out: list[Outgoing]) -> None:
        """Send `peer` what it lacks: one probe while we do not know where its log ends, else
        a pipeline of up to `MAX_IN_FLIGHT` entries; or just the new commit index."""
        progress = self._progress.setdefault(peer, Progress(next=self.log.last.index + 1))
        log = self.log
        while True:
            if progress.probing and progress.sent_at > _NEVER:
                return  # one probe at a time; `heartbeat` resends it if it is lost
            prev_index = progress.next - 1
            prev_term = log.term_at(prev_index)
            if prev_term is None and prev_index < log.base.index:
                out.append(Outgoing(peer, Snapshot(node_id, self._term, log.base, log.snapshot)))
                self.stats.snapshots_sent += 1
                progress.next = log.base.index + 1
                progress.sent_at = now
                return
            if prev_term is None:  # the peer's hint ran past our log: start from our end
                progress.next = log.last.index + 1
                continue
            pending = progress.next <= log.last.index
            in_flight = progress.next - 1 - progress.match
            if pending and not progress.probing and in_flight >= MAX_IN_FLIGHT:
                return
            if not pending and not progress.probing and progress.commit_sent >= log.commit:
                return
            entries = log.after(prev_index, APPEND_BUDGET) if pending else ()
            prev = LogPosition(prev_term, prev_index)
            out.append(Outgoing(peer, Append(node_id, self._term, prev, log.commit, entries)))
            progress.next = prev_index + 1 + len(entries)
            progress.sent_at = now
            progress.commit_sent = log.commit
            if progress.probing or progress.next > log.last.index:
                return

    def _advance_commit(self, node_id: NodeId, ch: Changes) -> bool:
        """Commit the newest entry of our term that a quorum of voters holds."""
        matches = {node_id: min(self.stable, self.log.last.index)}
        matches.update((peer, p.match) for peer, p in self._progress.items())
        for index in sorted(set(matches.values()), reverse=True):
            if index <= self.log.commit:
                return False
            holders = [node for node, match in matches.items() if match >= index]
            if self.membership.is_quorum(holders) and self.log.term_at(index) == self._term:
                self._commit_to(index, ch)
                return True
        return False

    # --- a follower ------------------------------------------------------------------------

    def on_append(self, msg: Append, node_id: NodeId, out: list[Outgoing], ch: Changes) -> None:
        log = self.log
        prev, entries = msg.prev, msg.entries
        if prev.index < log.base.index:
            # Everything up to our snapshot is committed, hence the same as the primary's.
            entries = tuple(e for e in entries if e.index > log.base.index)
            if not entries:
                out.append(_ack(msg, node_id, msg.term, True, log.base.index))
                return
            prev = log.base
        ours = log.term_at(prev.index)
        if ours != prev.term:
            self.stats.rejected += 1
            hint = log.last.index if ours is None else prev.index - 1
            if not self.membership.two_node:  # committed entries match; after a split brain not
                hint = max(hint, log.commit)
            out.append(_ack(msg, node_id, msg.term, False, hint))
            return
        for entry in entries:
            existing = log.term_at(entry.index)
            if existing == entry.term:
                continue
            if existing is not None:
                self._drop_from(entry.index, ch)
            kept = entry if self._keep_payloads else replace(entry, data=b"")
            log.entries.append(kept)
            ch.entries.append(kept)
        last_new = prev.index + len(entries)
        if min(msg.commit, last_new) > log.commit:
            self._commit_to(min(msg.commit, last_new), ch)
        out.append(_ack(msg, node_id, msg.term, True, last_new))

    def on_snapshot(self, msg: Snapshot, node_id: NodeId, out: list[Outgoing], ch: Changes) -> None:
        log = self.log
        last = msg.last
        ours = log.term_at(last.index)
        # A split brain (two-node mode only) can leave committed entries that differ.
        split = self.membership.two_node and ours is not None and ours != last.term
        if split:
            self._diverged(f"snapshot at {last} conflicts with our committed journal")
        if last.index > log.commit or split:
            data = msg.data if self._keep_payloads else b""
            if ours == last.term:
                log.entries = log.entries[last.index - log.base.index :]
            else:  # behind it, or what we have after our commit index is of an older term
                self.stable = min(self.stable, log.base.index)
                ch.truncate(log.base.index + 1)
                log.entries = []
            log.base, log.snapshot = last, data
            ch.compact_to = (last, data)
            log.commit = last.index
            self.applied = last.index
            ch.restore = data
            ch.committed.clear()
            self.stats.snapshots_installed += 1
        out.append(_ack(msg, node_id, msg.term, True, last.index))

    def _drop_from(self, index: int, ch: Changes) -> None:
        log = self.log
        if index <= log.commit:
            self._diverged(f"a new primary replaces committed entry {index}")
            # Two-node split brain: the shell rebuilds its state from the snapshot on.
            log.commit = max(index - 1, log.base.index)
            self.applied = log.base.index
            ch.restore = log.snapshot
            ch.committed.clear()
        del log.entries[index - log.base.index - 1 :]
        self.stable = min(self.stable, index - 1)
        ch.truncate(index)
        self._commit_to(log.commit, ch)

    def _diverged(self, what: str) -> None:
        if not self.membership.two_node:
            raise LocalError(f"{what}: committed entries must never change")
        self.stats.diverged += 1

    # --- both ------------------------------------------------------------------------------

    def _commit_to(self, index: int, ch: Changes) -> None:
        self.log.commit = index
        while self.applied < index:
            self.applied += 1
            ch.committed.append(self.log.entry(self.applied))

    def compact(self, upto: int, data: bytes, ch: Changes) -> None:
        """Fold every entry up to `upto` (applied already) into the snapshot `data`; a request
        the log has moved past (a snapshot installed meanwhile) is ignored."""
        log = self.log
        if not log.base.index < upto <= self.applied:
            return  # the shell asked from another thread; the log has moved on since
        if len(data) > MAX_ENTRY_BYTES:
            raise LocalError(f"snapshot of {len(data)} bytes > {MAX_ENTRY_BYTES}")
        term = log.term_at(upto)
        assert term is not None
        log.entries = log.entries[upto - log.base.index :]
        log.base, log.snapshot = LogPosition(term, upto), data
        ch.compact_to = (log.base, data)


def _ack(msg: Append | Snapshot, node_id: NodeId, term: int, success: bool, match: int) -> Outgoing:
    return Outgoing(msg.sender, AppendAck(node_id, term, success, match))


def apply_write(log: JournalLog, write: LogWrite) -> None:
    """Apply `write` to `log` the way a store makes it durable (its order is the contract)."""
    if write.compact_to is not None:
        log.base, log.snapshot = write.compact_to
        log.entries = [e for e in log.entries if e.index > log.base.index]
    if write.truncate_from is not None:
        log.entries = [e for e in log.entries if e.index < write.truncate_from]
    for entry in write.entries:
        if entry.index != log.last.index + 1:
            raise LocalError(f"entry {entry.index} does not follow {log.last.index}")
        log.entries.append(entry)
    log.commit = max(write.commit, log.base.index)
