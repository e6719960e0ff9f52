"""Several sources' hearings of one moment become one command; utterance keys are stable."""

from __future__ import annotations

import asyncio

from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.listening import Hearing, Hearings, utterance_key
from ha_voice.voice.speech import Recognition

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
