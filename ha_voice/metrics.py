"""Prometheus metrics of one daemon, on a registry of its own.

Names follow Prometheus conventions (`promtool check metrics` passes): `ha_voice_` prefix, base
units (seconds), `_total` for counters. Values that are cheaper to read than to track —
time since a peer was last heard, votes counted by the core — are collected at scrape time
from the node (`ClusterCollector`), never updated from the heartbeat path.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ha_voice.cluster.events import TAKEOVER_CAUSES, Role
from ha_voice.cluster.protocol import DROP_REASONS, LOAD_DROP_REASONS
from ha_voice.cluster.view import PRIMARY_WITHOUT_LEASE

if TYPE_CHECKING:
    from ha_voice.cluster.timers import ElectionTimers
    from ha_voice.voice.speech import SpeechStatus

__all__ = ["SPEECH_OUTCOMES", "ClusterSnapshot", "Metrics", "PeerSample"]

# Heartbeat round trips on a LAN are sub-millisecond; Wi-Fi retries reach tens of ms.
_RTT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# Failover is about one election timeout: 0.5 s wired, 2 s Wi-Fi.
_ELECTION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Heartbeats are sent within a fraction of a millisecond of their time on an idle node.
_LATENESS_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
_COMMAND_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A command is recognised in ~0.1-0.4 s on two CPU cores; free transcription of 30 s takes
# seconds; stt_job_timeout_s is at most 600 s.
_SPEECH_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 600.0)
# The outcomes of a recognition: an intent, a rejection, or no speech at all.
SPEECH_OUTCOMES = ("accepted", "rejected", "no_speech")


@dataclass(frozen=True)
class PeerSample:
    """One peer as seen at scrape time."""

    node: str
    seconds_since_heard: float | None
    alive: bool


# Every value of ha_voice_role's label: the election's roles and a primary without a lease.
ROLES = (*(role.value for role in Role), PRIMARY_WITHOUT_LEASE)


@dataclass(frozen=True)
class ClusterSnapshot:
    """What the collector reads from the node at scrape time."""

    peers: tuple[PeerSample, ...]
    lease_remaining_s: float
    votes_granted: int
    votes_denied: int
    lease_renew_failures: int
    elections_started: int
    implausible_terms: int = 0
    journal_last_index: int = 0
    journal_commit_index: int = 0
    journal_first_index: int = 1
    journal_commands: int = 0
    journal_unfinished: int = 0
    journal_snapshots_installed: int = 0
    storage_write_pending_s: float = 0.0
    role: str = ""  # the role to report (NodeView.shown_role): "primary" only with a lease


class ClusterCollector(Collector):
    """Reads a `ClusterSnapshot` when Prometheus scrapes."""

    def __init__(self, snapshot: Callable[[], ClusterSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        since = GaugeMetricFamily(
            "ha_voice_peer_last_heard_seconds",
            "Seconds since the last valid message from each peer",
            labels=["peer"],
        )
        for peer in snap.peers:
            if peer.seconds_since_heard is not None:
                since.add_metric([peer.node], peer.seconds_since_heard)
        yield since
        yield GaugeMetricFamily(
            "ha_voice_peers_known", "Peers in the address book", value=len(snap.peers)
        )
        alive = sum(peer.alive for peer in snap.peers)
        yield GaugeMetricFamily(
            "ha_voice_peers_alive", "Peers heard within an election timeout", value=alive
        )
        yield GaugeMetricFamily(
            "ha_voice_lease_remaining_seconds",
            "Seconds this node may still command the robot without a renewal (0 unless primary)",
            value=max(snap.lease_remaining_s, 0.0),
        )
        # The role as /health and /cluster report it at this instant: a primary whose lease lapsed
        # is primary_without_lease here too, not "primary" until its core notices.
        roles = GaugeMetricFamily(
            "ha_voice_role", "1 for the role this node is in", labels=["role"]
        )
        for role in ROLES:
            roles.add_metric([role], 1 if role == snap.role else 0)
        yield roles
        # Read from the lease at scrape time, not set when the role changes: a lapsed lease
        # (a stuck core, a primary that has not heard a quorum) shows at once, and since leases
        # never overlap, sum(ha_voice_is_primary) over the cluster is never above 1.
        yield GaugeMetricFamily(
            "ha_voice_is_primary",
            "1 while primary with a valid lease (at the moment of the scrape)",
            value=1 if snap.lease_remaining_s > 0 else 0,
        )
        for name, help_text, value in (
            ("ha_voice_votes_granted", "Pre-votes and votes this node granted", snap.votes_granted),
            ("ha_voice_votes_denied", "Pre-votes and votes this node refused", snap.votes_denied),
            (
                "ha_voice_lease_renew_failures",
                "Times this node stepped down because no quorum renewed its lease",
                snap.lease_renew_failures,
            ),
            ("ha_voice_elections_started", "Elections this node started", snap.elections_started),
            (
                "ha_voice_implausible_terms",
                "Messages dropped for a term more than 2**32 past this node's: only someone "
                "holding the cluster key, misbehaving, sends them",
                snap.implausible_terms,
            ),
            (
                "ha_voice_journal_snapshots_installed",
                "Snapshots this node installed because it was too far behind for entries",
                snap.journal_snapshots_installed,
            ),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        gauges: tuple[tuple[str, str, float], ...] = (
            (
                "ha_voice_journal_last_index",
                "Index of the last journal entry",
                snap.journal_last_index,
            ),
            (
                "ha_voice_journal_commit_index",
                "Index of the last committed journal entry",
                snap.journal_commit_index,
            ),
            (
                "ha_voice_journal_first_index",
                "Oldest journal entry still kept (older ones are in the snapshot)",
                snap.journal_first_index,
            ),
            (
                "ha_voice_journal_commands",
                "Commands the journal keeps (retention: journal_max_entries, journal_max_age_s)",
                snap.journal_commands,
            ),
            (
                "ha_voice_journal_unfinished",
                "Committed commands without an outcome yet",
                snap.journal_unfinished,
            ),
            (
                "ha_voice_storage_write_pending_seconds",
                "How long the write now on the disk has waited (0: none); a stall makes FAULT",
                snap.storage_write_pending_s,
            ),
        )
        for name, help_text, gauge in gauges:
            yield GaugeMetricFamily(name, help_text, value=gauge)


class Metrics:
    """Every metric the daemon exports, registered on `self.registry`."""

    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # `robot` is the backend's kind, none, sim or go2: a node with none (a witness, a node
        # that only transcribes) never reaches a robot, and alerts leave it out.
        self.info = Gauge(
            "ha_voice_node_info",
            "Static facts about this node",
            ["node", "cluster", "robot"],
            registry=r,
        )
        # The election's durations, so that alerts judge a round trip against this cluster's
        # timers (election_timeout is 0.5 s wired, 2 s on Wi-Fi), as cluster/timers.py does.
        self.timer_seconds = Gauge(
            "ha_voice_timer_seconds",
            "The configured election timers: heartbeat_interval, election_timeout, lease",
            ["timer"],
            registry=r,
        )
        self.term = Gauge("ha_voice_term", "Current election term", registry=r)
        self.failovers = Counter(
            "ha_voice_failovers",
            "Terms this node won after another primary, by why it stood: evidence (its own "
            "probe found the old primary's process gone), timeout, transfer or resignation",
            ["cause"],
            registry=r,
        )
        for cause in TAKEOVER_CAUSES:
            self.failovers.labels(cause)
        self.leader_probes = Counter(
            "ha_voice_leader_probes",
            "Probes of a silent primary's ports for evidence that its process is gone, by "
            "result: gone (both refused) or no_evidence",
            ["result"],
            registry=r,
        )
        for result in ("gone", "no_evidence"):
            self.leader_probes.labels(result)
        self.leader_changes = Counter(
            "ha_voice_leader_changes", "Times this node saw the primary change", registry=r
        )
        self.election_duration = Histogram(
            "ha_voice_election_duration_seconds",
            "From the last heartbeat of the old primary to this node's first valid lease",
            buckets=_ELECTION_BUCKETS,
            registry=r,
        )
        self.heartbeat_rtt = Histogram(
            "ha_voice_heartbeat_rtt_seconds",
            "Round trip of heartbeats, measured by the primary, by peer (members only)",
            ["peer"],
            buckets=_RTT_BUCKETS,
            registry=r,
        )
        self.packets_dropped = Counter(
            "ha_voice_cluster_packets_dropped",
            "Cluster datagrams dropped, by reason",
            ["reason"],
            registry=r,
        )
        self.loads_dropped = Counter(
            "ha_voice_cluster_loads_dropped",
            "Peers' speech loads left out of a heartbeat, ack or load report that was kept "
            "(malformed), by reason",
            ["reason"],
            registry=r,
        )
        self.identity_conflicts = Gauge(
            "ha_voice_identity_conflicts",
            "Node ids that two live processes claim, as this node sees or is told (see /cluster)",
            registry=r,
        )
        self.packets_received = Counter(
            "ha_voice_cluster_packets_received", "Cluster datagrams accepted", registry=r
        )
        self.packets_sent = Counter(
            "ha_voice_cluster_packets_sent", "Cluster datagrams sent", registry=r
        )
        self.loop_lag = Histogram(
            "ha_voice_event_loop_lag_seconds",
            "How late an event loop woke a timer, by loop: core (heartbeats, votes; its lag "
            "delays heartbeats as much) or main (HTTP, robot, discovery)",
            ["loop"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "ha_voice_event_loop_lag_max_seconds",
            "The worst lag of the last 10 s, by loop (see ha_voice_event_loop_lag_seconds)",
            ["loop"],
            registry=r,
        )
        self.persist_duration = Histogram(
            "ha_voice_hard_state_persist_seconds",
            "Time to make term, vote and journal changes durable (fsync)",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.writes_per_fsync = Histogram(
            "ha_voice_storage_writes_per_fsync",
            "Steps' writes made durable together by one transaction (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.heartbeat_lateness = Histogram(
            "ha_voice_heartbeat_lateness_seconds",
            "How long after it was due the primary sent each heartbeat",
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        self.core_turn = Histogram(
            "ha_voice_core_turn_seconds",
            "Time the core takes for one turn: step a batch of inputs, apply their effects",
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        self.core_queue_delay = Histogram(
            "ha_voice_core_queue_delay_seconds",
            "From a cluster datagram's arrival to the core stepping it",
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        self.healthy = Gauge(
            "ha_voice_healthy",
            "1 while /health says ok; 0 while degraded or failing (the reason is on /health)",
            registry=r,
        )
        self.serving = Gauge(
            "ha_voice_serving",
            "1 while /cluster/primary answers 200: the primary with a valid lease whose takeover "
            "(robot made safe, journal settled) is done",
            registry=r,
        )
        self.robot_reachable = Gauge(
            "ha_voice_robot_reachable",
            "1 while the robot answers this node's probe (/health's robot_connected), at the "
            "moment of the scrape",
            registry=r,
        )
        self.gc_pause = Histogram(
            "ha_voice_gc_pause_seconds",
            "Garbage collections of the daemon's interpreter, by generation: each holds every "
            "thread, the election core's included, for its whole length",
            ["generation"],
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        self.notify_failures = Counter(
            "ha_voice_notify_hook_failures", "Notify hook runs that failed or timed out", registry=r
        )
        self.forwarded = Counter(
            "ha_voice_requests_forwarded",
            "Commands this node forwarded to the primary (it was a backup)",
            registry=r,
        )
        self.commands = Counter(
            "ha_voice_commands",
            "Commands answered by this node as primary, by final status",
            ["status"],
            registry=r,
        )
        self.command_duplicates = Counter(
            "ha_voice_command_duplicates",
            "Commands answered from the journal because their idempotency key was known",
            registry=r,
        )
        self.command_latency = Histogram(
            "ha_voice_command_seconds",
            "Journal append to committed outcome, on the primary (moves include their duration)",
            buckets=_COMMAND_BUCKETS,
            registry=r,
        )
        self.speech_seconds = Histogram(
            "ha_voice_speech_seconds",
            "Speech jobs on this node from submission to answer, queueing included, by kind "
            "(recognise, transcribe)",
            ["model", "node", "kind"],
            buckets=_SPEECH_BUCKETS,
            registry=r,
        )
        self.speech_queue_depth = Gauge(
            "ha_voice_speech_queue_depth", "Speech jobs waiting for a worker", registry=r
        )
        self.speech_running = Gauge(
            "ha_voice_speech_running", "Speech jobs a worker is working on", registry=r
        )
        self.speech_ready = Gauge(
            "ha_voice_speech_ready",
            "1 while at least one speech worker has its model loaded",
            registry=r,
        )
        self.speech_worker_restarts = Counter(
            "ha_voice_speech_worker_restarts",
            "Speech worker processes started again after one died or was killed",
            registry=r,
        )
        self.speech_results = Counter(
            "ha_voice_speech_results",
            "Recognitions on this node by outcome (accepted, rejected, no_speech)",
            ["outcome"],
            registry=r,
        )
        self.speech_intents = Counter(
            "ha_voice_speech_intents",
            "Recognitions on this node that named an intent, by intent (the vocabulary's names)",
            ["intent"],
            registry=r,
        )
        self.wyoming_transcripts = Counter(
            "ha_voice_wyoming_transcripts",
            "Wyoming utterances answered, by outcome (transcript: text only; command: a "
            "command ran on the primary; not_run: the primary could not be reached or refused "
            "it; busy: the primary's queue was full; rejected: no intent, in command mode)",
            ["outcome"],
            registry=r,
        )
        self.wyoming_refused = Counter(
            "ha_voice_wyoming_refused",
            "Wyoming connections closed for what the client sent or did, by reason",
            ["reason"],
            registry=r,
        )
        for outcome in SPEECH_OUTCOMES:
            self.speech_results.labels(outcome)
        for status in ("done", "stopped", "failed", "unknown"):
            self.commands.labels(status)
        for reason in (*DROP_REASONS, "unknown_peer"):
            self.packets_dropped.labels(reason)
        for reason in LOAD_DROP_REASONS:
            self.loads_dropped.labels(reason)
        self.node_id = node_id

    def watch_gc(self) -> Callable[[str, dict[str, int]], None]:
        """Time every garbage collection from now on (`gc.callbacks`); the callback added (to
        remove it again).

        A collection can start inside any allocation, also one made while this thread holds
        the histogram's own lock (a scrape copying its children): the callback must not take
        that lock, so it observes into children resolved here, whose locks guard float sums
        only (nothing in there allocates, so no collection starts while they are held)."""
        children = {gen: self.gc_pause.labels(str(gen)) for gen in range(3)}
        started: list[float] = []

        def observe(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[:] = [time.perf_counter()]
            elif started:
                child = children.get(info["generation"])
                if child is not None:
                    child.observe(time.perf_counter() - started[0])

        gc.callbacks.append(observe)
        return observe

    def attach(self, snapshot: Callable[[], ClusterSnapshot]) -> None:
        """Export the node's scrape-time values."""
        self.registry.register(ClusterCollector(snapshot))

    def attach_speech(self, status: Callable[[], SpeechStatus]) -> None:
        """Read the speech service's queue, running jobs and readiness at scrape time."""
        self.speech_queue_depth.set_function(lambda: status().queued)
        self.speech_running.set_function(lambda: status().running)
        self.speech_ready.set_function(lambda: 1 if status().ready else 0)

    def describe(self, cluster: str, robot: str, timers: ElectionTimers) -> None:
        """Set the static facts: this node of `cluster`, its `robot` setting (go2, sim,
        sim://HOST:PORT or none; exported as its kind) and its election `timers`."""
        kind = "sim" if robot.startswith("sim") else robot
        self.info.labels(self.node_id, cluster, kind).set(1)
        self.timer_seconds.labels("heartbeat_interval").set(timers.heartbeat_interval_s)
        self.timer_seconds.labels("election_timeout").set(timers.election_timeout_s)
        self.timer_seconds.labels("lease").set(timers.lease_timeout_s)

    def set_term(self, term: int) -> None:
        self.term.set(term)

    def render(self) -> bytes:
        return generate_latest(self.registry)
