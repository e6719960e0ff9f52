"""The closed-vocabulary recogniser with the real packaged Whisper models on speech made here.

Real parts only: faster-whisper / CTranslate2 with the packaged base (Dutch) and tiny.en
(English) models, espeak-ng and MBROLA voices, Silero VAD. Accuracy and latency are measured by
tests/bench/bench_recogniser.py, not asserted here; these tests pin the safety rules and the
shape of the answer.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.models import packaged_model
from ha_voice.voice.recogniser import (
    LoadedModel,
    ModelSettings,
    Recogniser,
    Thresholds,
    decide,
    load_model,
    transcribe,
)
from ha_voice.voice.scoring import PhraseForm, Scored
from tests.speech_corpus import SAMPLE_RATE, corpus, have_espeak, mix_noise, say, voices

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def dutch() -> Iterator[Recogniser]:
    model = load_model(ModelSettings(str(packaged_model("base")), cpu_threads=2))
    recogniser = Recogniser(model, Vocabulary.load("nl"))
    recogniser.warm_up()
    return recogniser


@pytest.fixture(scope="module")
def english_model() -> LoadedModel:
    return load_model(ModelSettings(str(packaged_model("tiny.en")), cpu_threads=2))


def _padded(samples: np.ndarray, lead_s: float = 0.3, tail_s: float = 0.4) -> np.ndarray:
    lead = np.zeros(int(lead_s * SAMPLE_RATE), dtype=np.float32)
    tail = np.zeros(int(tail_s * SAMPLE_RATE), dtype=np.float32)
    return np.concatenate([lead, samples, tail])


def test_stop_clips_never_become_a_motion(dutch: Recogniser) -> None:
    """Every stop phrase, by several voices, clean and noisy, with and without a wake word: the
    answer is stop or a rejection, never another intent."""
    vocabulary = dutch.vocabulary
    stop = vocabulary.stop_intent
    phrases = [(p, stop.name, True) for p in stop.phrases]
    clips = corpus(phrases, voices("nl"), wake_words=vocabulary.wake_words, wake_share=0.3, seed=5)
    answers = {
        f"{clip.text} ({clip.voice}, {clip.snr_db} dB)": dutch.recognise(clip.audio())
        for clip in clips
    }
    motions = {k: r.intent for k, r in answers.items() if r.intent not in (None, stop.name)}
    assert not motions
    # And the rule is not met by rejecting everything: most stop clips are heard as stop.
    assert sum(r.intent == stop.name for r in answers.values()) >= len(answers) // 2


def test_sta_op_against_stop_needs_the_margin(dutch: Recogniser) -> None:
    """ "sta op" (stand up) is stop's nearest neighbour: whatever the voice and noise, a "stop"
    clip never comes out as stand_up, and a motion accepted always beats stop by the margin."""
    for voice in voices("nl"):
        for snr in (None, 10.0):
            audio = _padded(say("stop", voice, snr_db=snr, seed=3))
            recognition = dutch.recognise(audio)
            assert recognition.intent in (None, "stop"), (voice, snr, recognition)
    # A decision in which stand_up leads stop by less than the margin is never stand_up: it is
    # rejected as ambiguous, or stop where the operator chose stop_when_close.
    stand = PhraseForm("sta op", "sta op", "stand_up", False, (1, 2))
    stop = PhraseForm("stop", "stop", "stop", True, (3,))
    near = -0.4 - Thresholds().stop_margin / 2
    close = decide([Scored(stand, -0.4, -0.4), Scored(stop, near, near)])
    assert close.winner is None
    assert close.rejection == "ambiguous"
    assert close.ranked[0].form.intent == "stand_up"
    stopping = decide(
        [Scored(stand, -0.4, -0.4), Scored(stop, near, near)], Thresholds(stop_when_close=True)
    )
    assert stopping.winner is not None
    assert stopping.winner.form.intent == "stop"
    # Stop ahead of stand_up by any amount is stop.
    ahead = decide([Scored(stand, near, near), Scored(stop, -0.4, -0.4)])
    assert ahead.winner is not None
    assert ahead.winner.form.intent == "stop"
    implausible = decide([Scored(stand, -0.4, -0.4), Scored(stop, -9.0, -9.0)])
    assert implausible.winner is not None
    assert implausible.winner.form.intent == "stand_up"


def test_the_stop_margin_follows_the_intent_and_how_plausible_stop_is() -> None:
    """The margin over stop is per intent and applies while stop is plausible: "sta op" half a
    nat over a plausible "stop" is stand_up (one margin of 1.0 for all took 44 % of held-out
    stand_up clips for stop); "hallo" (what Whisper hears for espeak's "hou op") needs 2.0, hello's
    other phrases not; a
    stop the decoder does not believe in is no contender; a tie is always stop; an intent within
    its margin ahead of stop is neither (rejected)."""
    thresholds = Thresholds()
    stand = PhraseForm("sta op", "sta op", "stand_up", False, (1, 2))
    hello = PhraseForm("hallo", "hallo", "hello", False, (4,))
    stop = PhraseForm("stop", "stop", "stop", True, (3,))

    def winner(*scores: tuple[PhraseForm, float]) -> str | None:
        found = decide([Scored(form, x, x) for form, x in scores], thresholds).winner
        return None if found is None else found.form.intent

    assert thresholds.margin("stand_up", 1.0) < 0.5 < thresholds.margin("hello", 1.0, "hallo")
    assert thresholds.margin("hello", 1.0, "zwaai") == thresholds.stop_margin
    assert winner((stand, 1.5), (stop, 1.0)) == "stand_up"
    assert winner((hello, 1.5), (stop, 1.0)) is None
    assert (
        winner((hello, 1.5), (stop, 1.5 - thresholds.margin("hello", 1.0, "hallo") + 0.01))
        is None
    )
    assert winner((hello, 1.0), (stop, 1.5)) == "stop"
    assert (
        winner((hello, 1.5), (stop, 1.5 - thresholds.margin("hello", 1.0, "hallo") - 0.01))
        == "hello"
    )
    implausible = thresholds.stop_plausible - 0.1
    assert winner((hello, -1.5), (stop, implausible)) == "hello"
    assert winner((stand, 0.7), (stop, 0.7)) == "stop"
    assert winner((stand, implausible), (stop, implausible)) is None  # below the floor


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros(0, dtype=np.float32),
        np.zeros(SAMPLE_RATE * 2, dtype=np.float32),
        np.random.default_rng(1).normal(0, 0.05, SAMPLE_RATE * 2).astype(np.float32),
        np.random.default_rng(2).normal(0, 0.3, SAMPLE_RATE).astype(np.float32).clip(-1, 1),
        np.full(SAMPLE_RATE // 20, 0.5, dtype=np.float32),
        (0.2 * np.sin(2 * np.pi * 1000 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32),
        np.full(SAMPLE_RATE, np.nan, dtype=np.float32),
        np.zeros(SAMPLE_RATE * 120, dtype=np.float32),
    ],
    ids=["empty", "silence", "quiet-noise", "loud-noise", "50ms-click", "1kHz-tone", "nan", "2min"],
)
def test_no_speech_is_rejected_never_guessed(dutch: Recogniser, audio: np.ndarray) -> None:
    recognition = dutch.recognise(audio)
    assert recognition.intent is None
    assert recognition.rejection == "no_speech"
    assert recognition.phrase is None


def test_each_intent_on_clean_speech(dutch: Recogniser) -> None:
    """Every intent is recognised from clean speech of one voice: of its phrases, at least one
    (the benchmark measures how many); a phrase of stop is never heard as another intent."""
    voice = "mb-nl2" if "mb-nl2" in voices("nl") else "nl"
    missed = []
    for intent in dutch.vocabulary.intents:
        heard = {p: dutch.recognise(_padded(say(p, voice))).intent for p in intent.phrases}
        if intent.name not in heard.values():
            missed.append((intent.name, heard))
        if intent.stop:
            assert set(heard.values()) <= {None, intent.name}, heard
    assert not missed


def test_answer_says_what_was_heard_and_how_sure(dutch: Recogniser) -> None:
    audio = _padded(say("draai naar links", "mb-nl2"))
    recognition = dutch.recognise(audio)
    assert recognition.intent == "turn_left"
    assert recognition.heard == recognition.phrase == "draai naar links"
    assert 0.0 < recognition.confidence <= 1.0
    assert recognition.rejection is None
    assert recognition.language == "nl"
    assert recognition.stt_ms > 0
    assert recognition.alternatives
    assert all(a.intent != "turn_left" for a in recognition.alternatives)
    # Each alternative carries the score the decision compared (calibrated), best first.
    scores = [a.score for a in recognition.alternatives]
    assert scores == sorted(scores, reverse=True)
    scored = {s.form.text: s.score for s in dutch.score(audio) or ()}
    for alternative in recognition.alternatives:
        assert alternative.score == pytest.approx(scored[alternative.phrase], abs=0.05)


def test_a_wake_word_before_the_command(dutch: Recogniser) -> None:
    recognition = dutch.recognise(_padded(say("robot, loop achteruit", "mb-nl2")))
    assert recognition.intent == "walk_backward"
    assert recognition.heard.endswith("loop achteruit")


def test_noisy_command_with_long_silence(dutch: Recogniser) -> None:
    """Only the speech is scored: four seconds of noise around a command change nothing."""
    speech = _padded(say("ga liggen", "mb-nl2"), lead_s=2.0, tail_s=2.0)
    recognition = dutch.recognise(mix_noise(speech, 20.0, seed=4))
    assert recognition.intent == "lie_down"


def test_english_with_tiny_en(english_model: LoadedModel) -> None:
    recogniser = Recogniser(english_model, Vocabulary.load("en"))
    for text, intent in [("stop", "stop"), ("turn left", "turn_left"), ("sit down", "sit")]:
        recognition = recogniser.recognise(_padded(say(text, "en")))
        assert recognition.intent == intent, (text, recognition)
        assert recognition.language == "en"


def test_english_only_model_refuses_a_dutch_vocabulary(english_model: LoadedModel) -> None:
    with pytest.raises(ValueError, match="English-only"):
        Recogniser(english_model, Vocabulary.load("nl"))


def test_transcribe(dutch: Recogniser, english_model: LoadedModel) -> None:
    english = transcribe(english_model, _padded(say("hello world", "en")), "en", None)
    assert "hello" in english.text.lower()
    assert english.language == "en"
    assert english.segments
    assert english.duration_s == pytest.approx(english.segments[-1][1], abs=1.5)
    dutch_text = transcribe(dutch.model, _padded(say("loop vooruit", "mb-nl2")), "nl", None)
    assert dutch_text.text
    assert dutch_text.language == "nl"
    silent = transcribe(dutch.model, np.zeros(SAMPLE_RATE, dtype=np.float32), "nl", None)
    assert silent.duration_s == pytest.approx(1.0)
