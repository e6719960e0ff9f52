"""One node of the cluster as the rest of the daemon sees it, on the daemon's main loop.

The core itself runs on its own thread (`runner.py`); this is its other half, on the main loop
where the HTTP API, the robot and discovery live: it turns calls into inputs for the core and
the core's outputs into work here.

Invariants:
- Reads go to `view`, the core's newest published `NodeView` (immutable, swapped whole): never
  to the core's own objects, which another thread changes.
- Inputs (`submit`, `propose`, `set_robot_reachable`, …) are queued to the core and never wait
  for it on this loop; those with an answer await a future the core resolves.
- The journal's state machine (`journal`) lives here and only here: the core hands committed
  entries over in order, and whoever waits for an index learns whether its entry made it.
  At start it is rebuilt from disk up to the stored commit index.
- `StopRobot` is carried out as soon as this loop gets it, and the endpoint retracted right
  after (floating IP removed, mDNS answers stopped, within `ADDRESS_RELEASE_WAIT_S`); only
  then does the core hear back (a fence) and let another node lead early (TimeoutNow,
  Resign): a successor never adds the address while this node still answers ARP for it.
  Slow actions (publishing the endpoint, then making the robot safe; mDNS goodbyes) run on
  one worker, in order, so they never hold this loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

from ha_voice import clock
from ha_voice.cluster.election import Election
from ha_voice.cluster.events import (
    Action,
    BecomePrimary,
    Compact,
    Effects,
    Event,
    ProposalRefused,
    Propose,
    PublishEndpoint,
    RobotReachability,
    RobotTermSeen,
    Role,
    RoleChanged,
    ShutdownRequested,
    StepDownRefused,
    StepDownRequested,
    WithdrawEndpoint,
)
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.protocol import Address, Codec, Entry, EntryKind, Load, NodeId
from ha_voice.cluster.runner import CoreRunner
from ha_voice.cluster.storage import HardStateStore
from ha_voice.cluster.timers import ElectionTimers
from ha_voice.cluster.view import NodeView
from ha_voice.errors import HAVoiceError
from ha_voice.journal import Journal
from ha_voice.metrics import ClusterSnapshot, Metrics, PeerSample
from ha_voice.supervise import guarded, must_not_end

__all__ = ["ADDRESS_RELEASE_WAIT_S", "ClusterNode", "NotPrimary", "NullRoleActions", "RoleActions"]

log = logging.getLogger(__name__)

# Terms of recently applied entries, so that a proposer that wakes after its entry was applied
# learns whether it was its own; a proposer wakes microseconds after, never thousands later.
_APPLIED_TERMS_KEPT = 4096
# How long a step-down's TimeoutNow or Resign may wait for the floating IP to go: a netlink
# delete on an open socket takes ~0.2 ms; a stuck one must not keep the cluster leaderless.
ADDRESS_RELEASE_WAIT_S = 0.05


class RoleActions(Protocol):
    """What the daemon does when the core says so."""

    def stop_robot(self, reason: str) -> None:
        """Stop commanding the robot now; runs inline, must not block."""

    async def retract_endpoint(self) -> None:
        """Stop answering for the endpoint now (floating IP removed, mDNS answers stopped, no
        goodbyes yet), right after `stop_robot` and before another node may lead; the caller
        bounds it by `ADDRESS_RELEASE_WAIT_S`."""

    async def become_primary(self, term: int, index: int) -> None:
        """Bring the robot to its safe state (calls carry `index`, the term's first entry);
        the endpoint is published after this returns."""

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

    async def retract_endpoint(self) -> None:
        pass

    async def become_primary(self, term: int, index: int) -> None:
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


class ClusterNode:
    """One node of the cluster: its core (on its own thread), its journal, its actions."""

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
        stall_s: float = 2.0,
        starting: bool = False,
    ) -> None:
        self.metrics = metrics
        self.timers = timers
        self._actions = actions
        log_on_disk = store.load_journal()
        election = Election(
            membership=membership,
            timers=timers,
            priority=priority,
            hard_state=store.load(),
            rng=random.Random(os.urandom(16)),
            now=clock.monotonic(),
            journal=log_on_disk,
            preempt=preempt,
            api_port=api_port,
            ready=not starting,
        )
        self._runner = CoreRunner(
            election=election,
            codec=codec,
            store=store,
            metrics=metrics,
            sink=self,
            static_peers=static_peers or {},
            stall_s=stall_s,
        )
        # A witness keeps no payloads, so it has no state to apply them to.
        self._applies = membership.self_id not in membership.witnesses
        self.journal = Journal()
        self._retention = retention
        self._compacting_to = 0
        self._waiters: dict[int, list[asyncio.Future[Entry]]] = {}
        self._applied_terms: OrderedDict[int, int] = OrderedDict()
        if self._applies:
            self.journal.restore(log_on_disk.snapshot, log_on_disk.base.index)
            for entry in log_on_disk.entries:
                if entry.index <= log_on_disk.commit:
                    self.journal.apply(entry)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slow: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._slow_worker: asyncio.Task[None] | None = None
        self._not_leading = asyncio.Event()
        self._not_leading.set()
        self._releasing: set[asyncio.Task[None]] = set()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Start the core's thread and bind the cluster socket (OSError if it cannot be)."""
        self._loop = asyncio.get_running_loop()
        self._slow_worker = asyncio.create_task(self._run_slow_actions(), name="role actions")
        self._slow_worker.add_done_callback(must_not_end)
        await asyncio.to_thread(self._runner.start, host, port)
        self.metrics.attach(self.snapshot)

    @property
    def address(self) -> Address:
        return self._runner.address

    @property
    def view(self) -> NodeView:
        """The core's newest published view (see module docstring)."""
        return self._runner.view

    @property
    def node_id(self) -> NodeId:
        return self.view.node_id

    async def stop(self) -> None:
        """Stop the core (queued writes land first) and the worker; `shutdown` hands over."""
        await asyncio.gather(*self._releasing, return_exceptions=True)  # bounded: 50 ms each
        if self._slow_worker is not None:
            self._slow_worker.remove_done_callback(must_not_end)
            self._slow_worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._slow_worker
        await asyncio.to_thread(self._runner.stop, 5.0)

    async def shutdown(self, timeout_s: float) -> bool:
        """Hand leadership over (or resign) and wait until this node leads no more."""
        deadline = clock.monotonic() + timeout_s
        await self.submit(ShutdownRequested(clock.monotonic()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._not_leading.wait(), timeout_s)
        await self._drain_slow_actions(max(0.0, deadline - clock.monotonic()))
        return self.view.role is not Role.PRIMARY

    # --- inputs ----------------------------------------------------------------------------

    async def submit(self, event: Event) -> Effects:
        """Feed `event` to the core after everything queued before it; its effects."""
        done: concurrent.futures.Future[Effects] = concurrent.futures.Future()
        self._runner.post(event, done)
        return await asyncio.wrap_future(done)

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
            term = self._applied_terms.get(entry.index)
            if term is None:
                raise NotPrimary(f"entry {entry.index} was applied too long ago to tell")
            return term == entry.term
        if self.view.role is not Role.PRIMARY:
            raise NotPrimary(f"{self.node_id} is no longer primary")
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(entry.index, []).append(future)
        applied = await future
        return applied.term == entry.term

    def set_load_source(self, source: Callable[[], Load | None]) -> None:
        """Where the core reads this node's load as heartbeats, acks and load reports leave:
        called on the core's thread, it must return at once (voice/load.py's sampler)."""
        self._runner.load_source = source

    def started(self) -> None:
        """The daemon finished starting: with `starting`, this node offers to lead (preemption,
        the line of succession) only from here, once the core's loop keeps time."""
        self._runner.started()

    def main_loop_alive(self) -> None:
        """Call on the main loop, often (every 0.1 s): the core judges it stuck without."""
        self._runner.main_loop_seen = clock.monotonic()

    def set_robot_reachable(self, reachable: bool, reason: str = "") -> None:
        """Whether the robot answers; `reason` (the backend's error) goes to `fault_reason`."""
        self._runner.post(RobotReachability(reachable, clock.monotonic(), reason))

    def robot_term_seen(self, term: int) -> None:
        """The robot refused our takeover: it has accepted a token of `term`, newer than ours."""
        log.warning(
            "the robot refused term %d: it has seen term %d; moving past it", self.term, term
        )
        self._runner.post(RobotTermSeen(term, clock.monotonic()))

    def learn_peer(
        self, node_id: NodeId, address: Address, priority: int | None, api_port: int | None
    ) -> None:
        """A peer found by discovery: its address, if it is a configured member."""
        if node_id != self.node_id and node_id not in self.view.membership.voters:
            log.warning(
                "mDNS: %s uses this cluster's name but is not a configured member; ignored "
                "(add it to peers on every node to make it one)",
                node_id,
            )
            return
        self._runner.learn_peer(node_id, address, priority, api_port)

    # --- reads -----------------------------------------------------------------------------

    def leader_url(self, default_port: int | None = None, scheme: str = "http") -> str | None:
        """The primary's HTTP address as this node knows it (its heartbeats or mDNS carry the
        port; else `default_port`), or None."""
        peer = self.view.leader_info()
        port = (peer.api_port if peer else None) or default_port
        if peer is None or peer.address is None or not port:
            return None
        return f"{scheme}://{peer.address[0]}:{port}"

    @property
    def term(self) -> int:
        """`Guard`'s `LeaseView`: the term of the newest view."""
        return self.view.term

    @property
    def lease_expiry(self) -> float:
        """`Guard`'s `LeaseView`: local monotonic seconds, -inf without a lease."""
        return self.view.lease_expiry

    def lease_valid(self, now: float) -> bool:
        """`Guard`'s `LeaseView`: primary with a lease that is still valid at `now`."""
        return self.view.lease_valid(now)

    def snapshot(self) -> ClusterSnapshot:
        """What `/metrics` reads at scrape time."""
        view = self.view
        now = clock.monotonic()
        alive_within = self.timers.election_timeout_s
        peers = tuple(
            PeerSample(
                p.node_id,
                None if p.last_heard_at is None else now - p.last_heard_at,
                p.last_heard_at is not None and now - p.last_heard_at < alive_within,
            )
            for p in sorted(view.peers.values(), key=lambda p: p.node_id)
        )
        return ClusterSnapshot(
            peers=peers,
            lease_remaining_s=view.lease_expiry - now,
            role=view.shown_role(now),
            votes_granted=view.votes_granted,
            votes_denied=view.votes_denied,
            lease_renew_failures=view.lease_renew_failures,
            elections_started=view.elections_started,
            implausible_terms=view.implausible_terms,
            journal_last_index=view.last_index,
            journal_commit_index=view.commit_index,
            journal_first_index=view.first_index,
            journal_commands=len(self.journal.records),
            journal_unfinished=len(self.journal.unfinished()),
            journal_snapshots_installed=view.snapshots_installed,
            storage_write_pending_s=(
                0.0 if view.write_pending_since is None else now - view.write_pending_since
            ),
        )

    # --- from the core (`runner.CoreSink`), called on its thread ---------------------------

    def halt(self, reason: str, fence: int) -> None:
        self._post(self._halt, reason, fence)

    def act(self, actions: tuple[Action, ...]) -> None:
        self._post(self._act, actions)

    def applied(self, restore: bytes | None, base: int, committed: tuple[Entry, ...]) -> None:
        self._post(self._apply, restore, base, committed)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the daemon is exiting
                loop.call_soon_threadsafe(guarded, fn, *args)

    # --- on this loop ----------------------------------------------------------------------

    def _halt(self, reason: str, fence: int) -> None:
        try:
            self._actions.stop_robot(reason)
        except BaseException:
            self._runner.fenced(fence)
            raise
        task = asyncio.get_running_loop().create_task(
            self._retract_endpoint_then_fence(fence), name="retract the endpoint"
        )
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _retract_endpoint_then_fence(self, fence: int) -> None:
        try:
            await asyncio.wait_for(self._actions.retract_endpoint(), ADDRESS_RELEASE_WAIT_S)
        except asyncio.TimeoutError:
            log.warning(
                "the floating IP was not removed within %.0f ms of stepping down; the successor "
                "may hold it at the same time for a moment",
                ADDRESS_RELEASE_WAIT_S * 1000,
            )
        except Exception:
            log.exception("removing the floating IP on stepping down failed")
        finally:
            self._runner.fenced(fence)

    def _act(self, actions: tuple[Action, ...]) -> None:
        for action in actions:
            if isinstance(action, BecomePrimary):
                act = partial(self._actions.become_primary, action.term, action.index)
                self._slow.put_nowait(act)
            elif isinstance(action, PublishEndpoint):
                self._slow.put_nowait(partial(self._actions.publish_endpoint, action.term))
            elif isinstance(action, WithdrawEndpoint):
                self._slow.put_nowait(partial(self._actions.withdraw_endpoint, action.term))
            elif isinstance(action, RoleChanged):
                self._role_changed(action)
            elif isinstance(action, StepDownRefused):
                log.warning("step-down refused: %s", action.reason)

    def _role_changed(self, change: RoleChanged) -> None:
        log.info(
            "%s -> %s in term %d (%s)",
            change.old.value,
            change.new.value,
            change.term,
            change.reason,
        )
        if change.new is Role.PRIMARY:
            self._not_leading.clear()
        else:
            self._not_leading.set()
            if self._waiters:
                self._fail_waiters(f"{self.node_id} is no longer primary ({change.reason})")
        self._actions.role_changed(change)

    def _apply(self, restore: bytes | None, base: int, committed: tuple[Entry, ...]) -> None:
        """Feed the state machine, wake whoever waits, and fold old entries into a snapshot."""
        if not self._applies:
            return
        if restore is not None:
            self.journal.restore(restore, base)
        for entry in committed:
            self.journal.apply(entry)
            self._applied_terms[entry.index] = entry.term
            if len(self._applied_terms) > _APPLIED_TERMS_KEPT:
                self._applied_terms.popitem(last=False)
            for future in self._waiters.pop(entry.index, []):
                if not future.done():
                    future.set_result(entry)
        if committed:  # retention only moves when the journal grows: not per heartbeat
            self._maybe_compact()

    def _maybe_compact(self) -> None:
        max_entries, max_age_s = self._retention
        upto = self.journal.compaction_point(
            max_entries=max_entries, max_age_s=max_age_s, now=time.time()
        )
        since = max(self.view.first_index - 1, self._compacting_to)
        if upto - since >= max(8, max_entries // 10):
            self._compacting_to = upto
            snapshot = self.journal.snapshot(upto)
            self.journal.forget_through(upto)
            self._runner.post(Compact(upto, snapshot, clock.monotonic()))

    def _fail_waiters(self, reason: str) -> None:
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(NotPrimary(reason))

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
