"""The listener's loose ends, on its event loop with in-memory twins of a source, the VAD, speech
and the command service (the real ones are in test_listening_cluster.py and
test_listening_health.py; here the interleaving is what matters, and twins fix it):
- listening switched off while an utterance is being recognised: it does not run afterwards
  (outcome `listening_off`); a stop still does;
- a source that stops by itself is reopened after a backoff, counted; a file read to its end is
  done, not reopened, and no fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from ha_voice.config import Config
from ha_voice.metrics import Metrics
from ha_voice.robot.base import Action
from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.listening import Listener
from ha_voice.voice.segmenter import Utterance
from ha_voice.voice.sources import Block, SourceStats
from ha_voice.voice.speech import SAMPLE_RATE, Recognition

VOCABULARY = Vocabulary.load("nl")
_END = object()


class TwinSource:
    """An AudioSource whose blocks the test puts; `stop()` ends it as an unplugged device."""

    def __init__(self, entry: str) -> None:
        self.source = entry
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.opened = False
        self.received = 0
        self.error = ""

    async def async_open(self) -> None:
        self.opened = True

    async def blocks(self) -> AsyncIterator[Block]:
        while (block := await self.queue.get()) is not _END:
            self.received += 1
            yield block

    def put(self, start_s: float) -> None:
        self.queue.put_nowait(Block(self.source, start_s, np.zeros(512, dtype=np.float32)))

    def stop(self, why: str) -> None:
        """The source ends by itself, saying `why`."""
        self.opened, self.error = False, why
        self.queue.put_nowait(_END)

    def close(self) -> None:
        self.opened = False
        self.queue.put_nowait(_END)

    def stats(self) -> SourceStats:
        return SourceStats(self.source, self.opened, self.received, error=self.error)


class OneUtterance:
    """A segmenter twin: the first block pushed completes one utterance."""

    lost = 0
    in_speech = False
    position_s = 0.0

    def __init__(self) -> None:
        self.cut = False

    def push(self, samples: Any, start_s: float, gap_s: float = 0.0) -> list[Utterance]:
        if self.cut:
            return []
        self.cut = True
        return [Utterance(start_s, np.zeros(SAMPLE_RATE // 2, dtype=np.float32))]


@dataclass
class GatedSpeech:
    """Speech that hears `phrase` once the test opens the gate."""

    phrase: str
    intent: str
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def async_recognise(self, audio: Any, language: str, **_: Any) -> Recognition:
        self.started.set()
        await self.gate.wait()
        return Recognition(self.phrase, self.intent, self.phrase, 0.9, (), None, language, "t", 0.5)


@dataclass
class Commands:
    """The primary's command service, recording what was submitted."""

    submitted: list[Action] = field(default_factory=list)

    def ready(self) -> bool:
        return True

    async def submit(self, command: Any, max_pending: int) -> Any:
        self.submitted.append(command.action)
        record = SimpleNamespace(key=command.key, status="done")
        return SimpleNamespace(record=record, duplicate=False)


def _ctx(sources: list[str], speech: Any) -> Any:
    config = Config(node_id="n1", audio_sources=sources)
    settings = SimpleNamespace(listening=True, language=None)
    node = SimpleNamespace(
        journal=SimpleNamespace(settings=settings), view=SimpleNamespace(node_id="n1", leader="n1")
    )
    return SimpleNamespace(
        config=config,
        node=node,
        metrics=Metrics("n1"),
        speech=speech,
        commands=Commands(),
        active_vocabulary=lambda: VOCABULARY,
    )


async def _until(condition: Any, timeout_s: float = 5.0) -> None:
    """Poll `condition` (the listener has no event to wait on) until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "never came"
        await asyncio.sleep(0.01)


def _switched_off_during_recognition(phrase: str, intent: str) -> tuple[list[Action], list[str]]:
    async def scenario() -> tuple[list[Action], list[str]]:
        speech = GatedSpeech(phrase, intent)
        ctx = _ctx(["udp://127.0.0.1:9"], speech)
        sources: list[TwinSource] = []

        def make(entry: str) -> TwinSource:
            sources.append(TwinSource(entry))
            return sources[-1]

        listener = Listener(ctx, make_source=make, make_segmenter=OneUtterance)
        task = asyncio.create_task(listener.async_run())
        await _until(lambda: sources and sources[0].opened)
        sources[0].put(1000.0)
        await speech.started.wait()
        ctx.node.journal.settings.listening = False  # POST /api/voice/stop, committed
        speech.gate.set()
        await _until(lambda: listener.status()["utterances"])
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return ctx.commands.submitted, [u["outcome"] for u in listener.status()["utterances"]]

    return asyncio.run(scenario())


def test_an_utterance_recognised_after_listening_was_switched_off_does_not_run() -> None:
    submitted, outcomes = _switched_off_during_recognition("ga liggen", "lie_down")
    assert submitted == []
    assert outcomes == ["listening_off"]


def test_a_stop_recognised_after_listening_was_switched_off_still_runs() -> None:
    submitted, outcomes = _switched_off_during_recognition("stop", "stop")
    assert submitted == [Action.STOP_MOVE]
    assert outcomes == ["ran"]


def test_a_source_that_stops_is_reopened_after_a_backoff_and_a_file_is_not() -> None:
    async def scenario() -> None:
        ctx = _ctx(["alsa:hw:1,0", "file:/tmp/said.wav"], GatedSpeech("", ""))
        made: dict[str, list[TwinSource]] = {"alsa:hw:1,0": [], "file:/tmp/said.wav": []}

        def make(entry: str) -> TwinSource:
            made[entry].append(TwinSource(entry))
            return made[entry][-1]

        listener = Listener(ctx, make_source=make, make_segmenter=OneUtterance)
        task = asyncio.create_task(listener.async_run())
        try:
            await _until(lambda: all(m and m[0].opened for m in made.values()))
            assert listener.problem() is None
            made["file:/tmp/said.wav"][0].stop("end of file")
            made["alsa:hw:1,0"][0].stop("unplugged")
            await _until(lambda: listener.problem() is not None)
            problem = listener.problem()
            assert problem is not None
            assert problem.startswith("listening: alsa:hw:1,0 stopped: unplugged"), problem
            mic, file = listener.source_stats()
            assert file.ended
            assert not file.open
            assert file.error == "end of file"
            assert not mic.open
            assert mic.reopens == 0
            await _until(lambda: len(made["alsa:hw:1,0"]) == 2, 3.0)  # after 1 s, not at once
            assert listener.problem() is None
            assert len(made["file:/tmp/said.wav"]) == 1  # a file read again would replay it
            mic, file = listener.source_stats()
            assert mic.open
            assert mic.reopens == 1
            assert file.to_json()["ended"] is True
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
