"""Group commit and the send gate: which writes share an fsync, which messages wait for one.

The core asks for writes (`Effects.persist`, `Effects.log`) and messages (`Effects.send`) in
one step; the disk is slower than the network. This keeps them apart without breaking what the
order "persist, then send" protected (events.py):

- Every write gets a generation number, in the order asked. The shell takes all writes not yet
  started as one batch (`take_batch`): one transaction, one fsync (group commit, as etcd's
  `Ready` batches do), and reports it with `written`. At most one batch is on the disk at once,
  so batches become durable in order.
- A message waits only for what it depends on: every message for the newest write that holds
  a `HardState` (its term and vote must survive a crash before anyone hears of them), an
  `AppendAck` also for the newest write that holds journal changes (it tells the primary what
  this node's disk holds). Everything else — heartbeats, their acks, appends from the primary —
  leaves at once, whatever the disk is doing: the primary never counts its own entries before
  they are durable (`LogPersisted`), so nothing it says depends on a write in flight.
- A write with journal entries, once durable, is reported back to the core as `LogPersisted`
  (the last entry it wrote).

Pure: no clock, no I/O; the daemon's node and the simulator share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ha_voice.cluster.events import Effects, HardState, LogWrite, Outgoing
from ha_voice.cluster.protocol import AppendAck, LogPosition

__all__ = ["Batch", "Durability"]


@dataclass(frozen=True)
class Batch:
    """Writes that go to disk together; `generation` is the newest of them."""

    generation: int
    writes: tuple[tuple[HardState | None, LogWrite | None], ...]
    last_entry: LogPosition | None  # the last journal entry the batch writes, if any


@dataclass
class Durability:
    """What is durable, what is on its way to disk, and the messages that wait for it."""

    asked: int = 0  # generation of the newest write asked for
    durable: int = 0  # generation of the newest write on disk
    _hard_state_at: int = 0  # newest write holding a HardState
    _journal_at: int = 0  # newest write holding journal changes
    _queued: list[tuple[HardState | None, LogWrite | None]] = field(default_factory=list)
    _in_flight: int | None = None
    _held: list[tuple[int, Outgoing]] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        """Whether a batch is on the disk now."""
        return self._in_flight is not None

    @property
    def queued(self) -> bool:
        """Whether writes wait for the next batch."""
        return bool(self._queued)

    @property
    def held(self) -> int:
        """Messages waiting for a write."""
        return len(self._held)

    def absorb(self, effects: Effects) -> list[Outgoing]:
        """Queue `effects`' writes; the messages that may leave now (the rest are held)."""
        if effects.persist is not None or effects.log is not None:
            self.asked += 1
            self._queued.append((effects.persist, effects.log))
            if effects.persist is not None:
                self._hard_state_at = self.asked
            if effects.log is not None:
                self._journal_at = self.asked
        ready = []
        for out in effects.send:
            needed = self._needs(out)
            if needed <= self.durable:
                ready.append(out)
            else:
                self._held.append((needed, out))
        return ready

    def take_batch(self) -> Batch | None:
        """The writes asked for since the last batch, if any and none is on the disk."""
        if self._in_flight is not None or not self._queued:
            return None
        writes, self._queued = tuple(self._queued), []
        self._in_flight = self.asked
        return Batch(self.asked, writes, _last_written(writes))

    def written(self, batch: Batch) -> list[Outgoing]:
        """`batch` is durable: the held messages that may leave now, in the order asked."""
        if batch.generation != self._in_flight:
            raise ValueError(f"batch {batch.generation} was not the one on the disk")
        self._in_flight = None
        self.durable = batch.generation
        released = [out for needed, out in self._held if needed <= self.durable]
        self._held = [(needed, out) for needed, out in self._held if needed > self.durable]
        return released

    def _needs(self, out: Outgoing) -> int:
        """The generation that must be durable before `out` may leave."""
        if isinstance(out.message, AppendAck):
            return max(self._hard_state_at, self._journal_at)
        return self._hard_state_at


def _last_written(
    writes: tuple[tuple[HardState | None, LogWrite | None], ...],
) -> LogPosition | None:
    """The last journal position the writes leave on disk (an entry, or a snapshot's end)."""
    last = None
    for _, log in writes:
        if log is None:
            continue
        if log.entries:
            last = log.entries[-1].position
        elif log.compact_to is not None and (last is None or log.compact_to[0].index > last.index):
            last = log.compact_to[0]
    return last
