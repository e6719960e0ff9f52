"""Drives one election core on the wire: one queue, one clock, effects in their order.

Invariants:
- Every input reaches the core through one queue and one task, one at a time, in arrival order,
  stamped with `clock.monotonic()` when it arrived.
- Effects are applied in the order `events.py` fixes: the hard state is made durable (fsync, off
  the event loop) before any message leaves, messages leave before any action runs.
- `StopRobot` runs inline, at once. Slow actions (making the robot safe, mDNS, the floating IP)
  run on one worker, in order, so they never delay the next heartbeat.
- A datagram that fails to decode is dropped and counted by reason, logged at warning the first
  time for each reason, then at debug.
- The journal: the hard state and the journal changes of one step are one durable transaction,
  before anything is sent; committed entries are applied to `journal` (the state machine) after
  the step's actions, in order; whoever waits for an index learns whether its entry made it.
  At start the journal is rebuilt from disk up to the stored commit index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ha_voice import clock
from ha_voice.cluster.election import Election
from ha_voice.cluster.events import (
    BecomePrimary,
    Compact,
    Effects,
    Event,
    HardState,
    LogWrite,
    MessageReceived,
    ProposalRefused,
    Propose,
    PublishEndpoint,
    RobotReachability,
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
    Codec,
    DecodeError,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatAck,
    NodeId,
)
from ha_voice.cluster.storage import HardStateStore
from ha_voice.cluster.timers import ElectionTimers
from ha_voice.cluster.transport import Address, UDPTransport
from ha_voice.errors import HAVoiceError
from ha_voice.journal import Journal
from ha_voice.metrics import ClusterSnapshot, Metrics, PeerSample

__all__ = ["ClusterNode", "NotPrimary", "NullRoleActions", "RoleActions"]

log = logging.getLogger(__name__)

# Even with nothing due, look at the clock this often: bounds the damage of a missed wakeup.
_MAX_IDLE_S = 1.0
_LAG_PROBE_S = 0.1
_EXIT_STORAGE_FAILED = 74  # EX_IOERR
# Round trips measured before judging the timers against them (DESIGN.md: warn under 10x).
_RTT_SAMPLES = 20


class RoleActions(Protocol):
    """What the daemon does when the core says so."""

    def stop_robot(self, reason: str) -> None:
        """Stop commanding the robot now; runs inline, must not block."""

    async def become_primary(self, term: int) -> None:
        """Bring the robot to its safe state; the endpoint is published after this returns."""

    async def publish_endpoint(self, term: int) -> None:
        """Advertise the virtual endpoint (mDNS, floating IP) for `term`."""

    async def withdraw_endpoint(self, term: int) -> None:
        """Withdraw the virtual endpoint (mDNS goodbye, floating IP removed)."""

    def role_changed(self, change: RoleChanged) -> None:
        """Note a role change (notify hook, logs); must not block."""


class NullRoleActions:
    """Does nothing: for a witness, or a node without robot or endpoint."""

    def stop_robot(self, reason: str) -> None:
        pass

    async def become_primary(self, term: int) -> None:
        pass

    async def publish_endpoint(self, term: int) -> None:
        pass

    async def withdraw_endpoint(self, term: int) -> None:
        pass

    def role_changed(self, change: RoleChanged) -> None:
        pass


class NotPrimary(HAVoiceError):
    """This node cannot append to the journal now (not primary, handing over, lost the lease)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Peer:
    """A member's address and what we heard from it."""

    node_id: NodeId
    address: Address | None = None
    static: bool = False
    last_heard_at: float | None = None
    priority: int | None = None
    api_port: int | None = None


@dataclass
class Failover:
    """The last time the primary changed, as this node saw it."""

    old: NodeId | None
    new: NodeId
    term: int
    duration_s: float | None
    at_unix_s: float


@dataclass
class _Request:
    event: Event
    done: asyncio.Future[Effects] | None = None


class ClusterNode:
    """One node of the cluster: the core, its codec, its socket, its disk."""

    def __init__(
        self,
        *,
        membership: Membership,
        timers: ElectionTimers,
        priority: int,
        codec: Codec,
        store: HardStateStore,
        metrics: Metrics,
        actions: RoleActions,
        preempt: bool = False,
        static_peers: dict[NodeId, Address | None] | None = None,
        api_port: int = 0,
        retention: tuple[int, float] = (1000, 86_400.0),
    ) -> None:
        self.codec = codec
        self.metrics = metrics
        self._store = store
        self._actions = actions
        self.timers = timers
        self.peers: dict[NodeId, Peer] = {}
        for node, address in (static_peers or {}).items():
            self.peers[node] = Peer(node, address, static=address is not None)
        hard = store.load()
        log_on_disk = store.load_journal()
        self.election = Election(
            membership=membership,
            timers=timers,
            priority=priority,
            hard_state=hard,
            rng=random.Random(os.urandom(16)),
            now=clock.monotonic(),
            journal=log_on_disk,
            preempt=preempt,
            api_port=api_port,
        )
        # A witness keeps no payloads, so it has no state to apply them to.
        self._applies = membership.self_id not in membership.witnesses
        self.journal = Journal()
        self._retention = retention
        self._compacting_to = 0
        self._waiters: dict[int, list[asyncio.Future[Entry]]] = {}
        if self._applies:
            self.journal.restore(log_on_disk.snapshot, log_on_disk.base.index)
            for entry in log_on_disk.entries:
                if entry.index <= log_on_disk.commit:
                    self.journal.apply(entry)
        self.last_failover: Failover | None = None
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._slow: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._transport: UDPTransport | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._warned: set[str] = set()
        self._strangers: set[NodeId] = set()
        self._leader: NodeId | None = None
        self._leader_heard_at: float | None = None
        self._rtt_samples: list[float] = []
        self._shown_role: tuple[Role, int, bool] | None = None
        self._not_leading = asyncio.Event()
        self._not_leading.set()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Bind the cluster socket and start the loop, the action worker and the lag probe."""
        self._transport = await UDPTransport.open(host, port, self._datagram)
        self.metrics.attach(self.snapshot)
        self._update_role_metrics()
        for coroutine in (self._run(), self._run_slow_actions(), self._probe_lag()):
            self._tasks.append(asyncio.create_task(coroutine))

    @property
    def address(self) -> Address:
        assert self._transport is not None
        return self._transport.address

    async def stop(self) -> None:
        """Cancel every task and close the socket; the caller hands over first (`shutdown`)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._transport is not None:
            self._transport.close()

    async def shutdown(self, timeout_s: float) -> bool:
        """Hand leadership over (or resign) and wait until this node leads no more."""
        deadline = clock.monotonic() + timeout_s
        await self.submit(ShutdownRequested(clock.monotonic()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._not_leading.wait(), timeout_s)
        await self._drain_slow_actions(max(0.0, deadline - clock.monotonic()))
        return self.election.role is not Role.PRIMARY

    # --- inputs ----------------------------------------------------------------------------

    async def submit(self, event: Event) -> Effects:
        """Feed `event` to the core after everything queued before it; its effects."""
        done: asyncio.Future[Effects] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(event, done))
        return await done

    async def step_down(self, target: NodeId | None = None) -> str | None:
        """Ask the core to hand over; None if it started, else why not."""
        effects = await self.submit(StepDownRequested(clock.monotonic(), target))
        refusals = [a.reason for a in effects.actions if isinstance(a, StepDownRefused)]
        return refusals[0] if refusals else None

    async def propose(self, kind: EntryKind, data: bytes) -> Entry:
        """Append an entry to the journal (primary only); NotPrimary says why not."""
        effects = await self.submit(Propose(kind, data, clock.monotonic()))
        if effects.proposed is None:
            refusals = [a.reason for a in effects.actions if isinstance(a, ProposalRefused)]
            raise NotPrimary(refusals[0] if refusals else "not appended")
        return effects.proposed

    async def committed(self, entry: Entry) -> bool:
        """Wait until the journal applied `entry`'s index: True if it is `entry` that committed
        there, False if another primary's entry did; NotPrimary if we stop leading first."""
        if self.journal.applied >= entry.index:
            return self.election.replication.log.term_at(entry.index) in (entry.term, None)
        if self.election.role is not Role.PRIMARY:
            raise NotPrimary(f"{self.election.node_id} is no longer primary")
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(entry.index, []).append(future)
        applied = await future
        return applied.term == entry.term

    def leader_url(self, default_port: int | None = None) -> str | None:
        """The primary's HTTP address as this node knows it (its heartbeats or mDNS carry the
        port; else `default_port`), or None."""
        leader = self.election.leader
        if leader is None:
            return None
        if leader == self.election.node_id:
            return None
        peer = self.peers.get(leader)
        port = (peer.api_port if peer else None) or default_port
        if peer is None or peer.address is None or not port:
            return None
        return f"http://{peer.address[0]}:{port}"

    def set_serviceable(self, serviceable: bool, reason: str = "") -> None:
        self._queue.put_nowait(_Request(Serviceability(serviceable, clock.monotonic(), reason)))

    def set_robot_reachable(self, reachable: bool) -> None:
        self._queue.put_nowait(_Request(RobotReachability(reachable, clock.monotonic())))

    def learn_peer(
        self, node_id: NodeId, address: Address, priority: int | None, api_port: int | None
    ) -> None:
        """A peer found by discovery: its address, if it is a configured member."""
        membership = self.election.membership
        if node_id == self.election.node_id:
            return
        if node_id not in membership.voters:
            if node_id not in self._strangers:
                self._strangers.add(node_id)
                log.warning(
                    "mDNS: %s is in this cluster's name but not a configured member; ignored "
                    "(add it to peers on every node to make it one)",
                    node_id,
                )
            return
        peer = self.peers.setdefault(node_id, Peer(node_id))
        if not peer.static:
            peer.address = address
        peer.priority = priority
        peer.api_port = api_port

    def _datagram(self, data: bytes, address: Address) -> None:
        now = clock.monotonic()
        try:
            message = self.codec.decode(data)
        except DecodeError as exc:
            self._dropped(exc.reason, f"{exc} from {address[0]}:{address[1]}")
            return
        self.metrics.packets_received.inc()
        peer = self.peers.setdefault(message.sender, Peer(message.sender))
        peer.last_heard_at = now
        if not peer.static:
            peer.address = address  # authenticated, so the source address can be trusted
        if isinstance(message, HeartbeatAck) and self.election.role is Role.PRIMARY:
            self._round_trip(max(0.0, now - message.sent_at))
        elif isinstance(message, Heartbeat) and message.api_port:
            peer.api_port = message.api_port
        self._queue.put_nowait(_Request(MessageReceived(message, now)))

    def _round_trip(self, rtt_s: float) -> None:
        self.metrics.heartbeat_rtt.observe(rtt_s)
        if len(self._rtt_samples) >= _RTT_SAMPLES:
            return
        self._rtt_samples.append(rtt_s)
        if len(self._rtt_samples) == _RTT_SAMPLES:
            median = statistics.median(self._rtt_samples)
            if self.timers.election_timeout_s < 10 * median:
                log.warning(
                    "election_timeout_s %.3f is under 10x the measured heartbeat round trip "
                    '(median %.4f s): expect spurious failovers; try timer_profile = "wifi"',
                    self.timers.election_timeout_s,
                    median,
                )

    def _dropped(self, reason: str, detail: str) -> None:
        self.metrics.packets_dropped.labels(reason).inc()
        if reason in self._warned:
            log.debug("dropped datagram: %s", detail)
        else:
            self._warned.add(reason)
            log.warning("dropped datagram (%s; further ones logged at debug): %s", reason, detail)

    # --- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            wait = min(self.election.next_deadline() - clock.monotonic(), _MAX_IDLE_S)
            try:
                request = await asyncio.wait_for(self._queue.get(), max(wait, 0.0))
            except asyncio.TimeoutError:
                request = _Request(Tick(clock.monotonic()))
            await self._step(request)
            now = clock.monotonic()
            if now >= self.election.next_deadline():
                await self._step(_Request(Tick(now)))

    async def _step(self, request: _Request) -> None:
        effects = self.election.step(request.event)
        try:
            await self._apply(effects)
        finally:
            if request.done is not None and not request.done.done():
                request.done.set_result(effects)

    async def _apply(self, effects: Effects) -> None:
        if effects.persist is not None or effects.log is not None:
            await self._persist(effects.persist, effects.log)
        assert self._transport is not None
        for out in effects.send:
            peer = self.peers.get(out.to)
            if peer is None or peer.address is None:
                self.metrics.packets_dropped.labels("unknown_peer").inc()
                continue
            self._transport.send(self.codec.encode(out.to, out.message), peer.address)
            self.metrics.packets_sent.inc()
        for action in effects.actions:
            self._act(action)
        self._apply_committed(effects)
        if self.election.role is not Role.PRIMARY and self._waiters:
            self._fail_waiters(f"{self.election.node_id} is no longer primary")
        self._note_leader()
        self._update_role_metrics()

    async def _persist(self, state: HardState | None, write: LogWrite | None) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._store.write, state, write)
        except OSError as exc:
            # The core already acts on this term, vote and journal; carrying on without them on
            # disk could vote twice or lose an acknowledged entry. Exit; systemd restarts us.
            log.critical("cannot make the node's state durable (%s): exiting", exc)
            os._exit(_EXIT_STORAGE_FAILED)
        self.metrics.persist_duration.observe(time.perf_counter() - started)

    def _apply_committed(self, effects: Effects) -> None:
        """Feed the state machine, wake whoever waits, and fold old entries into a snapshot."""
        if not self._applies:
            return
        replication = self.election.replication
        if effects.restore is not None:
            self.journal.restore(effects.restore, replication.log.base.index)
        for entry in effects.committed:
            self.journal.apply(entry)
            for future in self._waiters.pop(entry.index, []):
                if not future.done():
                    future.set_result(entry)
        if effects.committed:  # retention only moves when the journal grows: not per heartbeat
            self._maybe_compact()

    def _maybe_compact(self) -> None:
        replication = self.election.replication
        max_entries, max_age_s = self._retention
        upto = self.journal.compaction_point(
            max_entries=max_entries, max_age_s=max_age_s, now=time.time()
        )
        since = max(replication.log.base.index, self._compacting_to)
        if upto - since >= max(8, max_entries // 10):
            self._compacting_to = upto
            snapshot = self.journal.snapshot(upto)
            self.journal.forget_through(upto)
            self._queue.put_nowait(_Request(Compact(upto, snapshot, clock.monotonic())))

    def _fail_waiters(self, reason: str) -> None:
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(NotPrimary(reason))

    def _act(self, action: object) -> None:
        if isinstance(action, StopRobot):
            self._actions.stop_robot(action.reason)
        elif isinstance(action, BecomePrimary):
            self._record_takeover(action.term)
            term = action.term
            self._slow.put_nowait(lambda: self._actions.become_primary(term))
        elif isinstance(action, PublishEndpoint):
            term = action.term
            self._slow.put_nowait(lambda: self._actions.publish_endpoint(term))
        elif isinstance(action, WithdrawEndpoint):
            term = action.term
            self._slow.put_nowait(lambda: self._actions.withdraw_endpoint(term))
        elif isinstance(action, RoleChanged):
            log.info(
                "%s -> %s in term %d (%s)",
                action.old.value,
                action.new.value,
                action.term,
                action.reason,
            )
            self._actions.role_changed(action)
        elif isinstance(action, StepDownRefused):
            log.warning("step-down refused: %s", action.reason)

    async def _run_slow_actions(self) -> None:
        while True:
            action = await self._slow.get()
            try:
                await action()
            except Exception:
                log.exception("role action failed")
            finally:
                self._slow.task_done()

    async def _drain_slow_actions(self, timeout_s: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._slow.join(), timeout_s)

    async def _probe_lag(self) -> None:
        """How late the loop wakes us: heartbeats are as late as this, or later."""
        while True:
            expected = clock.monotonic() + _LAG_PROBE_S
            await asyncio.sleep(_LAG_PROBE_S)
            lag = max(0.0, clock.monotonic() - expected)
            self.metrics.loop_lag.set(lag)
            self.metrics.loop_lag_hist.observe(lag)

    # --- bookkeeping -----------------------------------------------------------------------

    def _note_leader(self) -> None:
        """Follow who leads; our own takeover is noted by `_record_takeover` instead."""
        leader = self.election.leader
        if leader is None or leader == self.election.node_id:
            return
        peer = self.peers.get(leader)
        self._leader_heard_at = peer.last_heard_at if peer else None
        if leader != self._leader:
            if self._leader is not None:
                self.metrics.leader_changes.inc()
            self._leader = leader

    def _record_takeover(self, term: int) -> None:
        now = clock.monotonic()
        old = self._leader if self._leader != self.election.node_id else None
        heard = self._leader_heard_at
        duration = now - heard if old is not None and heard is not None else None
        self.last_failover = Failover(old, self.election.node_id, term, duration, time.time())
        if old is not None:
            self.metrics.failovers.inc()
            if duration is not None:
                self.metrics.election_duration.observe(duration)
        if self._leader is not None and self._leader != self.election.node_id:
            self.metrics.leader_changes.inc()
        self._leader = self.election.node_id
        log.info(
            "primary for term %d%s",
            term,
            f" after {old} (last heard {duration:.3f}s ago)" if duration is not None else "",
        )

    def _update_role_metrics(self) -> None:
        e = self.election
        shown = (e.role, e.term, e.lease_valid(clock.monotonic()))
        if shown == self._shown_role:
            return  # the common case, every heartbeat: nothing to write
        self._shown_role = shown
        self.metrics.set_role(*shown)
        if e.role is Role.PRIMARY:
            self._not_leading.clear()
        else:
            self._not_leading.set()

    def snapshot(self) -> ClusterSnapshot:
        now = clock.monotonic()
        alive_within = self.timers.election_timeout_s
        peers = tuple(
            PeerSample(
                p.node_id,
                None if p.last_heard_at is None else now - p.last_heard_at,
                p.last_heard_at is not None and now - p.last_heard_at < alive_within,
            )
            for p in sorted(self.peers.values(), key=lambda p: p.node_id)
        )
        stats = self.election.stats
        replication = self.election.replication
        return ClusterSnapshot(
            peers=peers,
            lease_remaining_s=self.election.lease_expiry - now,
            votes_granted=stats.votes_granted,
            votes_denied=stats.votes_denied,
            lease_renew_failures=stats.lease_renew_failures,
            elections_started=stats.elections_started,
            journal_last_index=replication.log.last.index,
            journal_commit_index=replication.log.commit,
            journal_first_index=replication.log.base.index + 1,
            journal_commands=len(self.journal.records),
            journal_unfinished=len(self.journal.unfinished()),
            journal_snapshots_installed=replication.stats.snapshots_installed,
        )
