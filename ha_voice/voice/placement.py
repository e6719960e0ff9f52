"""Speech work on the least loaded ready member: this node's own service, or another member's.

The seed sent audio through a load balancer to the least loaded Jetson; here every node places
the work it receives itself, from the loads its peers report (cluster/protocol.py `Load`, on
heartbeats, acks and load reports), so there is no balancer to fail.

Invariants:
- Only ready nodes are chosen (`Load.ready`, reported within `FRESH_S`); best first by speech
  jobs per worker (running + queued, plus what this node handed it since: its report may not
  show them yet), then CPU in quarters (finer differences are sampling noise, not worth a hop),
  then this node before any other: on a tie the work stays here, with no network hop.
- A node that fails mid-job (refused, reset, not heard for `FRESH_S`, 5xx, an answer
  that is not a `Recognition`) is left for the next best, this node included; each is tried at
  most once per job, and `deadline_s` bounds the whole. The client sees only latency.
- A hand-off goes to the member's internal route (api/speech_handoff.py), sealed with the
  cluster key like a forward (api/forward_seal.py); that route runs the work on its node's own
  service and never hands it on, so work cannot loop.
- Batch work (`async_transcribe`) goes at batch priority on every node it is tried on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx
import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ha_voice import clock
from ha_voice.api.auth import FORWARD_SEAL, FORWARDED_BY
from ha_voice.api.forward_seal import ForwardSeal, Recipient
from ha_voice.api.tls import api_scheme, client_context
from ha_voice.cluster.node import ClusterNode
from ha_voice.cluster.protocol import Load, NodeId
from ha_voice.cluster.runner import LOAD_REPORT_S
from ha_voice.cluster.view import NodeView
from ha_voice.config import Config, read_accepted_keys, read_cluster_key
from ha_voice.voice.load import LoadSampler
from ha_voice.voice.speech import (
    Audio,
    Priority,
    Recognition,
    Speech,
    SpeechStatus,
    SpeechUnavailable,
    Transcription,
)

__all__ = [
    "FRESH_S",
    "HANDOFF_PATH",
    "OUTCOMES",
    "PlacedSpeech",
    "PlacementMetrics",
    "choose",
    "placed",
    "transcription_from_json",
    "transcription_to_json",
]

log = logging.getLogger(__name__)

# A peer's load is believed this long after it was reported: four reports may be lost first.
FRESH_S: Final = 4 * LOAD_REPORT_S
HANDOFF_PATH: Final = "/internal/speech"
# local / remote: where a job finally ran; retried: an attempt that failed and moved on;
# failed: no node could do it within the deadline.
OUTCOMES: Final = ("local", "remote", "retried", "failed")
# Longest a job may take across all its attempts: a 30 s clip queued behind a few others.
DEADLINE_S: Final = 60.0
_CPU_STEPS: Final = 4  # CPU compared in quarters
Kind = Literal["recognise", "transcribe"]


def choose(
    own: NodeId,
    loads: Mapping[NodeId, Load],
    *,
    handed: Mapping[NodeId, int] | None = None,
) -> list[NodeId]:
    """The ready nodes among `loads` (this node `own` included, if it is in it), best first.

    `handed` counts the jobs this node has handed each peer and not yet had back: a peer's
    jobs are at least that many, whatever its last report said."""
    handed = handed or {}

    def key(node: NodeId) -> tuple[float, int, bool, NodeId]:
        load = loads[node]
        jobs = max(load.running + load.queued, handed.get(node, 0))
        cpu = min(math.floor(load.cpu * _CPU_STEPS), _CPU_STEPS - 1)
        return jobs / max(load.workers, 1), cpu, node != own, node

    return sorted((node for node, load in loads.items() if load.ready), key=key)


def peer_loads(view: NodeView, now: float, fresh_s: float = FRESH_S) -> dict[NodeId, Load]:
    """The loads peers reported within `fresh_s` seconds of `now` (monotonic)."""
    return {
        node: peer.load
        for node, peer in view.peers.items()
        if peer.load is not None
        and peer.load_heard_at is not None
        and now - peer.load_heard_at <= fresh_s
    }


class PlacementMetrics:
    """Where speech work went, and what peers report (read from the view at scrape)."""

    def __init__(self, registry: CollectorRegistry, view: Callable[[], NodeView]) -> None:
        self.handoffs = Counter(
            "ha_voice_speech_handoffs",
            "Speech jobs by where they ran (local, remote), attempts that failed over "
            "(retried), and jobs no node could do (failed)",
            ["outcome"],
            registry=registry,
        )
        self.placed = Counter(
            "ha_voice_speech_placed",
            "Speech job attempts by the member chosen for them",
            ["node"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.handoffs.labels(outcome)
        registry.register(_PeerLoadCollector(view))


class _PeerLoadCollector(Collector):
    """`ha_voice_peer_speech_queue{peer}` and `ha_voice_peer_speech_ready{peer}`, per member."""

    def __init__(self, view: Callable[[], NodeView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "ha_voice_peer_speech_queue",
            "Speech jobs (running + queued) a peer last reported",
            labels=["peer"],
        )
        ready = GaugeMetricFamily(
            "ha_voice_peer_speech_ready",
            f"1 if a peer reported within {FRESH_S:g} s that it takes speech work, else 0",
            labels=["peer"],
        )
        view = self._view()
        fresh = peer_loads(view, clock.monotonic())
        for node, peer in sorted(view.peers.items()):
            if peer.load is not None:
                queue.add_metric([node], peer.load.running + peer.load.queued)
            ready.add_metric([node], 1.0 if node in fresh and fresh[node].ready else 0.0)
        yield queue
        yield ready


class _PeerFailed(Exception):
    """One attempt on a peer failed in a way another node may not: try the next."""


@dataclass(frozen=True)
class _Job:
    kind: Kind
    audio: Audio
    language: str | None
    priority: Priority
    prompt: str | None = None


class PlacedSpeech:
    """`Speech` on the least loaded ready member; `local` is this node's own service."""

    def __init__(
        self,
        local: Speech | None,
        node: ClusterNode,
        sampler: LoadSampler,
        handoff: HandOff,
        metrics: PlacementMetrics,
        *,
        deadline_s: float = DEADLINE_S,
    ) -> None:
        self.local = local
        self._node = node
        self._sampler = sampler
        self._handoff = handoff
        self._metrics = metrics
        self._deadline_s = deadline_s
        self._handed: dict[NodeId, int] = {}

    def status(self) -> SpeechStatus:
        """This node's own speech state (what /health reports of this node)."""
        if self.local is None:
            return SpeechStatus(configured="", ready=False, reason="disabled: no speech here")
        return self.local.status()

    async def async_recognise(
        self, audio: Audio, language: str, *, priority: Priority = "command"
    ) -> Recognition:
        """`Speech.async_recognise` on the least loaded ready member."""
        answer = await self._place(_Job("recognise", audio, language, priority))
        assert isinstance(answer, Recognition)
        return answer

    async def async_transcribe(
        self, audio: Audio, language: str | None, prompt: str | None = None
    ) -> Transcription:
        """`Speech.async_transcribe` on the least loaded ready member, at batch priority."""
        answer = await self._place(_Job("transcribe", audio, language, "batch", prompt))
        assert isinstance(answer, Transcription)
        return answer

    async def aclose(self) -> None:
        """Stop sampling and close the hand-off client."""
        self._sampler.stop()
        await self._handoff.aclose()

    async def _place(self, job: _Job) -> Recognition | Transcription:
        deadline = clock.monotonic() + self._deadline_s
        tried: set[NodeId] = set()
        why = "no member is ready for speech work"
        while clock.monotonic() < deadline:
            ranked = choose(self._node.node_id, self._loads(), handed=self._handed)
            order = [node for node in ranked if node not in tried]
            if not order:
                break
            chosen = order[0]
            tried.add(chosen)
            log.debug("speech %s on %s (ranked %s)", job.kind, chosen, order)
            self._metrics.placed.labels(chosen).inc()
            try:
                answer = await asyncio.wait_for(
                    self._attempt(chosen, job), max(0.0, deadline - clock.monotonic())
                )
            except (_PeerFailed, SpeechUnavailable, asyncio.TimeoutError) as exc:
                if isinstance(exc, SpeechUnavailable) and exc.status != 503:
                    raise  # the work itself is refused (413): so it would be anywhere
                why = f"{chosen}: {str(exc) or f'no answer within {self._deadline_s:g} s'}"
                log.warning("speech %s on %s failed, trying the next: %s", job.kind, chosen, why)
                self._metrics.handoffs.labels("retried").inc()
                continue
            local = chosen == self._node.node_id
            self._metrics.handoffs.labels("local" if local else "remote").inc()
            return answer
        self._metrics.handoffs.labels("failed").inc()
        log.warning("speech %s not done: %s", job.kind, why)
        raise SpeechUnavailable(f"speech work not done: {why}")

    def _loads(self) -> dict[NodeId, Load]:
        loads = peer_loads(self._node.view, clock.monotonic())
        own = self.own_load()
        if own is not None:
            loads[self._node.node_id] = own
        return loads

    def own_load(self) -> Load | None:
        """This node's load now: its service's status is live, the CPU the sampler's."""
        if self.local is None:
            return None
        status = self.local.status()
        return Load(
            ready=status.ready,
            workers=status.workers,
            running=status.running,
            queued=status.queued,
            cpu=self._sampler.latest.cpu,
        )

    async def _attempt(self, node: NodeId, job: _Job) -> Recognition | Transcription:
        if node == self._node.node_id:
            return await _run_locally(self.local, job)
        self._handed[node] = self._handed.get(node, 0) + 1
        try:
            return await self._handoff.send(node, job)
        finally:
            self._handed[node] -= 1
            if not self._handed[node]:
                del self._handed[node]


async def _run_locally(local: Speech | None, job: _Job) -> Recognition | Transcription:
    """`job` on this node's own service (never placed again: the hand-off route's end)."""
    if local is None:
        raise SpeechUnavailable("this node has no speech service")
    if job.kind == "transcribe":
        return await local.async_transcribe(job.audio, job.language, job.prompt)
    assert job.language is not None
    return await local.async_recognise(job.audio, job.language, priority=job.priority)


class HandOff:
    """Sends speech work to another member's hand-off route, sealed with the cluster key."""

    def __init__(self, config: Config, node: ClusterNode) -> None:
        members = [spec.node_id for spec in config.peer_specs]
        self._seal = ForwardSeal(
            cluster=config.cluster,
            keys=(read_cluster_key(config), *read_accepted_keys(config)),
            node_id=config.node_id,
            members=members,
        )
        self._node = node
        self._scheme = api_scheme(config)
        # TCP_NODELAY as for forwards; with TLS the peer's certificate is verified first.
        transport = httpx.AsyncHTTPTransport(
            verify=client_context(config) or True,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        self._client = httpx.AsyncClient(transport=transport)
        # A peer other than the primary is heard only in its load reports: silence is judged
        # over as many of them as make a load stale, and never under an election timeout.
        self._silence_s = max(node.timers.election_timeout_s, FRESH_S)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def send(self, node: NodeId, job: _Job) -> Recognition | Transcription:
        """`job` done by `node`; _PeerFailed if it failed or fell silent on the way."""
        call = asyncio.ensure_future(self._post(node, job))
        watch = asyncio.ensure_future(self._until_silent(node))
        try:
            await asyncio.wait({call, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (call, watch):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if call.cancelled():
            raise _PeerFailed(watch.result())
        return call.result()

    async def _post(self, node: NodeId, job: _Job) -> Recognition | Transcription:
        view = self._node.view
        peer = view.peers.get(node)
        if peer is None or peer.address is None or not peer.api_port or peer.boot is None:
            raise _PeerFailed("its address, HTTP port or boot is not known yet")
        body = np.ascontiguousarray(job.audio, dtype="<f4").tobytes()
        path = f"{HANDOFF_PATH}/{job.kind}"
        to = Recipient(node, peer.boot, peer.clock_offset_s or 0.0)
        seal = self._seal.seal("POST", path, "?", "network", body, to, boot=view.boot_id)
        params = {"priority": job.priority, "format": "f32"}
        if job.language is not None:
            params["language"] = job.language
        if job.prompt is not None:
            params["prompt"] = job.prompt
        try:
            answer = await self._client.post(
                f"{self._scheme}://{_host(peer.address[0])}:{peer.api_port}{path}",
                params=params,
                content=body,
                headers={FORWARDED_BY: view.node_id, FORWARD_SEAL: seal},
                timeout=httpx.Timeout(DEADLINE_S, connect=self._silence_s),
            )
        except httpx.HTTPError as exc:
            raise _PeerFailed(f"{type(exc).__name__}: {exc}") from None
        return _answer(answer, job.kind)

    async def _until_silent(self, node: NodeId) -> str:
        """Wait while `node` is heard (within `_silence_s`); then say so."""
        while True:
            peer = self._node.view.peers.get(node)
            heard = None if peer is None else peer.last_heard_at
            silent_s = math.inf if heard is None else clock.monotonic() - heard
            if silent_s >= self._silence_s:
                return f"not heard for {min(silent_s, 1e9):.1f} s"
            await asyncio.sleep(max(self._silence_s - silent_s, LOAD_REPORT_S / 2))


def _answer(answer: httpx.Response, kind: Kind) -> Recognition | Transcription:
    if answer.status_code == 413:
        raise SpeechUnavailable("audio over the hand-off limit", status=413)
    if answer.status_code != 200:
        raise _PeerFailed(f"answered {answer.status_code}: {answer.text[:200]}")
    try:
        data = answer.json()
        if kind == "transcribe":
            return transcription_from_json(data)
        return Recognition.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise _PeerFailed(f"answered no {kind} result ({exc})") from None


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def transcription_to_json(t: Transcription) -> dict[str, Any]:
    """`t` as JSON-ready values (segments as [start_s, end_s, text] lists)."""
    return {
        "text": t.text,
        "language": t.language,
        "duration_s": t.duration_s,
        "segments": [list(segment) for segment in t.segments],
        "model": t.model,
        "stt_ms": t.stt_ms,
        "node": t.node,
    }


def transcription_from_json(data: dict[str, Any]) -> Transcription:
    """The inverse of `transcription_to_json`; KeyError/TypeError/ValueError if malformed."""
    return Transcription(
        text=str(data["text"]),
        language=str(data["language"]),
        duration_s=float(data["duration_s"]),
        segments=tuple((float(a), float(b), str(text)) for a, b, text in data["segments"]),
        model=str(data["model"]),
        stt_ms=float(data["stt_ms"]),
        node=str(data.get("node", "")),
    )


def placed(
    local: Speech | None, node: ClusterNode, config: Config, registry: CollectorRegistry
) -> PlacedSpeech:
    """`local` (this node's speech service, None without one) spread over the cluster: its
    load sampled and reported in heartbeats, work placed on the least loaded ready member."""
    sampler = LoadSampler(None if local is None else local.status)
    sampler.start()
    node.set_load_source(sampler)
    metrics = PlacementMetrics(registry, lambda: node.view)
    return PlacedSpeech(local, node, sampler, HandOff(config, node), metrics)
