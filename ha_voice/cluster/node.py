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
    Effects,
    Event,
    HardState,
    MessageReceived,
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
from ha_voice.cluster.protocol import Codec, DecodeError, HeartbeatAck, NodeId
from ha_voice.cluster.storage import HardStateStore
from ha_voice.cluster.timers import ElectionTimers
from ha_voice.cluster.transport import Address, UDPTransport
from ha_voice.metrics import ClusterSnapshot, Metrics, PeerSample

__all__ = ["ClusterNode", "NullRoleActions", "RoleActions"]

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
        self.election = Election(
            membership=membership,
            timers=timers,
            priority=priority,
            hard_state=hard,
            rng=random.Random(os.urandom(16)),
            now=clock.monotonic(),
            preempt=preempt,
        )
        self.last_failover: Failover | None = None
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._slow: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._transport: UDPTransport | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._warned: set[str] = set()
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

    def set_serviceable(self, serviceable: bool, reason: str = "") -> None:
        self._queue.put_nowait(_Request(Serviceability(serviceable, clock.monotonic(), reason)))

    def set_robot_reachable(self, reachable: bool) -> None:
        self._queue.put_nowait(_Request(RobotReachability(reachable, clock.monotonic())))

    def learn_peer(
        self, node_id: NodeId, address: Address, priority: int | None, api_port: int | None
    ) -> None:
        """A peer found by discovery; a node outside the configured voters joins as non-voter."""
        if node_id == self.election.node_id:
            return
        peer = self.peers.setdefault(node_id, Peer(node_id))
        if not peer.static:
            peer.address = address
        peer.priority = priority
        peer.api_port = api_port
        if node_id not in self.election.membership.voters:
            self.election.membership = self.election.membership.with_non_voter(node_id)

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
        if effects.persist is not None:
            await self._persist(effects.persist)
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
        self._note_leader()
        self._update_role_metrics()

    async def _persist(self, state: HardState) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._store.save, state)
        except OSError as exc:
            # The core already acts on this term and vote; carrying on without them on disk
            # could give a vote twice after a restart. Exit, and let systemd restart us.
            log.critical("cannot make term %d durable (%s): exiting", state.term, exc)
            os._exit(_EXIT_STORAGE_FAILED)
        self.metrics.persist_duration.observe(time.perf_counter() - started)

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
        return ClusterSnapshot(
            peers=peers,
            lease_remaining_s=self.election.lease_expiry - now,
            votes_granted=stats.votes_granted,
            votes_denied=stats.votes_denied,
            lease_renew_failures=stats.lease_renew_failures,
            elections_started=stats.elections_started,
        )
