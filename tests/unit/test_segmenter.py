"""The streaming segmenter on generated Dutch speech, silence and noise (real Silero VAD)."""

from __future__ import annotations

import numpy as np
import pytest

from ha_voice.voice.segmenter import FRAME, Segmenter, SegmenterOptions, Utterance
from ha_voice.voice.speech import SAMPLE_RATE
from tests.speech_corpus import have_espeak, say

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed")

PHRASES = ("ga liggen", "sta op", "stop", "draai naar links")
T0 = 1_700_000_000.0  # stream time of the first sample


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def _noise(seconds: float, rms: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * rms).astype(np.float32)


def _script(pause_s: float = 1.0, noise_rms: float = 0.0) -> tuple[np.ndarray, list[float]]:
    """The phrases with pauses (noise under all of it); the stream time each phrase starts."""
    parts, starts, at = [_silence(0.5)], [], 0.5
    for i, phrase in enumerate(PHRASES):
        voice = ("nl", "nl+f3", "mb-nl2", "nl+m3")[i % 4]
        speech = say(phrase, voice)
        starts.append(T0 + at)
        parts += [speech, _silence(pause_s)]
        at += len(speech) / SAMPLE_RATE + pause_s
    audio = np.concatenate(parts)
    if noise_rms:
        audio = audio + _noise(len(audio) / SAMPLE_RATE, noise_rms, seed=3)
    return audio.astype(np.float32), starts


def _stream(segmenter: Segmenter, audio: np.ndarray, block: int) -> list[Utterance]:
    out: list[Utterance] = []
    for offset in range(0, len(audio), block):
        out += segmenter.push(audio[offset : offset + block], T0 + offset / SAMPLE_RATE)
    return out + segmenter.flush()


@pytest.mark.parametrize("block", [160, 512, 1000, 4096])
def test_n_phrases_with_pauses_are_n_utterances_whatever_the_block_size(block: int) -> None:
    audio, starts = _script()
    utterances = _stream(Segmenter(), audio, block)
    assert len(utterances) == len(PHRASES)
    for utterance, start in zip(utterances, starts, strict=True):
        assert abs(utterance.start_s - start) < 0.25, (utterance.start_s - T0, start - T0)
        assert 0.2 < utterance.duration_s < 3.0
        assert not utterance.cut


def test_noise_under_the_speech_still_gives_one_utterance_per_phrase() -> None:
    audio, _ = _script(noise_rms=0.01)
    assert len(_stream(Segmenter(), audio, 1024)) == len(PHRASES)


def test_silence_and_noise_alone_give_nothing() -> None:
    segmenter = Segmenter()
    quiet = np.concatenate([_silence(2.0), _noise(3.0, 0.01, seed=1)])
    assert _stream(segmenter, quiet, 1024) == []
    assert segmenter.segments == 0


def _trimmed(audio: np.ndarray) -> np.ndarray:
    """`audio` without espeak-ng's trailing silence (about 0.35 s)."""
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    return audio[: loud[-1] + 1]


def test_a_short_pause_inside_a_phrase_does_not_cut_it() -> None:
    words = [_trimmed(say("ga")), _silence(0.2), say("liggen")]
    audio = np.concatenate([_silence(0.5), *words, _silence(1)])
    assert len(_stream(Segmenter(), audio, 512)) == 1


def test_speech_past_max_utterance_s_is_cut_and_memory_stays_bounded() -> None:
    long_speech = np.concatenate([say("een twee drie vier vijf zes zeven acht")] * 4)
    segmenter = Segmenter(SegmenterOptions(max_utterance_s=2.0))
    utterances = _stream(segmenter, long_speech, 2048)
    assert any(u.cut for u in utterances)
    assert max(u.duration_s for u in utterances) <= 2.0 + FRAME / SAMPLE_RATE


def test_a_gap_drops_the_utterance_under_way_and_counts_it_lost() -> None:
    speech = say("draai naar links")
    segmenter = Segmenter()
    half = len(speech) // 2
    assert segmenter.push(np.concatenate([_silence(0.5), speech[:half]]), T0) == []
    assert segmenter.in_speech
    after = T0 + 5.0
    rest = segmenter.push(np.concatenate([_silence(1.0), say("sta op"), _silence(1.0)]), after, 4)
    assert segmenter.lost == 1
    assert len(rest) == 1
    assert rest[0].start_s >= after


class LoudnessVad:
    """A FrameVad twin: P(speech) is a frame's peak amplitude (a tone of 1.0 is speech, 0.4
    is between the thresholds, silence is not)."""

    def probability(self, frame: np.ndarray) -> float:
        return float(np.max(np.abs(frame)))

    def reset(self) -> None:
        pass


def _tone(seconds: float, level: float = 1.0) -> np.ndarray:
    return np.full(int(seconds * SAMPLE_RATE), level, dtype=np.float32)


def _looks(audio: np.ndarray, **options: float) -> list[tuple[bool, float, float]]:
    """(early, start_s, stream time when it came out) of each utterance and early look."""
    segmenter = Segmenter(SegmenterOptions(early_s=0.12, **options), LoudnessVad())
    out = []
    for offset in range(0, len(audio), FRAME):
        for u in segmenter.push(audio[offset : offset + FRAME], T0 + offset / SAMPLE_RATE):
            out.append((u.early, u.start_s, offset / SAMPLE_RATE))
    return out


def test_a_short_utterance_gets_one_early_look_before_it_ends_with_the_same_start() -> None:
    out = _looks(np.concatenate([_silence(0.5), _tone(0.4), _silence(1.0)]))
    assert [early for early, _, _ in out] == [True, False]
    (_, early_start, early_at), (_, start, end_at) = out
    assert early_start == start
    # the look comes early_s (4 frames) after the speech, the end min_silence_s (13 frames)
    assert 0.9 - 0.01 < early_at < 0.9 + 5 * FRAME / SAMPLE_RATE
    assert end_at - early_at > 0.25


def test_one_early_look_per_pause_however_long_and_whatever_lies_between_thresholds() -> None:
    pause = np.concatenate([_silence(0.15), _tone(0.05, 0.4), _silence(0.1)])
    audio = np.concatenate([_silence(0.5), _tone(0.3), pause, _tone(0.3), _silence(1.0)])
    assert [early for early, _, _ in _looks(audio)] == [True, True, False]


def test_no_early_look_in_a_long_utterance_nor_when_off_nor_for_a_click() -> None:
    sentence = np.concatenate([_tone(0.7), _silence(0.2), _tone(0.7), _silence(1.0)])
    assert [early for early, _, _ in _looks(sentence)] == [True, False]  # not after 1.4 s
    sentence = np.concatenate([_tone(1.3), _silence(0.2), _tone(0.3), _silence(1.0)])
    assert [early for early, _, _ in _looks(sentence)] == [False]
    click = np.concatenate([_silence(0.5), _tone(0.03), _silence(1.0)])
    assert _looks(click) == []
    off = Segmenter(SegmenterOptions(), LoudnessVad())
    assert [u.early for u in off.push(np.concatenate([_tone(0.4), _silence(1.0)]), T0)] == [False]


def test_spoken_commands_get_one_early_look_each_and_none_inside_a_phrase() -> None:
    """Dutch pauses inside a phrase ("sta op", "ga liggen") are shorter than early_s."""
    audio, _ = _script()
    segmenter = Segmenter(SegmenterOptions(early_s=0.12))
    utterances = _stream(segmenter, audio, 512)
    early = [u.start_s for u in utterances if u.early]
    full = [u.start_s for u in utterances if not u.early]
    assert early == full
    assert len(full) == len(PHRASES)
    assert segmenter.early_looks == len(PHRASES)
