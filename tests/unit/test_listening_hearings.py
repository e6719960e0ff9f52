"""Several sources' hearings of one moment become one command; utterance keys are stable; a
stop heard in an early look runs at once and only a stop does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from ha_voice.api.context import ApiContext
from ha_voice.commands import Answer, CommandRequest
from ha_voice.config import Config
from ha_voice.journal import CommandRecord
from ha_voice.metrics import Metrics
from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.listening import Hearing, Hearings, Listener, early_stop, utterance_key
from ha_voice.voice.sources import Block, SourceStats
from ha_voice.voice.speech import SAMPLE_RATE, Audio, Recognition
from tests.speech_corpus import have_espeak, say

VOCABULARY = Vocabulary.load("nl")
INTENTS = {intent.name: intent for intent in VOCABULARY.intents}


def _recognition(intent: str, confidence: float) -> Recognition:
    return Recognition(intent, intent, intent, confidence, (), None, "nl", "test", 1.0)


def _hearing(source: str, start_s: float, intent: str, confidence: float) -> Hearing:
    return Hearing(source, start_s, INTENTS[intent], _recognition(intent, confidence))


async def _decide(
    hearings: Hearings, heard: list[tuple[str, float, str, float]], *, together: bool = True
) -> list[bool]:
    """Each hearing recognised while the others are still being recognised (`together`), or
    one after the other; whether each runs."""
    gate = asyncio.Event()

    async def one(source: str, start_s: float, intent: str, confidence: float) -> bool:
        with hearings.expecting(source, start_s):
            if together:
                await gate.wait()
        await asyncio.sleep(0)
        hearing = _hearing(source, start_s, intent, confidence)
        return await hearings.async_decide(hearing, wait=not INTENTS[intent].stop)

    if not together:
        return [await one(*h) for h in heard]
    tasks = [asyncio.create_task(one(*h)) for h in heard]
    await asyncio.sleep(0)
    gate.set()
    return list(await asyncio.gather(*tasks))


def test_the_same_command_from_two_sources_runs_once_and_the_best_hearing_wins() -> None:
    heard = [("mic", 100.0, "lie_down", 0.6), ("robot", 100.2, "lie_down", 0.9)]
    assert asyncio.run(_decide(Hearings(1.0), heard)) == [False, True]


def test_a_late_hearing_of_a_command_that_already_ran_is_a_duplicate() -> None:
    heard = [("robot", 100.0, "lie_down", 0.5), ("mic", 100.4, "lie_down", 0.9)]
    assert asyncio.run(_decide(Hearings(1.0), heard, together=False)) == [True, False]


def test_two_different_commands_in_a_row_are_two_commands() -> None:
    heard = [("robot", 100.0, "lie_down", 0.9), ("robot", 100.5, "stand_up", 0.9)]
    assert asyncio.run(_decide(Hearings(1.0), heard)) == [True, True]


def test_the_same_command_said_again_after_the_window_runs_again() -> None:
    heard = [("robot", 100.0, "lie_down", 0.9), ("robot", 102.0, "lie_down", 0.9)]
    assert asyncio.run(_decide(Hearings(1.0), heard, together=False)) == [True, True]


def test_a_stop_does_not_wait_for_the_other_sources() -> None:
    async def scenario() -> bool:
        hearings = Hearings(1.0)
        with hearings.expecting("mic", 100.1):  # the microphone's hearing is still under way
            hearing = _hearing("robot", 100.0, "stop", 0.4)
            return await asyncio.wait_for(hearings.async_decide(hearing, wait=False), 1.0)

    assert asyncio.run(scenario()) is True


def test_the_key_is_the_same_for_the_same_utterance_and_differs_otherwise() -> None:
    key = utterance_key("udp://0.0.0.0:9999", 1000.04, "Ga liggen")
    assert key == utterance_key("udp://0.0.0.0:9999", 1000.01, "ga liggen")  # same 100 ms
    assert key != utterance_key("udp://0.0.0.0:9999", 1000.24, "ga liggen")
    assert key != utterance_key("alsa:hw:1,0", 1000.04, "ga liggen")
    assert key != utterance_key("udp://0.0.0.0:9999", 1000.04, "sta op")
    assert key.isascii()
    assert " " not in key


def test_only_a_stop_heard_early_is_decided_early() -> None:
    assert early_stop(VOCABULARY, _recognition("stop", 0.3), False) is INTENTS["stop"]
    for motion in ("stand_up", "lie_down", "walk_forward"):
        assert early_stop(VOCABULARY, _recognition(motion, 0.9), False) is None
    rejected = Recognition("sta", None, None, 0.0, (), "unknown", "nl", "test", 1.0)
    assert early_stop(VOCABULARY, rejected, False) is None
    assert early_stop(VOCABULARY, _recognition("stop", 0.3), True) is None  # no wake word
    woken = Recognition("robot stop", "stop", "robot stop", 0.3, (), None, "nl", "test", 1.0)
    assert early_stop(VOCABULARY, woken, True) is INTENTS["stop"]


def test_an_early_stop_and_the_full_utterance_of_another_stop_phrase_are_one_command() -> None:
    async def scenario() -> list[bool]:
        early = _hearing("robot", 100.0, "stop", 0.3)  # the early look heard "stop"
        full = Hearing("robot", 100.0, INTENTS["stop"], _recognition("halt", 0.5))
        hearings = Hearings(0.0)  # even with no dedup window: the same utterance start
        return [await hearings.async_decide(h, wait=False) for h in (early, full)]

    assert asyncio.run(scenario()) == [True, False]


SOURCE = "udp://127.0.0.1:9"
BLOCK = 512  # samples per block: the seed's 32 ms datagrams


class MemorySource:
    """An AudioSource twin: `audio` in BLOCK-sample blocks as fast as they are taken."""

    def __init__(self, audio: Audio) -> None:
        self.source = SOURCE
        self._audio = audio

    async def async_open(self) -> None:
        pass

    async def blocks(self) -> AsyncIterator[Block]:
        for offset in range(0, len(self._audio), BLOCK):
            yield Block(SOURCE, 1000.0 + offset / SAMPLE_RATE, self._audio[offset : offset + BLOCK])

    def close(self) -> None:
        pass

    def stats(self) -> SourceStats:
        return SourceStats(SOURCE, open=True)


class ScriptedSpeech:
    """Hears `phrases` in turn, the last one again from then on (the test is about the
    listener's decisions, not recognition); remembers the length of each audio in seconds."""

    def __init__(self, phrases: tuple[str, ...]) -> None:
        self.phrases = phrases
        self.heard_s: list[float] = []

    async def async_recognise(self, audio: Audio, language: str, *, priority: str) -> Recognition:
        phrase = self.phrases[min(len(self.heard_s), len(self.phrases) - 1)]
        self.heard_s.append(len(audio) / SAMPLE_RATE)
        intent = next(i.name for i in VOCABULARY.intents if phrase in i.phrases)
        return Recognition(phrase, intent, phrase, 0.5, (), None, "nl", "test", 1.0)


class JournalTwin:
    """The primary's command service as far as listening uses it: each key runs once."""

    def __init__(self) -> None:
        self.ran: list[CommandRequest] = []
        self._records: dict[str, CommandRecord] = {}

    def ready(self) -> bool:
        return True

    async def submit(self, request: CommandRequest, *, max_pending: int | None = None) -> Answer:
        known = self._records.get(request.key)
        if known is not None:
            return Answer(known, duplicate=True)
        self.ran.append(request)
        record = CommandRecord(
            len(self.ran),
            1,
            request.key,
            request.action.value,
            request.params,
            request.duration_s,
            request.text,
            request.source,
            0.0,
            "done",
        )
        self._records[request.key] = record
        return Answer(record, duplicate=False)


class Listened:
    """What a listener made of some audio."""

    def __init__(self, journal: JournalTwin, speech: ScriptedSpeech, metrics: Metrics) -> None:
        self.journal, self.speech, self.metrics = journal, speech, metrics
        self.heard: list[dict[str, Any]] = []  # /api/voice/status's utterances, oldest first

    def early_looks(self, result: str) -> float | None:
        labels = {"result": result}
        return self.metrics.registry.get_sample_value("ha_voice_listen_early_looks_total", labels)


def _listen(
    phrases: str | tuple[str, ...],
    early_stop_s: float,
    *,
    outcomes: int,
    recognitions: int,
    tail_s: float = 1.0,
    split_s: float = 0.0,
) -> Listened:
    """A listener with a real Silero segmenter over `phrases` said one after the other with 1 s
    between them and `tail_s` of silence after the last (then the stream ends), the words of
    each `split_s` apart if > 0; run until `outcomes` utterances have an outcome and
    `recognitions` recognitions were asked for. Speech hears `phrases` in turn."""
    phrases = (phrases,) if isinstance(phrases, str) else phrases
    pause = np.zeros(SAMPLE_RATE, dtype=np.float32)
    said = [p for phrase in phrases for p in (_said(phrase, split_s), pause)][:-1]
    lead = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    audio = np.concatenate([lead, *said, np.zeros(int(tail_s * SAMPLE_RATE), dtype=np.float32)])

    config = Config(audio_sources=[SOURCE], listen_early_stop_s=early_stop_s)
    settings = SimpleNamespace(listening=True, language=None)
    node = SimpleNamespace(journal=SimpleNamespace(settings=settings), view=SimpleNamespace())
    node.view.node_id = node.view.leader = "n1"
    listened = Listened(JournalTwin(), ScriptedSpeech(phrases), Metrics("n1"))
    ctx = SimpleNamespace(
        config=config,
        metrics=listened.metrics,
        speech=listened.speech,
        commands=listened.journal,
        node=node,
        active_vocabulary=lambda: VOCABULARY,
    )
    listener = Listener(cast(ApiContext, ctx), make_source=lambda entry: MemorySource(audio))

    def done() -> bool:
        heard = listener.status()["utterances"]
        return len(heard) >= outcomes and len(listened.speech.heard_s) >= recognitions

    async def scenario() -> None:
        task = asyncio.create_task(listener.async_run())
        try:
            # the VAD runs in a worker thread and no event marks an outcome: look again
            while not done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(scenario(), 60.0))
    listened.heard = list(reversed(listener.status()["utterances"]))
    return listened


needs_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed")


def _said(phrase: str, split_s: float) -> Audio:
    """`phrase` by espeak-ng without its trailing silence, its words `split_s` apart if > 0."""
    if split_s <= 0:
        return _trimmed(say(phrase, "nl"))
    gap = np.zeros(int(split_s * SAMPLE_RATE), dtype=np.float32)
    words = [p for word in phrase.split() for p in (_trimmed(say(word, "nl")), gap)]
    return np.concatenate(words[:-1])


def _trimmed(audio: Audio) -> Audio:
    """`audio` without espeak-ng's trailing silence (about 0.35 s)."""
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    return np.asarray(audio[: loud[-1] + 1], dtype=np.float32)


def _outcomes(listened: Listened) -> list[tuple[str | None, str]]:
    return [(u["intent"], u["outcome"]) for u in listened.heard]


@needs_espeak
def test_a_stop_heard_early_runs_once_and_its_utterance_has_one_outcome() -> None:
    # "ga liggen" after it: once that has an outcome, the stop's full utterance had its turn
    listened = _listen(("stop", "ga liggen"), 0.12, outcomes=2, recognitions=2)
    assert [r.action.value for r in listened.journal.ran] == ["stop_move", "stand_down"]
    # the early look's hearing ran; the full utterance's (the same start) was a duplicate of
    # it, and one utterance has one outcome
    assert _outcomes(listened) == [("stop", "ran"), ("lie_down", "ran")]
    assert listened.early_looks("stop") == 1
    # nothing was said after the looks: the full utterances reused their recognitions
    assert len(listened.speech.heard_s) == 2
    duplicate = {"outcome": "duplicate"}
    assert (
        listened.metrics.registry.get_sample_value("ha_voice_listen_utterances_total", duplicate)
        == 0
    )


@needs_espeak
def test_a_stop_runs_before_the_utterance_ends() -> None:
    """The stream ends 0.2 s after "stop": past the early look, before vad_min_silence_s."""
    listened = _listen("stop", 0.12, outcomes=2, recognitions=1, tail_s=0.2)
    assert [r.action.value for r in listened.journal.ran] == ["stop_move"]
    assert sorted(_outcomes(listened), key=lambda o: o[1]) == [(None, "lost"), ("stop", "ran")]


@needs_espeak
def test_a_motion_heard_early_waits_for_the_end_of_the_utterance() -> None:
    cut_short = _listen("ga liggen", 0.12, outcomes=1, recognitions=1, tail_s=0.2)
    assert cut_short.early_looks("other") == 1  # heard early, and dropped
    assert cut_short.journal.ran == []
    assert _outcomes(cut_short) == [(None, "lost")]
    ended = _listen("ga liggen", 0.12, outcomes=1, recognitions=1)
    assert [r.action.value for r in ended.journal.ran] == ["stand_down"]
    assert _outcomes(ended) == [("lie_down", "ran")]
    assert len(ended.speech.heard_s) == 1  # the full utterance reused the look's recognition


@needs_espeak
def test_speech_after_an_early_look_is_looked_at_again_and_ends_one_utterance() -> None:
    listened = _listen("ga liggen", 0.12, outcomes=1, recognitions=2, split_s=0.2)
    assert listened.early_looks("other") == 2  # after "ga" and after "liggen"
    early_s, late_s = listened.speech.heard_s
    assert early_s < late_s
    assert [r.action.value for r in listened.journal.ran] == ["stand_down"]
    assert _outcomes(listened) == [("lie_down", "ran")]
    assert listened.heard[0]["duration_s"] == round(late_s, 3)


@needs_espeak
def test_without_early_stop_a_stop_runs_from_the_full_utterance_alone() -> None:
    listened = _listen("stop", 0.0, outcomes=1, recognitions=1)
    assert _outcomes(listened) == [("stop", "ran")]
    assert listened.speech.heard_s == [listened.heard[0]["duration_s"]]
    assert listened.early_looks("stop") == 0
