"""PlacedSpeech's attempts: best first, each node once, the next on a failure, within a deadline.

The local service and the hand-off are in-memory twins: what is tested is the order of the
attempts and what the caller gets, not speech (tests/integration/test_speech_placement.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ha_voice import clock
from ha_voice.cluster.protocol import Load
from ha_voice.cluster.view import PeerInfo
from ha_voice.voice.placement import (
    PlacedSpeech,
    PlacementMetrics,
    _PeerFailed,
    transcription_from_json,
    transcription_to_json,
)
from ha_voice.voice.speech import (
    Recognition,
    SpeechStatus,
    SpeechUnavailable,
    Transcription,
)
from tests.unit.test_placement_choice import view

AUDIO = np.zeros(1600, dtype=np.float32)


def recognition(node: str) -> Recognition:
    return Recognition("stop", "stop", "stop", 0.9, (), None, "nl", "base", 12.0, node)


@dataclass
class LocalTwin:
    """This node's service: `ready`, `running` jobs, and what it does when asked."""

    ready: bool = True
    running: int = 0
    fails: SpeechUnavailable | None = None
    calls: list[str] = field(default_factory=list)

    def status(self) -> SpeechStatus:
        return SpeechStatus("base", self.ready, "", workers=1, running=self.running)

    async def async_recognise(
        self, audio: Any, language: str, *, priority: str = "command"
    ) -> Recognition:
        self.calls.append(f"recognise:{priority}")
        if self.fails is not None:
            raise self.fails
        return recognition("a")

    async def async_transcribe(
        self, audio: Any, language: str | None, prompt: str | None = None
    ) -> Transcription:
        self.calls.append("transcribe")
        return Transcription("stop", "nl", 0.1, (), "base", 5.0, "a")


@dataclass
class HandOffTwin:
    """Other members: each answers, fails, or never answers, as `behaviour` says."""

    behaviour: dict[str, str]
    sent: list[tuple[str, str, str]] = field(default_factory=list)

    async def send(self, node: str, job: Any) -> Recognition | Transcription:
        self.sent.append((node, job.kind, job.priority))
        what = self.behaviour.get(node, "answer")
        if what == "fail":
            raise _PeerFailed("ConnectError: refused")
        if what == "hang":
            await asyncio.sleep(3600)
        if what == "too_large":
            raise SpeechUnavailable("audio over the hand-off limit", status=413)
        if job.kind == "transcribe":
            return Transcription("stop", "nl", 0.1, (), "base", 5.0, node)
        return recognition(node)

    async def aclose(self) -> None:
        pass


class NodeTwin:
    """What PlacedSpeech reads of the cluster node: its id and the published view."""

    node_id = "a"

    def __init__(self, loads: dict[str, Load]) -> None:
        now = clock.monotonic()
        peers = {n: PeerInfo(n, load=load, load_heard_at=now) for n, load in loads.items()}
        self.view = view(peers, tuple(loads))


class SamplerTwin:
    latest = Load(cpu=0.1)

    def stop(self) -> None:
        pass


def placed(
    local: LocalTwin | None,
    loads: dict[str, Load],
    behaviour: dict[str, str],
    deadline_s: float = 5.0,
) -> tuple[PlacedSpeech, HandOffTwin, PlacementMetrics]:
    node = NodeTwin(loads)
    handoff = HandOffTwin(behaviour)
    metrics = PlacementMetrics(CollectorRegistry(), lambda: node.view)
    speech = PlacedSpeech(local, node, SamplerTwin(), handoff, metrics, deadline_s=deadline_s)  # type: ignore[arg-type]
    return speech, handoff, metrics


def outcomes(metrics: PlacementMetrics) -> dict[str, float]:
    return {
        outcome: metrics.handoffs.labels(outcome)._value.get()
        for outcome in ("local", "remote", "retried", "failed")
    }


IDLE = Load(ready=True, workers=1)
BUSY = Load(ready=True, workers=1, running=1, queued=2)


def test_an_idle_node_keeps_the_work() -> None:
    local = LocalTwin()
    speech, handoff, metrics = placed(local, {"b": IDLE, "c": IDLE}, {})
    assert asyncio.run(speech.async_recognise(AUDIO, "nl")).node == "a"
    assert handoff.sent == []
    assert outcomes(metrics)["local"] == 1


def test_a_busy_node_hands_the_work_to_the_least_loaded() -> None:
    local = LocalTwin(running=1)
    speech, handoff, metrics = placed(local, {"b": BUSY, "c": IDLE}, {})
    assert asyncio.run(speech.async_recognise(AUDIO, "nl")).node == "c"
    assert handoff.sent == [("c", "recognise", "command")]
    assert outcomes(metrics)["remote"] == 1


def test_a_failed_peer_is_left_for_the_next_and_each_is_tried_once() -> None:
    local = LocalTwin(running=4)
    speech, handoff, metrics = placed(local, {"b": BUSY, "c": IDLE}, {"c": "fail", "b": "fail"})
    assert asyncio.run(speech.async_recognise(AUDIO, "nl")).node == "a"  # itself, last
    assert [n for n, _, _ in handoff.sent] == ["c", "b"]
    assert outcomes(metrics) == {"local": 1, "remote": 0, "retried": 2, "failed": 0}


def test_a_local_refusal_sends_the_work_to_a_peer() -> None:
    local = LocalTwin(fails=SpeechUnavailable("queue full"))
    speech, _, _ = placed(local, {"b": BUSY}, {})
    assert asyncio.run(speech.async_recognise(AUDIO, "nl")).node == "b"


def test_when_every_node_fails_the_caller_hears_why() -> None:
    local = LocalTwin(fails=SpeechUnavailable("queue full"))
    speech, _, metrics = placed(local, {"b": IDLE}, {"b": "fail"})
    with pytest.raises(SpeechUnavailable) as caught:
        asyncio.run(speech.async_recognise(AUDIO, "nl"))
    assert caught.value.status == 503
    assert "ConnectError" in caught.value.reason or "queue full" in caught.value.reason
    assert outcomes(metrics)["failed"] == 1


def test_no_ready_node_at_all_is_503_without_an_attempt() -> None:
    speech, handoff, _ = placed(LocalTwin(ready=False), {"b": Load(ready=False)}, {})
    with pytest.raises(SpeechUnavailable) as caught:
        asyncio.run(speech.async_recognise(AUDIO, "nl"))
    assert "no member is ready" in caught.value.reason
    assert handoff.sent == []


def test_a_node_without_speech_hands_everything_on() -> None:
    speech, _, _ = placed(None, {"b": IDLE}, {})
    assert asyncio.run(speech.async_recognise(AUDIO, "nl")).node == "b"
    assert speech.status().ready is False


def test_audio_refused_for_its_size_is_not_tried_elsewhere() -> None:
    speech, handoff, _ = placed(LocalTwin(running=5), {"b": IDLE, "c": IDLE}, {"b": "too_large"})
    with pytest.raises(SpeechUnavailable) as caught:
        asyncio.run(speech.async_recognise(AUDIO, "nl"))
    assert caught.value.status == 413
    assert [n for n, _, _ in handoff.sent] == ["b"]


def test_the_deadline_bounds_a_node_that_never_answers() -> None:
    local = LocalTwin(running=5)
    speech, _, metrics = placed(local, {"b": IDLE}, {"b": "hang"}, deadline_s=0.2)
    with pytest.raises(SpeechUnavailable) as caught:
        asyncio.run(speech.async_recognise(AUDIO, "nl"))
    assert "b: no answer within 0.2 s" in caught.value.reason
    assert outcomes(metrics) == {"local": 0, "remote": 0, "retried": 1, "failed": 1}
    assert local.calls == []  # no time was left for it


def test_batch_work_goes_at_batch_priority() -> None:
    speech, handoff, _ = placed(LocalTwin(running=2), {"b": IDLE}, {})
    assert asyncio.run(speech.async_transcribe(AUDIO, None)).node == "b"
    assert handoff.sent == [("b", "transcribe", "batch")]


def test_transcriptions_round_trip_through_json() -> None:
    t = Transcription("ga zitten", "nl", 1.25, ((0.0, 1.2, "ga zitten"),), "base", 80.5, "n2")
    assert transcription_from_json(transcription_to_json(t)) == t
