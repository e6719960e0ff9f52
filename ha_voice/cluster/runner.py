"""The election core on a thread and an event loop of its own, so that nothing else can hold it.

The HTTP API, the robot, discovery and the notify hook run on the daemon's main loop; a burst of
requests there once delayed heartbeats long enough to lose the lease. Here, one thread owns the
core, the cluster socket and the disk writer, and the rest of the daemon talks to it only
through `post` (inputs, from any thread), the published `NodeView` (reads), and the
`CoreSink` (outputs, handed over, never waited for).

Invariants:
- Inputs are stepped in arrival order, stamped with `clock.monotonic()` when they arrived. A
  backup reads everything that is waiting before it judges its election deadline, so a busy
  node never times out on heartbeats already in its queue. A primary ticks after every turn of
  at most `_MAX_BATCH` messages, so a backlog never holds its heartbeats back.
- Proposals (the journal's new entries, compactions) wait in a queue of their own, and a turn
  takes at most `_PROPOSALS_PER_TURN` of them after every message: heartbeats, acks and votes
  never queue behind a burst of commands.
- After a batch of inputs is stepped, the view is published, then each step's effects are
  applied in order: `StopRobot` is handed to the sink at once; messages leave as soon as the
  writes they depend on are durable (`durability.py`); other actions and committed entries go
  to the sink.
- TimeoutNow and Resign let another node lead before our lease would have run out: they leave
  only after the main loop has carried out the `StopRobot` that came with them (a fence).
- Writes go to disk in batches, one at a time, on a thread of their own (group commit). A write
  that fails exits the process (74): carrying on could vote twice or lose an acknowledged entry.
  A write pending longer than `stall_s`, or a main loop (HTTP, robot) that has not run for as
  long, makes the node unserviceable (FAULT, with the reason) until it moves again: a primary
  whose robot loop is stuck must not keep the lease, a node whose disk is stuck must not vote.
- Any other exception in this thread ends the process with its traceback logged (70), so
  systemd restarts it; the watchdog is fed from this loop only while it turns, its disk moves
  and the main loop runs, so a node stuck anywhere is restarted too.
- Nothing here waits for the main loop, a log handler (logging goes through a queue), or a peer.
- A `ProbeLeader` runs as a task on this loop (probe.py: non-blocking, bounded by half a
  heartbeat interval) and always comes back as a `LeaderProbed`, stamped with when it began.
- The cluster socket is closed only once this node holds no lease: a closed port is other
  nodes' evidence that this process is gone (probe.py), so it must not lie while we lead.
- This node's load (`load_source`: a sampler's latest snapshot, one attribute read) rides on
  every heartbeat and ack as it leaves, and goes to every member in a `LoadReport` within a
  housekeeping turn (0.1 s) of a change of its speech jobs, and every `LOAD_REPORT_S` anyway;
  what peers report is kept in their `PeerInfo`. Sampling never happens here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Protocol

from ha_voice import clock, sdnotify
from ha_voice.cluster.durability import Batch, Durability
from ha_voice.cluster.election import Election
from ha_voice.cluster.events import (
    Action,
    BecomePrimary,
    Compact,
    Effects,
    Event,
    LeaderProbed,
    LogPersisted,
    MessageReceived,
    Outgoing,
    ProbeLeader,
    Propose,
    Readiness,
    Role,
    Serviceability,
    StopRobot,
    Tick,
)
from ha_voice.cluster.probe import async_probe
from ha_voice.cluster.protocol import (
    Address,
    Codec,
    DecodeError,
    Entry,
    Heartbeat,
    HeartbeatAck,
    Load,
    LoadReport,
    Message,
    NodeId,
    Resign,
    TimeoutNow,
)
from ha_voice.cluster.storage import HardStateStore
from ha_voice.cluster.timers import ElectionTimers, round_trip_problem
from ha_voice.cluster.transport import UDPTransport
from ha_voice.cluster.view import Failover, NodeView, PeerInfo
from ha_voice.loop_lag import LagProbe, StallWatch
from ha_voice.metrics import Metrics
from ha_voice.supervise import exit_now, fatal, guarded

__all__ = ["EXIT_STORAGE_FAILED", "LOAD_REPORT_S", "CoreRunner", "CoreSink"]

log = logging.getLogger(__name__)

EXIT_STORAGE_FAILED = 74  # EX_IOERR
# Even with nothing due, step the core this often: bounds a missed wakeup, refreshes the view.
MAX_IDLE_S = 1.0
_HOUSEKEEPING_S = 0.1
# The loop's lag is sampled this often: a stall shows up within 50 ms of its end, at 20 wakes
# a second (a heartbeat profile sends as many).
_LAG_PROBE_S = 0.05
# A node that has just started offers to lead (preemption, the line of succession) once its
# loop has kept time for this long since the daemon finished starting: start-up work (the
# first full garbage collection alone held the interpreter lock 200-400 ms on a loaded 2-core
# host) held a fresh primary's heartbeats back past its lease (issue 14).
_CALM_S = 1.0
# "Kept time": no wake later than this share of the lease, so a stall like those leaves most of
# a new lease in hand (a heartbeat interval would never be met beside a CPU hog).
_CALM_LEASE_SHARE = 0.25
# Round trips measured before judging the timers against them (warn when the election timeout
# is under 10x the round trip: docs/operations.md, the metrics table).
_RTT_SAMPLES = 20
# Messages stepped per turn before the view is published and the effects applied: a turn stays
# a few milliseconds long (~100 us a message under a flood), so a primary's heartbeat is never
# more than one turn late.
_MAX_BATCH = 64
# Proposals stepped per turn, after the messages: ~50 us each (two Appends, two HMACs), so a
# burst adds at most a couple of milliseconds to the next heartbeat.
_PROPOSALS_PER_TURN = 32
# Drops that keep a peer out are named at warning this often while they last, not just once.
_REWARNED = frozenset({"unverified_boot", "identity_conflict"})
_REWARN_S = 10.0
# Every member tells every other its load this often, and sooner when its speech jobs change
# (a heartbeat or ack carries it too): ~100 bytes a second per peer while nothing changes.
LOAD_REPORT_S = 0.5


class CoreSink(Protocol):
    """Where the core's outputs go. Called on the core's thread: hand over, never block."""

    def halt(self, reason: str, fence: int) -> None:
        """Stop commanding the robot now, then call `CoreRunner.fenced(fence)`."""

    def act(self, actions: tuple[Action, ...]) -> None:
        """Carry out role changes, takeovers and endpoint changes, in order."""

    def applied(self, restore: bytes | None, base: int, committed: tuple[Entry, ...]) -> None:
        """Rebuild from `restore` (the snapshot up to `base`), then apply `committed`."""


@dataclass
class _Request:
    event: Event
    done: concurrent.futures.Future[Effects] | None = None
    heartbeat_due: float | None = None


class CoreRunner:
    """One election core, its socket and its disk, on a thread of their own."""

    def __init__(
        self,
        *,
        election: Election,
        codec: Codec,
        store: HardStateStore,
        metrics: Metrics,
        sink: CoreSink,
        static_peers: dict[NodeId, Address | None],
        stall_s: float,
    ) -> None:
        self.election = election
        self.codec = codec
        self.timers: ElectionTimers = election.timers
        self._store = store
        self._metrics = metrics
        self._sink = sink
        self._stall_s = stall_s
        # Written by the main loop (a float: one store, no lock), read here.
        self.main_loop_seen = clock.monotonic()
        self._stalls: dict[str, str] = {}  # what keeps the node from serving, by part
        self._peers = {
            node: PeerInfo(node, address, static=address is not None)
            for node, address in static_peers.items()
        }
        for node, address in static_peers.items():
            if address is not None:
                codec.expect(node, address)
        self._gate = Durability()
        self._inbox: deque[_Request] = deque()
        self._proposals: deque[_Request] = deque()
        self._held_revocations: list[Outgoing] = []
        self._fence_asked = 0
        self._fence_done = 0
        self._write_started: float | None = None
        self._warned: dict[str, float] = {}  # drop reason -> when last logged at warning
        self._conflicts_named: dict[str, float] = {}
        self._rtt_samples: list[float] = []
        self._leader: NodeId | None = None
        self._leader_heard_at: float | None = None
        self._last_failover: Failover | None = None
        self._unheard_since: float | None = None
        self._shown_role: tuple[Role, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: UDPTransport | None = None
        self._wake: asyncio.Future[None] | None = None
        self._write_wanted: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ha-voice-disk")
        self._probes: set[asyncio.Task[None]] = set()
        # This node's latest load (voice/load.py's sampler); called on this thread, never waits.
        self.load_source: Callable[[], Load | None] = _no_load
        self._load_reported_at = -float("inf")
        self._jobs_reported: tuple[bool, int, int] | None = None
        self._loads_counted = dict(codec.loads_dropped)
        self.lag_probe = LagProbe(
            "core",
            metrics,
            interval_s=_LAG_PROBE_S,
            warn_s=self.timers.heartbeat_interval_s / 2,
            why="half a heartbeat interval: heartbeats leave as late, and leases are at risk",
        )
        self._stall_watch = StallWatch([self.lag_probe])
        # Whether the daemon finished starting, and what the core last heard of readiness.
        self._started = self._ready_told = election.ready
        self._started_at = clock.monotonic()
        self.view = self._build_view(clock.monotonic())

    # --- any thread ------------------------------------------------------------------------

    def start(self, host: str, port: int) -> Address:
        """Start the thread, bind the cluster socket; its address. Blocks; OSError if the
        socket cannot be bound."""
        bound: concurrent.futures.Future[Address] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(host, port, bound), name="ha-voice-core", daemon=True
        )
        self._thread.start()
        address = bound.result()
        self._stall_watch.start()
        return address

    def stop(self, timeout_s: float) -> None:
        """Write what is queued, close the socket, end the thread; blocks up to `timeout_s`."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._stall_watch.stop()
        self._disk.shutdown(wait=False)

    def started(self) -> None:
        """The daemon finished starting (from any thread): once the loop has kept time for
        `_CALM_S`, this node offers to lead (see `Readiness`)."""
        self._call(self._set_started)

    def post(self, event: Event, done: concurrent.futures.Future[Effects] | None = None) -> None:
        """Queue `event` for the core (from any thread); `done` gets its effects."""
        self._call(self._enqueue, _Request(event, done))

    def fenced(self, fence: int) -> None:
        """The main loop carried out the `StopRobot` numbered `fence` (from any thread)."""
        self._call(self._fence_reached, fence)

    def learn_peer(
        self, node_id: NodeId, address: Address, priority: int | None, api_port: int | None
    ) -> None:
        """A member's address found by discovery (from any thread)."""
        self._call(self._learn_peer, node_id, address, priority, api_port)

    @property
    def address(self) -> Address:
        assert self._transport is not None
        return self._transport.address

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not started, or stopped: nothing listens any more
        with contextlib.suppress(RuntimeError):  # closed between the check and the call
            loop.call_soon_threadsafe(guarded, fn, *args)

    # --- the thread ------------------------------------------------------------------------

    def _thread_main(self, host: str, port: int, bound: concurrent.futures.Future[Address]) -> None:
        try:
            asyncio.run(self._main(host, port, bound))
        except BaseException as exc:
            if not bound.done():
                bound.set_exception(exc)
                return
            fatal(exc, "the cluster core")

    async def _main(self, host: str, port: int, bound: concurrent.futures.Future[Address]) -> None:
        self._loop = asyncio.get_running_loop()
        self._write_wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._transport = await UDPTransport.open(host, port, self._datagram)
        bound.set_result(self._transport.address)
        tasks = [
            asyncio.create_task(self._run_core(), name="election loop"),
            asyncio.create_task(self._write_loop(), name="disk writer"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
            asyncio.create_task(self.lag_probe.async_run(), name="lag probe"),
        ]
        stop = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stop:  # these loop for ever: ending at all is a failure
                exc = task.exception() or RuntimeError(f"{task.get_name()} returned")
                fatal(exc, f"the cluster core's {task.get_name()}")
        await self._flush(tasks)
        await self._outlive_lease()
        self._transport.close()

    async def _outlive_lease(self) -> None:
        """Keep the cluster port bound until our lease has run out (see the invariants)."""
        remaining_s = self.election.lease_expiry - clock.monotonic()
        if remaining_s > 0:
            log.warning("stopping with a lease: port held %.3f s until it ends", remaining_s)
            await asyncio.sleep(remaining_s)

    async def _flush(self, tasks: list[asyncio.Task[None]]) -> None:
        """Stop stepping; let the writer finish what is queued (a clean stop loses nothing)."""
        tasks[0].cancel()
        deadline = clock.monotonic() + 2.0
        while (self._gate.busy or self._gate.queued) and clock.monotonic() < deadline:
            assert self._write_wanted is not None
            self._write_wanted.set()
            await asyncio.sleep(0.005)
        for task in [*tasks, *self._probes]:
            task.cancel()
        for task in [*tasks, *self._probes]:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- inputs ----------------------------------------------------------------------------

    def _enqueue(self, request: _Request) -> None:
        if isinstance(request.event, Propose | Compact):
            self._proposals.append(request)
        else:
            self._inbox.append(request)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _datagram(self, data: bytes, address: Address) -> None:
        now = clock.monotonic()
        try:
            message = self.codec.decode(data, source=address, now=now)
        except DecodeError as exc:
            self._dropped(exc.reason, f"{exc} from {address[0]}:{address[1]}")
            return
        finally:
            self._send_codec_datagrams()
        self._metrics.packets_received.inc()
        if message is None:  # a challenge or an answer: the codec's own business
            return
        peer = self._peers.get(message.sender) or PeerInfo(message.sender)
        # Authenticated, so the source address can be trusted.
        peer = replace(
            peer,
            last_heard_at=now,
            address=peer.address if peer.static else address,
            boot=self.codec.admitted(message.sender),
        )
        if isinstance(message, HeartbeatAck) and self.election.role is Role.PRIMARY:
            self._round_trip(message.sender, max(0.0, now - message.sent_at))
        elif isinstance(message, Heartbeat | LoadReport):
            offset = message.sent_at - now
            peer = replace(peer, api_port=message.api_port or peer.api_port, clock_offset_s=offset)
        if isinstance(message, Heartbeat | HeartbeatAck | LoadReport):
            peer = self._loaded(peer, message.load, now)
        self._peers[message.sender] = peer
        if not isinstance(message, LoadReport):  # the shell's own: the core never sees it
            self._enqueue(_Request(MessageReceived(message, now)))

    def _loaded(self, peer: PeerInfo, load: Load | None, now: float) -> PeerInfo:
        """`peer` with the load it sent; a malformed one (None) is counted and forgets the last."""
        for reason, count in self.codec.loads_dropped.items():
            if count > self._loads_counted.get(reason, 0):
                self._metrics.loads_dropped.labels(reason).inc(count - self._loads_counted[reason])
                self._loads_counted[reason] = count
        if load is None:
            return replace(peer, load=None, load_heard_at=None)
        return replace(peer, load=load, load_heard_at=now)

    def _send_codec_datagrams(self) -> None:
        assert self._transport is not None
        for data, to in self.codec.take_outgoing():
            self._transport.send(data, to)
            self._metrics.packets_sent.inc()

    def _learn_peer(
        self, node_id: NodeId, address: Address, priority: int | None, api_port: int | None
    ) -> None:
        if node_id == self.election.node_id or node_id not in self.election.membership.voters:
            return
        peer = self._peers.get(node_id) or PeerInfo(node_id)
        found = replace(peer, priority=priority, api_port=api_port)
        self._peers[node_id] = found if peer.static else replace(found, address=address)
        if not peer.static:
            self.codec.expect(node_id, address)

    def _fence_reached(self, fence: int) -> None:
        self._fence_done = max(self._fence_done, fence)
        if self._fence_done >= self._fence_asked and self._held_revocations:
            held, self._held_revocations = self._held_revocations, []
            self._send(held)

    # --- the loop --------------------------------------------------------------------------

    async def _run_core(self) -> None:
        while True:
            if not self._inbox and not self._proposals:
                await self._wait_until(self.election.next_deadline())
            self._turn()

    async def _wait_until(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        wait_s = min(deadline - clock.monotonic(), MAX_IDLE_S)
        if wait_s <= 0:
            await asyncio.sleep(0)  # read what already waits on the socket first
            return
        self._wake = loop.create_future()
        timer = loop.call_later(wait_s, _resolve, self._wake)
        try:
            await self._wake
        finally:
            timer.cancel()
            self._wake = None

    def _turn(self) -> None:
        """Step what waits (and a tick if due), publish the view, then apply the effects."""
        began = time.perf_counter()
        stepped: list[tuple[_Request, Effects, int]] = []
        for _ in range(min(len(self._inbox), _MAX_BATCH)):
            stepped.append(self._step(self._inbox.popleft()))
        for _ in range(min(len(self._proposals), _PROPOSALS_PER_TURN)):
            stepped.append(self._step(self._proposals.popleft()))
        now = clock.monotonic()
        late = now >= self.election.next_deadline()
        leading = self.election.role is Role.PRIMARY
        if (late and (leading or not self._inbox)) or not stepped:
            due = self.election.heartbeat_due_at
            stepped.append(self._step(_Request(Tick(now), heartbeat_due=due)))
        self._note_whether_heard(now)
        self.view = self._build_view(clock.monotonic())
        self._name_identity_conflicts(self.view)
        for request, effects, base in stepped:
            self._apply(request, effects, base)
        self._update_role_metrics()
        self._metrics.core_turn.observe(time.perf_counter() - began)

    def _step(self, request: _Request) -> tuple[_Request, Effects, int]:
        event = request.event
        if isinstance(event, MessageReceived):
            self._metrics.core_queue_delay.observe(max(0.0, clock.monotonic() - event.now))
        effects = self.election.step(event)
        return request, effects, self.election.replication.log.base.index

    def _apply(self, request: _Request, effects: Effects, base: int) -> None:
        for action in effects.actions:
            if isinstance(action, StopRobot):
                self._fence_asked += 1
                self._sink.halt(action.reason, self._fence_asked)
        self._send(self._gate.absorb(effects))
        if request.heartbeat_due is not None and any(
            isinstance(out.message, Heartbeat) for out in effects.send
        ):
            lateness = max(0.0, clock.monotonic() - request.heartbeat_due)
            self._metrics.heartbeat_lateness.observe(lateness)
        if effects.persist is not None or effects.log is not None:
            assert self._write_wanted is not None
            self._write_wanted.set()
        for action in effects.actions:
            if isinstance(action, ProbeLeader):
                self._start_probe(action.leader)
        others = tuple(a for a in effects.actions if not isinstance(a, StopRobot | ProbeLeader))
        for action in others:
            if isinstance(action, BecomePrimary):
                self._record_takeover(action.term, action.cause)
        if others:
            self._sink.act(others)
        if effects.restore is not None or effects.committed:
            self._sink.applied(effects.restore, base, effects.committed)
        self._note_leader()
        if request.done is not None and not request.done.done():
            request.done.set_result(effects)

    def _send(self, messages: Iterable[Outgoing]) -> None:
        assert self._transport is not None
        for out in messages:
            if (
                isinstance(out.message, TimeoutNow | Resign)
                and self._fence_done < self._fence_asked
            ):
                self._held_revocations.append(out)
                continue
            peer = self._peers.get(out.to)
            if peer is None or peer.address is None:
                self._metrics.packets_dropped.labels("unknown_peer").inc()
                continue
            self._transport.send(
                self.codec.encode(out.to, self._stamped(out.message)), peer.address
            )
            self._metrics.packets_sent.inc()

    def _stamped(self, message: Message) -> Message:
        """`message` with this node's load, if it is a heartbeat or an ack."""
        if isinstance(message, Heartbeat | HeartbeatAck):
            return replace(message, load=self.load_source())
        return message

    def _report_load(self, now: float) -> None:
        """Send this node's load to every member with an address: when its speech jobs or
        readiness changed since the last report (a placement elsewhere must not take a node
        with a job just done for busy), and every `LOAD_REPORT_S` in any case."""
        load = self.load_source()
        jobs = None if load is None else (load.ready, load.running, load.queued)
        if jobs == self._jobs_reported and now - self._load_reported_at < LOAD_REPORT_S:
            return
        self._load_reported_at, self._jobs_reported = now, jobs
        assert self._transport is not None
        e = self.election
        report = LoadReport(e.node_id, now, e.api_port, load)
        for node, peer in self._peers.items():
            if peer.address is not None:
                self._transport.send(self.codec.encode(node, report), peer.address)
                self._metrics.packets_sent.inc()

    # --- evidence of death -----------------------------------------------------------------

    def _start_probe(self, leader: NodeId) -> None:
        """Probe `leader`'s ports on this loop; the core hears the outcome either way."""
        started = clock.monotonic()
        peer = self._peers.get(leader)
        if peer is None or peer.address is None:
            self._enqueue(_Request(LeaderProbed(leader, False, started, started)))
            return
        task = asyncio.get_running_loop().create_task(
            self._probe(leader, peer.address, peer.api_port, started), name="probe"
        )
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe(
        self, leader: NodeId, address: Address, api_port: int | None, started: float
    ) -> None:
        timeout_s = self.timers.heartbeat_interval_s / 2
        result = await async_probe(address, api_port, timeout_s)
        now = clock.monotonic()
        self._metrics.leader_probes.labels("gone" if result.gone else "no_evidence").inc()
        if result.gone:
            log.info(
                "evidence that %s is gone: %s at %s:%d (API port %s), %.1f ms after the probe "
                "began, %.0f ms after its last message",
                leader,
                result.describe(),
                address[0],
                address[1],
                api_port or "unknown",
                (now - started) * 1000,
                (started - (self._peers[leader].last_heard_at or started)) * 1000,
            )
        else:
            log.debug("probe of %s: no evidence (%s)", leader, result.describe())
        self._enqueue(_Request(LeaderProbed(leader, result.gone, started, now)))

    # --- the disk --------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        assert self._write_wanted is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._write_wanted.wait()
            self._write_wanted.clear()
            while (batch := self._gate.take_batch()) is not None:
                await self._write(loop, batch)

    async def _write(self, loop: asyncio.AbstractEventLoop, batch: Batch) -> None:
        self._write_started = clock.monotonic()
        started = time.perf_counter()
        try:
            await loop.run_in_executor(self._disk, self._store.write_batch, batch.writes)
        except OSError as exc:
            # The core already acts on this term, vote and journal; carrying on without them on
            # disk could vote twice or lose an acknowledged entry. Exit; systemd restarts us.
            log.critical("cannot make the node's state durable (%s): exiting", exc)
            exit_now(EXIT_STORAGE_FAILED)
        self._metrics.persist_duration.observe(time.perf_counter() - started)
        self._metrics.writes_per_fsync.observe(len(batch.writes))
        self._write_started = None
        self._stalled("storage", None)
        self._send(self._gate.written(batch))
        last = batch.last_entry
        if last is not None:
            self._enqueue(_Request(LogPersisted(last.index, last.term, clock.monotonic())))

    # --- housekeeping: event-loop lag, a stalled disk, the watchdog ------------------------

    async def _housekeeping(self) -> None:
        interval = sdnotify.watchdog_interval_s()
        last_ping = -float("inf")
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            now = clock.monotonic()
            self._report_load(now)
            self._maybe_ready(now)
            pending_s = 0.0 if self._write_started is None else now - self._write_started
            main_s = now - self.main_loop_seen
            if pending_s > self._stall_s:
                self._stalled("storage", f"a write has waited {pending_s:.1f} s for the disk")
            if main_s > self._stall_s:
                self._stalled("main loop", f"HTTP and the robot have not run for {main_s:.1f} s")
            elif "main loop" in self._stalls:
                self._stalled("main loop", None)
            if interval is not None and max(pending_s, main_s) < interval <= now - last_ping:
                sdnotify.watchdog()
                last_ping = now

    def _set_started(self) -> None:
        self._started, self._started_at = True, clock.monotonic()

    def _maybe_ready(self, now: float) -> None:
        """Tell the core once the node has started and its loop has kept time since, for
        `_CALM_S` in a row (a late wake starts the count again)."""
        if self._ready_told or not self._started:
            return
        bound = self.timers.lease_timeout_s * _CALM_LEASE_SHARE
        if self.lag_probe.worst_recent(now, _CALM_S) > bound:
            self._started_at = now
        if now - self._started_at < _CALM_S:
            return
        self._ready_told = True
        log.info(
            "started, and the core's loop kept within %.0f ms of time for %g s: offering to lead",
            bound * 1000,
            _CALM_S,
        )
        self._enqueue(_Request(Readiness(True, now)))

    def _stalled(self, part: str, why: str | None) -> None:
        """Note that `part` is stuck (`why`) or moves again (None); the core hears of changes."""
        if why is None:
            if self._stalls.pop(part, None) is not None:
                log.warning("%s moves again", part)
                self._serviceability()
            return
        if part not in self._stalls:
            log.error("%s stalled: %s; not serving until it moves", part, why)
            self._stalls[part] = why
            self._serviceability()

    def _serviceability(self) -> None:
        reasons = "; ".join(f"{part} stalled: {why}" for part, why in self._stalls.items())
        now = clock.monotonic()
        self._enqueue(_Request(Serviceability(not self._stalls, now, reasons)))

    # --- bookkeeping -----------------------------------------------------------------------

    def _build_view(self, now: float) -> NodeView:
        e = self.election
        journal = e.replication.log
        stats = e.stats
        return NodeView(
            node_id=e.node_id,
            role=e.role,
            term=e.term,
            leader=e.leader,
            lease_expiry=e.lease_expiry,
            accepting=e.accepting_commands(now),
            eligible=e.eligible,
            fault_reason=e.fault_reason,
            robot_reachable=e.robot_reachable,
            membership=e.membership,
            commit_index=journal.commit,
            last_index=journal.last.index,
            first_index=journal.base.index + 1,
            peers=MappingProxyType(dict(self._peers)),
            followers=tuple(replace(view) for view in e.peers()),
            votes_granted=stats.votes_granted,
            votes_denied=stats.votes_denied,
            lease_renew_failures=stats.lease_renew_failures,
            elections_started=stats.elections_started,
            implausible_terms=stats.implausible_terms,
            snapshots_installed=e.replication.stats.snapshots_installed,
            last_failover=self._last_failover,
            published_at=now,
            write_pending_since=self._write_started,
            unheard_since=self._unheard_since,
            boot_id=self.codec.boot_id,
            identity_conflicts=tuple(c.describe() for c in self.codec.conflicts(now)),
            refused_by=tuple(r.by for r in self.codec.refusals(now)),
        )

    def _note_whether_heard(self, now: float) -> None:
        """Follow whether the primary counts this backup (see `NodeView.unheard_since`)."""
        e = self.election
        unheard = (
            e.role is Role.BACKUP
            and e.offers_to_lead  # a node that does not offer is rightly not in line
            and e.leader is not None
            and not e.counted_by_leader
        )
        if not unheard:
            self._unheard_since = None
        elif self._unheard_since is None:
            self._unheard_since = now

    def _round_trip(self, peer: str, rtt_s: float) -> None:
        self._metrics.heartbeat_rtt.labels(peer).observe(rtt_s)
        if len(self._rtt_samples) >= _RTT_SAMPLES:
            return
        self._rtt_samples.append(rtt_s)
        if len(self._rtt_samples) == _RTT_SAMPLES:
            median = statistics.median(self._rtt_samples)
            problem = round_trip_problem(self.timers.election_timeout_s, median)
            if problem is not None:
                log.warning("%s (median of %d)", problem, _RTT_SAMPLES)

    def _dropped(self, reason: str, detail: str) -> None:
        self._metrics.packets_dropped.labels(reason).inc()
        now = clock.monotonic()
        last = self._warned.get(reason)
        if last is not None and (reason not in _REWARNED or now - last < _REWARN_S):
            log.debug("dropped datagram: %s", detail)
        else:
            self._warned[reason] = now
            later = f"again in {_REWARN_S:.0f} s" if reason in _REWARNED else "at debug"
            log.warning("dropped datagram (%s; further ones logged %s): %s", reason, later, detail)

    def _name_identity_conflicts(self, view: NodeView) -> None:
        """Gauge the conflicts; log each at warning when it appears and every `_REWARN_S`."""
        self._metrics.identity_conflicts.set(len(view.identity_conflicts))
        now = clock.monotonic()
        for text in view.identity_conflicts:
            if now - self._conflicts_named.get(text, -_REWARN_S) >= _REWARN_S:
                self._conflicts_named[text] = now
                refused = view.identity_reason()
                log.warning("identity conflict: %s", refused if refused else text)
        for text in set(self._conflicts_named) - set(view.identity_conflicts):
            del self._conflicts_named[text]
            log.warning("identity conflict over: %s", text)

    def _note_leader(self) -> None:
        """Follow who leads; our own takeover is noted by `_record_takeover` instead."""
        leader = self.election.leader
        if leader is None or leader == self.election.node_id:
            return
        peer = self._peers.get(leader)
        self._leader_heard_at = peer.last_heard_at if peer else None
        if leader != self._leader:
            if self._leader is not None:
                self._metrics.leader_changes.inc()
            self._leader = leader

    def _record_takeover(self, term: int, cause: str) -> None:
        now = clock.monotonic()
        node_id = self.election.node_id
        old = self._leader if self._leader != node_id else None
        heard = self._leader_heard_at
        duration = now - heard if old is not None and heard is not None else None
        self._last_failover = Failover(old, node_id, term, duration, time.time(), cause)
        if old is not None:
            self._metrics.failovers.labels(cause).inc()
            if duration is not None:
                self._metrics.election_duration.observe(duration)
        if self._leader is not None and self._leader != node_id:
            self._metrics.leader_changes.inc()
        self._leader = node_id
        log.info(
            "primary for term %d%s, by %s",
            term,
            f" after {old} (last heard {duration:.3f}s ago)" if duration is not None else "",
            cause,
        )

    def _update_role_metrics(self) -> None:
        """The term gauge (ha_voice_role is read from the view at scrape: it follows the lease)."""
        e = self.election
        shown = (e.role, e.term)
        if shown != self._shown_role:
            self._shown_role = shown
            self._metrics.set_term(e.term)


def _no_load() -> Load | None:
    return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
