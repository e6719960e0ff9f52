"""The daemon's lifecycle, top to bottom: start, run until a signal, hand over, stop.

Invariants:
- Start: the hard state and the boot id are durable before the first datagram leaves; a floating
  IP found on this node at start is removed (we are not primary yet); systemd hears READY only
  once the cluster socket and the API are both serving.
- SIGTERM/SIGINT: hand leadership to the best backup (or resign), withdraw the endpoint and the
  floating IP, drain the notify hook and HTTP requests, exit 0 — all within
  `shutdown_timeout_s`; whatever is left then is cancelled. A second signal exits at once.
- The election core runs on its own thread (cluster/runner.py) and feeds the watchdog from its
  own loop; a stuck or dead core stops feeding it. Any task the node depends on that dies
  ends the process with its traceback (supervise.py), so systemd restarts it.
- Log lines go through a queue to a thread of their own (supervise.py): a slow journald or a
  full pipe never holds up the core or a request.
- Once started, the objects that live as long as the process are frozen out of the garbage
  collector's scans (`gc.freeze`): a full collection of a FastAPI process's heap held the
  interpreter lock for 50-150 ms and delayed heartbeats by as much. The imported modules' heap
  is frozen before the core's thread starts, so the collection at the end of start-up only
  scans what starting made.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import secrets
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import uvicorn

from ha_voice import __version__, clock, sdnotify
from ha_voice.api.app import create_app
from ha_voice.api.context import ApiContext
from ha_voice.api.server import build_server
from ha_voice.api.tls import api_scheme
from ha_voice.api.wyoming import WyomingServer
from ha_voice.cluster.discovery import Discovery, PeerRecord
from ha_voice.cluster.events import RoleChanged
from ha_voice.cluster.membership import Membership
from ha_voice.cluster.node import ClusterNode, NotPrimary
from ha_voice.cluster.protocol import Address, Codec
from ha_voice.cluster.storage import SQLiteStore, open_store
from ha_voice.cluster.vip import FloatingIP
from ha_voice.commands import CommandService
from ha_voice.config import Config, read_accepted_keys, read_cluster_key
from ha_voice.errors import BindError
from ha_voice.interfaces import network_wait_reason
from ha_voice.loop_lag import LagProbe
from ha_voice.metrics import Metrics
from ha_voice.notify import NotifyHook
from ha_voice.preflight import check_startable
from ha_voice.problem_log import ProblemLog
from ha_voice.robot.backends import make_robot
from ha_voice.robot.base import Robot, RobotError
from ha_voice.robot.guard import Guard, NotLeading
from ha_voice.supervise import log_through_a_queue, must_not_end
from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.listening import Listener
from ha_voice.voice.placement import PlacedSpeech, placed
from ha_voice.voice.stt import ServiceOptions, SpeechService

__all__ = ["run", "serve"]

log = logging.getLogger(__name__)
_FORCED_EXIT = 130
# How often a node asks whether the robot answers; a lost robot makes it FAULT within this.
_ROBOT_POLL_S = 0.5
# A primary whose robot did not answer the takeover asks again this often while it leads.
_TAKEOVER_RETRY_S = 0.2
_LAG_PROBE_S = 0.1
# Before the network is up: look again each second, and say so in the log twice a minute.
_NETWORK_POLL_S = 1.0
_NETWORK_LOG_EVERY_S = 30.0
# What systemd is asked to allow beyond shutdown_timeout_s before it calls a stop hung: the
# steps after the budget (closing the journal, the interpreter's exit); a whole stop under
# systemd took 0.3 s (tests/e2e/test_systemd_boot.py).
_STOP_MARGIN_S = 5.0


@dataclass
class _Actions:
    """What the core's actions mean on this node (`node.RoleActions`)."""

    config: Config
    hook: NotifyHook
    discovery: Discovery | None = None
    vip: FloatingIP | None = None
    guard: Guard | None = None
    commands: CommandService | None = None
    node: ClusterNode | None = None

    def robot_term_seen(self, term: int) -> None:
        if self.node is not None:
            self.node.robot_term_seen(term)

    def stop_robot(self, reason: str) -> None:
        if self.guard is not None:
            self.guard.halt(reason)

    async def become_primary(self, term: int, index: int) -> None:
        """Robot safe, our first entry committed, unfinished commands settled: then serve."""
        commands = self.commands
        if commands is None:
            return
        problems = ProblemLog(log, f"term {term}: takeover")
        while commands.leading(term):
            try:
                await commands.take_over(term, index, self.config.on_takeover)
                problems.check(None, clock.monotonic())
                return
            except (NotLeading, NotPrimary) as exc:
                log.warning("term %d: gave up taking over: %s", term, exc)
                return
            except RobotError as exc:  # not connected yet, a timeout, fenced: the robot decides
                if exc.seen_term is not None:
                    # Refused before this node ever commanded in `term`: the robot knows a term
                    # no live member leads (state moved aside): move past it (docs/operations.md,
                    # "A robot that has seen a newer term"); this loop ends once the view shows it.
                    self.robot_term_seen(exc.seen_term)
                commands.takeover_failed(term, str(exc))
                why = f"term {term}: robot not made safe yet ({exc}); trying again"
                problems.check(why, clock.monotonic())
                await asyncio.sleep(_TAKEOVER_RETRY_S)

    async def retract_endpoint(self) -> None:
        if self.discovery is not None:
            self.discovery.retract_endpoint()
        if self.vip is not None:
            await self.vip.async_release()

    async def publish_endpoint(self, term: int) -> None:
        # The floating IP first: a netlink add and a GARP take well under a millisecond,
        # mDNS registration several; clients of either are served as soon as it is theirs.
        if self.vip is not None:
            await self.vip.async_acquire()
        if self.discovery is not None:
            await self.discovery.async_publish_endpoint(term)

    async def withdraw_endpoint(self, term: int) -> None:
        if self.vip is not None:
            await self.vip.async_release()
        if self.discovery is not None:
            await self.discovery.async_withdraw_endpoint()

    def role_changed(self, change: RoleChanged) -> None:
        node_id = self.config.node_id
        self.hook.submit(change.new.value, change.term, node_id)
        sdnotify.status(f"{change.new.value} in term {change.term} ({change.reason})")


async def _floating_ip(config: Config) -> FloatingIP | None:
    """The configured floating IP, removed from this node if an earlier run left it here."""
    if not (config.vip and config.vip_interface):
        return None
    # The address's kernel lifetime outlasts a main loop stalled for stall_timeout_s (the core
    # makes such a node FAULT first), and ends 1 s after: a SIGKILLed or paused primary stops
    # answering ARP for it then, where it used to keep it until its daemon restarted.
    lifetime_s = math.ceil(config.stall_timeout_s) + 1
    vip = FloatingIP(config.vip, config.vip_interface, lifetime_s=max(2, lifetime_s))
    if await vip.async_reconcile_at_start():
        log.warning("removed floating IP %s left over from an earlier run", config.vip)
    return vip


def _membership(config: Config) -> Membership:
    witness = config.witness_spec
    return Membership.from_config(
        config.node_id,
        [spec.node_id for spec in config.peer_specs],
        witness.node_id if witness else None,
        two_node=config.two_node,
    )


def _static_peers(config: Config) -> dict[str, Address | None]:
    specs = [*config.peer_specs, *([config.witness_spec] if config.witness_spec else [])]
    return {
        spec.node_id: (spec.host, spec.port) if spec.host and spec.port else None
        for spec in specs
        if spec.node_id != config.node_id
    }


@dataclass
class _Daemon:
    """The running parts of one node, started and stopped in one place."""

    config: Config
    store: SQLiteStore
    node: ClusterNode
    actions: _Actions
    hook: NotifyHook
    server: uvicorn.Server
    server_task: asyncio.Task[None]
    lag_probe: asyncio.Task[None]
    robot_watch: asyncio.Task[None] | None = None
    local_speech: SpeechService | None = None
    speech: PlacedSpeech | None = None
    listening: asyncio.Task[None] | None = None
    wyoming: WyomingServer | None = None


async def serve(config: Config) -> int:
    """Run one node until SIGTERM/SIGINT; the exit status."""
    daemon = await _start(config)
    view = daemon.node.view
    _freeze_heap("the objects made while starting")
    daemon.node.metrics.watch_gc()
    daemon.node.started()  # no preemption to this node before now (see ClusterNode.started)
    sdnotify.ready(f"{view.role.value} in term {view.term}")
    await _wait_for_stop_signal()
    return await _shut_down(daemon)


async def _start(config: Config) -> _Daemon:
    check_startable(config)  # refuse a bad secret or state directory before anything runs
    await _wait_for_network(config)
    store = open_store(config.state_dir)
    boot_id = secrets.randbits(64)  # a nonce, not a clock: see docs/design.md, "Boot ids"
    membership = _membership(config)
    codec = Codec(
        cluster=config.cluster,
        cluster_key=read_cluster_key(config),
        previous_keys=read_accepted_keys(config),
        node_id=config.node_id,
        boot_id=boot_id,
        members=membership.voters,
        # A peer's new boot replaces the old one once the old left a probe unanswered this
        # long: the silence after which the cluster would replace it as primary anyway.
        takeover_s=config.election_timers().election_timeout_s,
        nonce=lambda: secrets.randbits(64),
    )
    metrics = Metrics(config.node_id)
    metrics.describe(config.cluster, config.robot, config.election_timers())
    hook = NotifyHook(config.notify, config.notify_timeout_s)
    actions = _Actions(config, hook)
    actions.vip = await _floating_ip(config)
    node = ClusterNode(
        membership=membership,
        timers=config.election_timers(),
        priority=config.priority,
        codec=codec,
        store=store,
        metrics=metrics,
        actions=actions,
        preempt=config.preempt,
        static_peers=_static_peers(config),
        api_port=config.port,
        retention=(config.journal_max_entries, config.journal_max_age_s),
        stall_s=config.stall_timeout_s,
        starting=True,
    )
    actions.node = node
    if actions.vip is not None:
        actions.vip.may_announce = lambda: node.lease_valid(clock.monotonic())
    robot = make_robot(config.robot, config.network_interface)
    if robot is not None:
        actions.guard = Guard(robot, node, config.node_id)
    elif config.node_id not in membership.witnesses:
        log.warning(
            'robot = "none": this node drives no robot, and every command it runs as primary '
            'fails; fix: robot = "go2" (or the seed\'s --robot-ip/--network-interface) on a '
            "node that reaches the Go2"
        )
    if config.node_id not in membership.witnesses:
        actions.commands = CommandService(
            node, actions.guard, reexecute_window_s=config.reexecute_window_s
        )
    await hook.start()
    # Before the core's thread starts: the collection that freezes the imported modules' heap
    # holds the interpreter lock 100-400 ms, which no heartbeat may wait behind.
    _freeze_heap("the imported modules")
    try:
        await node.start(config.listen_address, config.cluster_port)
    except OSError as exc:
        address, port = (
            ("listen_address", config.listen_address),
            ("cluster_port", config.cluster_port),
        )
        raise BindError("cluster UDP", address, port, exc) from None
    if config.mdns:
        actions.discovery = _discovery(config, node, membership)
        await actions.discovery.async_start(lambda record: _learn(node, record), _forget)
    local_speech = _speech_service(config, membership, metrics)
    speech = placed(local_speech, node, config, metrics.registry)
    ctx = ApiContext(
        config,
        node,
        metrics,
        __version__,
        Vocabulary.load(config.language),
        actions.guard,
        actions.commands,
        speech=speech,
    )
    listener = _listener(ctx)
    app = create_app(ctx)
    server, api_socket = build_server(config, app)
    wyoming = _wyoming(ctx, membership)
    if wyoming is not None:
        await wyoming.async_start()
    server_task = _supervised(server.serve(sockets=[api_socket]), "HTTP server")
    lag_probe = _supervised(_probe_api_loop(node, metrics, config.mdns), "main loop probe")
    daemon = _Daemon(config, store, node, actions, hook, server, server_task, lag_probe)
    daemon.local_speech, daemon.speech, daemon.wyoming = local_speech, speech, wyoming
    daemon.listening = (
        _supervised(listener.async_run(), "live listening")
        if config.audio_sources or config.local_audio_sources
        else None
    )
    if robot is not None:
        daemon.robot_watch = _supervised(_watch_robot(robot, node), "robot watch")
    log.info(
        "node %s of cluster %s: cluster %s:%d, API %s:%d, boot %#x",
        config.node_id,
        config.cluster,
        *node.address,
        config.api_listen_address,
        config.port,
        boot_id,
    )
    return daemon


def _freeze_heap(what: str) -> None:
    """Collect, then move every live object out of the collector's scans (see the module
    docstring); logs how long the collection held the interpreter lock."""
    began = clock.monotonic()
    gc.collect()
    gc.freeze()
    log.info(
        "froze %s out of garbage collection: %d objects, the collection took %.0f ms",
        what,
        gc.get_freeze_count(),
        (clock.monotonic() - began) * 1000,
    )


async def _wait_for_network(config: Config) -> None:
    """Return once the addresses the node binds and advertises exist (interfaces.py), saying
    what it waits for in the log and to systemd: at boot the network may come up after us."""
    reason = network_wait_reason(config)
    if reason is None:
        return
    started = clock.monotonic()
    next_log = started
    while reason is not None:
        waited = clock.monotonic() - started
        text = f"waiting for the network for {waited:.0f} s: {reason}"
        sdnotify.extend_timeout(3 * _NETWORK_POLL_S, text)
        sdnotify.watchdog()
        if clock.monotonic() >= next_log:
            log.warning("%s; checking every %g s", text, _NETWORK_POLL_S)
            next_log += _NETWORK_LOG_EVERY_S
        await asyncio.sleep(_NETWORK_POLL_S)
        reason = network_wait_reason(config)
    log.info("network ready after %.1f s", clock.monotonic() - started)


def _speech_service(
    config: Config, membership: Membership, metrics: Metrics
) -> SpeechService | None:
    """This node's speech workers, loading in the background (a failover never waits for a
    model); None on a witness or with stt_enabled = false."""
    if config.node_id in membership.witnesses or not config.stt_enabled:
        return None
    service = SpeechService(ServiceOptions.from_config(config), config.node_id, metrics)
    service.start()
    return service


def _wyoming(ctx: ApiContext, membership: Membership) -> WyomingServer | None:
    """The Wyoming server on a node with speech (every member but a witness; one without a
    model of its own places the work), unless wyoming_port = 0."""
    config = ctx.config
    if not _serves_wyoming(config, membership):
        return None
    server = WyomingServer(ctx, config.api_listen_address, config.wyoming_port)
    ctx.state["wyoming"] = server  # where /health finds it
    return server


def _serves_wyoming(config: Config, membership: Membership) -> bool:
    return config.wyoming_port != 0 and config.node_id not in membership.witnesses


def _listener(ctx: ApiContext) -> Listener:
    """Live listening (voice/listening.py), where /api/voice/status finds it."""
    listener = Listener(ctx)
    ctx.state["listener"] = listener
    return listener


def _supervised(coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task the node cannot do without: its end, unless we cancel it, ends the process."""
    task = asyncio.create_task(coroutine, name=name)
    task.add_done_callback(must_not_end)
    return task


def _discovery(config: Config, node: ClusterNode, membership: Membership) -> Discovery:
    if config.node_id in membership.witnesses:
        capabilities: tuple[str, ...] = ("witness",)
    else:  # "stt": this node has speech configured (ready or not: its load reports say)
        capabilities = ("robot", "stt") if config.stt_enabled else ("robot",)
    return Discovery(
        cluster=config.cluster,
        node_id=config.node_id,
        address=config.listen_address,  # 0.0.0.0: discovery picks one (interfaces.py)
        cluster_port=node.address[1],
        api_port=config.port,
        priority=config.priority,
        version=__version__,
        capabilities=capabilities,
        api_scheme=api_scheme(config),
        wyoming_port=config.wyoming_port if _serves_wyoming(config, membership) else 0,
    )


def _learn(node: ClusterNode, record: PeerRecord) -> None:
    address = (record.host, record.cluster_port)
    node.learn_peer(record.node_id, address, record.priority, record.api_port)


def _forget(node_id: str) -> None:
    # A goodbye only means the record went away; the election decides who is alive.
    log.info("mDNS: %s withdrew its record", node_id)


async def _watch_robot(robot: Robot, node: ClusterNode) -> None:
    """Tell the core whether the robot answers, and if not why (the connect error, verbatim):
    a node that cannot reach it does not lead. Each new reason is logged once, at warning."""
    known: tuple[bool, str] | None = None
    while True:
        reachable, why = await robot.reachable(), "no answer to the probe"
        if not reachable:
            try:
                await robot.connect()
                reachable = await robot.reachable()
            except RobotError as exc:
                why = str(exc)
        state = (reachable, "" if reachable else why)
        if state != known:
            if reachable:
                log.info("robot reachable")
            else:
                log.warning("robot unreachable: %s", why)
            node.set_robot_reachable(*state)
            known = state
        await asyncio.sleep(_ROBOT_POLL_S)


async def _probe_api_loop(node: ClusterNode, metrics: Metrics, mdns: bool) -> None:
    """How late this loop (API, robot, discovery) wakes us (requests wait as long, or longer),
    and the sign of life the core needs to keep leading (runner.py: a stuck loop is a stall).
    A node without a primary says why in the log, while it lasts (`ProblemLog`)."""
    timeout_s = node.timers.election_timeout_s
    quorum = ProblemLog(log, "no primary", grace_s=3 * timeout_s)
    probe = LagProbe("main", metrics, interval_s=_LAG_PROBE_S)
    while True:
        probe.expect(clock.monotonic() + _LAG_PROBE_S)
        node.main_loop_alive()
        await asyncio.sleep(_LAG_PROBE_S)
        now = clock.monotonic()
        probe.observe(now)
        quorum.check(node.view.no_primary_reason(now, timeout_s, mdns), now)


async def _wait_for_stop_signal() -> None:
    """Return on the first SIGTERM or SIGINT; a second one exits the process at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def first(signum: int) -> None:
        log.info("%s: handing over and stopping (again to force)", signal.Signals(signum).name)
        stop.set()
        for again in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(again, lambda: os._exit(_FORCED_EXIT))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, first, signum)
    await stop.wait()


async def _shut_down(daemon: _Daemon) -> int:
    """Hand over, withdraw, drain, stop: within `shutdown_timeout_s` whatever happens."""
    sdnotify.stopping()
    # The unit's TimeoutStopSec covers the default budget; a larger one is asked for here.
    sdnotify.extend_timeout(daemon.config.shutdown_timeout_s + _STOP_MARGIN_S)
    node, actions = daemon.node, daemon.actions
    deadline = clock.monotonic() + daemon.config.shutdown_timeout_s
    # The core withdraws the endpoint itself when it hands over; only a primary left over
    # (nobody to hand to, or out of time) needs it done here.
    if not await node.shutdown(max(0.1, (deadline - clock.monotonic()) * 0.6)):
        log.warning("still primary at shutdown: withdrawing the endpoint anyway")
        await _bounded(actions.withdraw_endpoint(node.view.term), deadline)
    if actions.discovery is not None:
        await _bounded(actions.discovery.async_close(), deadline)
    if actions.vip is not None:
        await _bounded(actions.vip.async_close(), deadline)
    if daemon.listening is not None:  # sources closed before the speech they feed
        daemon.listening.remove_done_callback(must_not_end)
        daemon.listening.cancel()
        await _bounded(asyncio.gather(daemon.listening, return_exceptions=True), deadline)
    if daemon.wyoming is not None:
        await _bounded(daemon.wyoming.async_close(), deadline)
    daemon.server_task.remove_done_callback(must_not_end)
    daemon.server.should_exit = True
    await _bounded(asyncio.shield(daemon.server_task), deadline)
    await _bounded(daemon.hook.stop(max(0.0, deadline - clock.monotonic())), deadline)
    if daemon.speech is not None:
        await _bounded(daemon.speech.aclose(), deadline)
    if daemon.local_speech is not None:
        remaining_s = max(0.0, deadline - clock.monotonic())
        await _bounded(daemon.local_speech.async_close(remaining_s), deadline)
    for task in (daemon.lag_probe, daemon.robot_watch):
        if task is not None:
            task.remove_done_callback(must_not_end)
            task.cancel()
    await node.stop()
    daemon.store.close()
    log.info("stopped")
    return 0


async def _bounded(awaitable: object, deadline: float) -> None:
    """Await with what is left of the shutdown budget; past it, give up quietly."""
    remaining = max(0.05, deadline - clock.monotonic())
    try:
        await asyncio.wait_for(awaitable, remaining)  # type: ignore[arg-type]
    except asyncio.TimeoutError:
        log.warning("shutdown step timed out")
    except Exception:
        log.exception("shutdown step failed")


def run(config: Config) -> int:
    """Blocking entry point for `ha-voice run`."""
    listener = log_through_a_queue(config.log_level.upper())
    try:
        return asyncio.run(serve(config))
    finally:
        listener.stop()
