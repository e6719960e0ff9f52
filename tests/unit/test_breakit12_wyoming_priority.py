"""Review of issue 12 (breakit12): a Wyoming client's audio is recognised at batch priority.

Wyoming has no authentication. At command priority (the default of `Speech.async_recognise`),
four clients streaming 16 s of Dutch chatter each to one node held a spoken "stop" from the
robot's UDP stream for 7.2-8.0 s instead of 0.46-0.54 s (1 node, base int8, one worker; the
repro is in the review's report). The server here is the real one on a real socket, spoken to
by the `wyoming` package's client; its speech is a fake that records the priority it is given.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient

from ha_voice.api.wyoming import WyomingServer
from ha_voice.config import Config
from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.speech import SAMPLE_RATE, Audio, Recognition


class _Speech:
    def __init__(self) -> None:
        self.priorities: list[str] = []

    async def async_recognise(
        self, audio: Audio, language: str, *, priority: str = "command"
    ) -> Recognition:
        self.priorities.append(priority)
        return Recognition("ga liggen", "lie_down", "ga liggen", 0.9, (), None, "nl", "fake", 1.0)


def _context(tmp_path: Path, speech: _Speech) -> Any:
    key = tmp_path / "cluster.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    registry = CollectorRegistry()
    vocabulary = Vocabulary.load("nl")
    return SimpleNamespace(
        config=Config(node_id="n1", cluster="c", cluster_key_file=key),
        metrics=SimpleNamespace(
            wyoming_transcripts=Counter("t", "t", ["outcome"], registry=registry),
            wyoming_refused=Counter("r", "r", ["reason"], registry=registry),
        ),
        speech=speech,
        commands=None,
        active_vocabulary=lambda: vocabulary,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_wyoming_audio_is_recognised_behind_every_waiting_command(tmp_path: Path) -> None:
    speech = _Speech()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    pcm = (tone * 32767).astype("<i2").tobytes()

    async def scenario() -> str:
        port = _free_port()
        server = WyomingServer(_context(tmp_path, speech), "127.0.0.1", port)
        await server.async_start()
        try:
            async with AsyncTcpClient("127.0.0.1", port, read_timeout=10.0) as client:
                await client.write_event(Transcribe(language="nl").event())
                await client.write_event(AudioStart(SAMPLE_RATE, 2, 1).event())
                await client.write_event(AudioChunk(SAMPLE_RATE, 2, 1, pcm).event())
                await client.write_event(AudioStop().event())
                answer = await client.read_event()
        finally:
            await server.async_close()
        assert answer is not None
        assert Transcript.is_type(answer.type), answer
        return Transcript.from_event(answer).text

    assert asyncio.run(scenario()) == "ga liggen"
    assert speech.priorities == ["batch"]
