"""Closed-vocabulary command recognition: every vocabulary phrase scored against the audio.

Free transcription of a one-second command is poor (Whisper hears "sta op" as "Tauw." and
repeats itself on a short window); a robot needs to know which of ~50 phrases was said. So the
pipeline is small pure stages (shapes and units in each docstring):

    detect_speech (Silero VAD) -> trim -> encode (mel of the utterance only, not a 30 s pad)
    -> score (forced decoding of every phrase in batched CTranslate2 calls) -> decide

Invariants:
- No speech (empty, silent, noise, too short) is rejected as `no_speech` before any model work.
- A phrase's score is the mean natural-log probability per token of " Phrase." and the end of
  text after it, forced after the transcribe prompt: length-normalised, so short phrases are not
  favoured (a plain sum was measured at ~65 % intent accuracy against ~84 %).
- Stop wins whenever it is plausible: any other intent is accepted only when its score beats the
  best stop phrase's by `STOP_MARGIN`; otherwise the answer is stop (when stop itself is above
  the floor) or a rejection. Below the floor, or with two intents too close, it is a rejection,
  never a guess.
- The recogniser reads the vocabulary (phrases, wake words, the stop intent); nothing in it
  depends on the model's size or language beyond the tokenizer.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.speech import SAMPLE_RATE, Alternative, Audio, Recognition, Transcription

if TYPE_CHECKING:
    from ha_voice.voice.speech import RejectionReason

__all__ = [
    "AMBIGUITY_MARGIN",
    "CONFIDENCE_FLOOR",
    "STOP_MARGIN",
    "LoadedModel",
    "ModelSettings",
    "PhraseForm",
    "Recogniser",
    "Scored",
    "SpeechSpan",
    "decide",
    "detect_speech",
    "encode",
    "load_model",
    "phrase_forms",
    "transcribe",
    "trim",
]

# A non-stop intent must beat the best stop phrase by this much mean log-probability per token
# (nats). The measurement: 0.5 took stop→motion false accepts from 3/72 to 0/72.
STOP_MARGIN: Final = 0.5
# Below this mean log-probability per token (exp ≈ 0.22) the best phrase is no answer.
CONFIDENCE_FLOOR: Final = -1.5
# Two non-stop intents closer than this (nats per token) are too close to call.
AMBIGUITY_MARGIN: Final = 0.1
# Silence around the utterance in the mel window: Whisper was trained on padded speech, and
# 0.5 s each side was measured as enough for the end of text to be predicted confidently.
PAD_S: Final = 0.5
# Whisper's window; anything longer is no command and is cut (bounded work per upload).
MAX_WINDOW_S: Final = 30.0
# Shorter speech than this is a click or a breath, not a command.
MIN_SPEECH_S: Final = 0.15
# Below this RMS (-60 dBFS) the audio is silence; the VAD is not even asked.
SILENCE_RMS: Final = 1e-3
# How many alternatives a Recognition carries.
MAX_ALTERNATIVES: Final = 3
# CTranslate2 returns at most this many generated tokens per prompt when scoring.
_MAX_TOKENS: Final = 64

AudioArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ModelSettings:
    """Which Whisper model to load and how."""

    model: str  # size name ("tiny" … "large-v3") or a CTranslate2 model directory
    device: str = "auto"  # auto | cpu | cuda
    compute_type: str = "auto"  # auto: int8 on CPU, float16 on CUDA (int8_float16 if unsupported)
    cpu_threads: int = 0  # 0: CTranslate2's default
    download_root: str | None = None  # where size names are downloaded to (None: HF cache)
    local_files_only: bool = False  # never download; a missing model fails to load


@dataclass(frozen=True)
class LoadedModel:
    """A loaded faster-whisper model with what it resolved to."""

    whisper: Any  # faster_whisper.WhisperModel
    name: str  # as configured: a size name or a directory
    device: str  # cpu | cuda
    compute_type: str  # int8, float16, int8_float16, …

    @property
    def multilingual(self) -> bool:
        """Whether the model knows languages other than English."""
        return bool(self.whisper.model.is_multilingual)


def _library(name: str) -> Any:
    """Import a speech library when first needed: CLI commands that start no server must not
    pay for (or need) faster-whisper and CTranslate2, and neither ships type information."""
    return importlib.import_module(name)


def _resolve_device(device: str) -> str:
    ctranslate2 = _library("ctranslate2")

    if device != "auto":
        return device
    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def _resolve_compute_type(device: str, compute_type: str) -> str:
    ctranslate2 = _library("ctranslate2")

    if compute_type != "auto":
        return compute_type
    if device == "cpu":
        return "int8"
    supported = ctranslate2.get_supported_compute_types(device)
    return "float16" if "float16" in supported else "int8_float16"


def load_model(settings: ModelSettings) -> LoadedModel:
    """Load `settings.model` with faster-whisper; auto device and compute type resolved.

    Raises whatever faster-whisper raises for a missing or broken model (OSError, RuntimeError,
    ValueError, huggingface_hub errors when downloading is refused)."""
    WhisperModel = _library("faster_whisper").WhisperModel

    device = _resolve_device(settings.device)
    compute_type = _resolve_compute_type(device, settings.compute_type)
    whisper = WhisperModel(
        settings.model,
        device=device,
        compute_type=compute_type,
        cpu_threads=settings.cpu_threads,
        download_root=settings.download_root,
        local_files_only=settings.local_files_only,
    )
    return LoadedModel(whisper, settings.model, device, compute_type)


@dataclass(frozen=True)
class SpeechSpan:
    """Where speech is in a clip, in samples at SAMPLE_RATE: [start, end)."""

    start: int
    end: int

    @property
    def duration_s(self) -> float:
        """The span's length in seconds."""
        return (self.end - self.start) / SAMPLE_RATE


def detect_speech(audio: Audio) -> SpeechSpan | None:
    """The span from the first to the last speech Silero VAD finds in `audio` (1-D float32 at
    SAMPLE_RATE), or None for silence, noise, empty or too short (< MIN_SPEECH_S) audio."""
    if len(audio) < MIN_SPEECH_S * SAMPLE_RATE:
        return None
    if float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < SILENCE_RMS:
        return None
    vad = _library("faster_whisper.vad")

    options = vad.VadOptions(min_speech_duration_ms=int(MIN_SPEECH_S * 1000), speech_pad_ms=100)
    chunks = vad.get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
    if not chunks:
        return None
    span = SpeechSpan(int(chunks[0]["start"]), int(chunks[-1]["end"]))
    return span if span.duration_s >= MIN_SPEECH_S else None


def trim(audio: Audio, span: SpeechSpan) -> AudioArray:
    """The speech of `audio` in `span` with PAD_S of silence each side, at most MAX_WINDOW_S."""
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), dtype=np.float32)
    longest = int(MAX_WINDOW_S * SAMPLE_RATE) - 2 * len(pad)
    speech = np.asarray(audio[span.start : min(span.end, span.start + longest)], dtype=np.float32)
    return np.concatenate([pad, speech, pad])


def encode(model: LoadedModel, window: AudioArray) -> npt.NDArray[np.float32]:
    """The encoder output of `window` (float32 samples, ≤ 30 s): shape (1, frames, d_model),
    frames = 50 a second. Only the window is encoded, not Whisper's 30 s pad (~0.02 s against
    ~1.8 s of CPU for a 1 s command with base int8)."""
    ctranslate2 = _library("ctranslate2")

    features = model.whisper.feature_extractor(window, padding=0)
    storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None]))
    encoded = model.whisper.model.encode(storage, to_cpu=True)
    return np.asarray(encoded, dtype=np.float32)


@dataclass(frozen=True)
class PhraseForm:
    """One way to say an intent's phrase, as the tokens forced after the transcribe prompt.

    `tokens` are all forced tokens; the score is over `tokens[scored_from:]` and the end of text:
    a wake word before the phrase conditions the phrase but is not part of its score."""

    text: str  # what was scored, as shown: "sta op" or "robot, sta op"
    phrase: str  # the vocabulary phrase
    intent: str
    stop: bool
    tokens: tuple[int, ...]
    scored_from: int = 0


@dataclass(frozen=True)
class Scored:
    """A phrase form with its mean log-probability per scored token (nats, ≤ 0)."""

    form: PhraseForm
    score: float


def _whisper_text(text: str, capitalise: bool) -> str:
    """How Whisper writes a short utterance: a leading space, capitalised."""
    return " " + (text[:1].upper() + text[1:] if capitalise else text)


def phrase_forms(vocabulary: Vocabulary, tokenizer: Any) -> tuple[PhraseForm, ...]:
    """Every phrase of every intent as " Phrase." token ids of `tokenizer` (faster-whisper's)."""
    forms = []
    for intent in vocabulary.intents:
        for phrase in intent.phrases:
            tokens = tokenizer.encode(_whisper_text(phrase, True) + ".")
            forms.append(PhraseForm(phrase, phrase, intent.name, intent.stop, tuple(tokens)))
    return tuple(forms)


def wake_forms(form: PhraseForm, wake: str, tokenizer: Any) -> PhraseForm:
    """`form` said after wake word `wake`: " Robot, sta op." scored from "sta"."""
    prefix = tokenizer.encode(_whisper_text(wake, True) + ",")
    tokens = tokenizer.encode(_whisper_text(form.phrase, False) + ".")
    return PhraseForm(
        f"{wake}, {form.phrase}",
        form.phrase,
        form.intent,
        form.stop,
        tuple(prefix) + tuple(tokens),
        len(prefix),
    )


class _Scorer:
    """Forced decoding of many token sequences against one encoder output, batched.

    CTranslate2's `Whisper.generate` forces prompt tokens after the start sequence and, with
    `return_logits_vocab`, returns the logits of every position after it. Prompts of different
    lengths in one batch cut the longer ones short, so sequences are grouped by length, and how
    far `max_length` must reach for a length is found once and remembered."""

    def __init__(self, model: LoadedModel, sot: Sequence[int], eot: int) -> None:
        self._model = model
        self._sot = list(sot)
        self._eot = eot
        self._max_length: dict[int, int] = {}

    def mean_logprobs(
        self,
        encoded: npt.NDArray[np.float32],
        forms: Sequence[PhraseForm],
        with_end: bool = True,
    ) -> npt.NDArray[np.float64]:
        """Per form, the mean log-probability of `tokens[scored_from:]` (and the end of text
        when `with_end`) given the audio `encoded` (1, frames, d): shape (len(forms),)."""
        scores = np.zeros(len(forms), dtype=np.float64)
        groups: dict[int, list[int]] = {}
        for index, form in enumerate(forms):
            groups.setdefault(len(form.tokens), []).append(index)
        for length, indexes in groups.items():
            group = [forms[i] for i in indexes]
            scores[indexes] = self._score_group(encoded, group, length, with_end)
        return scores

    def _score_group(
        self,
        encoded: npt.NDArray[np.float32],
        forms: Sequence[PhraseForm],
        length: int,
        with_end: bool,
    ) -> npt.NDArray[np.float64]:
        positions = length + 1 if with_end else length
        logits = self._logits(encoded, [list(f.tokens) for f in forms], length, positions)
        targets = np.array([[*f.tokens, self._eot][:positions] for f in forms])
        top = logits.max(axis=2, keepdims=True)
        log_norm = np.log(np.exp(logits - top).sum(axis=2)) + top[..., 0]
        picked = np.take_along_axis(logits, targets[..., None], axis=2)[..., 0]
        logprobs = picked.astype(np.float64) - log_norm
        mask = np.zeros_like(logprobs, dtype=bool)
        for row, form in enumerate(forms):
            mask[row, form.scored_from :] = True
        return np.asarray((logprobs * mask).sum(axis=1) / mask.sum(axis=1), dtype=np.float64)

    def _logits(
        self,
        encoded: npt.NDArray[np.float32],
        prompts: list[list[int]],
        length: int,
        positions: int,
    ) -> npt.NDArray[np.float32]:
        """Logits (len(prompts), positions, vocabulary) after sot for same-length prompts."""
        ctranslate2 = _library("ctranslate2")

        tiled = ctranslate2.StorageView.from_array(np.repeat(encoded, len(prompts), axis=0))
        max_length = self._max_length.get(positions, positions + length + 1)
        while True:
            results = self._model.whisper.model.generate(
                tiled,
                [self._sot + p for p in prompts],
                beam_size=1,
                max_length=max_length,
                return_logits_vocab=True,
                suppress_blank=False,
                suppress_tokens=[],
            )
            got = min(len(r.logits[0]) for r in results)
            if got >= positions:
                self._max_length[positions] = max_length
                break
            if max_length > positions + length + _MAX_TOKENS:
                raise RuntimeError(f"CTranslate2 returned {got} of {positions} logits")
            max_length += positions - got
        return np.stack(
            [np.stack([np.asarray(x) for x in r.logits[0][:positions]]) for r in results]
        ).astype(np.float32)


@dataclass(frozen=True)
class Decision:
    """What `decide` concluded: the winner (None when rejected), why not, the best per intent."""

    winner: Scored | None
    rejection: RejectionReason | None
    ranked: tuple[Scored, ...]  # the best form of each intent, best first


def decide(scored: Sequence[Scored]) -> Decision:
    """The intent the scores ask for, with the stop rule, the floor and the ambiguity margin.

    `scored` holds every form scored (several per intent); the best per intent counts."""
    best: dict[str, Scored] = {}
    for item in scored:
        known = best.get(item.form.intent)
        if known is None or item.score > known.score:
            best[item.form.intent] = item
    ranked = tuple(sorted(best.values(), key=lambda s: -s.score))
    if not ranked:
        return Decision(None, "no_speech", ranked)
    top = ranked[0]
    stop = next((s for s in ranked if s.form.stop), None)
    stop_plausible = stop is not None and stop.score >= CONFIDENCE_FLOOR
    if top.form.stop:
        return (
            Decision(top, None, ranked)
            if stop_plausible
            else Decision(None, "low_confidence", ranked)
        )
    if stop is not None and top.score - stop.score < STOP_MARGIN:
        # Stop is close: it wins when it is plausible itself, else nothing is safe to do.
        return (
            Decision(stop, None, ranked) if stop_plausible else Decision(None, "ambiguous", ranked)
        )
    if top.score < CONFIDENCE_FLOOR:
        return Decision(None, "low_confidence", ranked)
    runner_up = next((s for s in ranked[1:] if not s.form.stop), None)
    if runner_up is not None and top.score - runner_up.score < AMBIGUITY_MARGIN:
        return Decision(None, "ambiguous", ranked)
    return Decision(top, None, ranked)


def _tokenizer(model: LoadedModel, language: str) -> Any:
    Tokenizer = _library("faster_whisper.tokenizer").Tokenizer

    if model.multilingual:
        return Tokenizer(model.whisper.hf_tokenizer, True, task="transcribe", language=language)
    if language != "en":
        raise ValueError(f"model {model.name} is English-only; the vocabulary is {language!r}")
    return Tokenizer(model.whisper.hf_tokenizer, False)


class Recogniser:
    """Recognises one utterance against a vocabulary with one loaded model (not thread-safe:
    one recogniser per worker)."""

    def __init__(self, model: LoadedModel, vocabulary: Vocabulary) -> None:
        self.model = model
        self.vocabulary = vocabulary
        tokenizer = _tokenizer(model, vocabulary.language)
        sot = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        self._scorer = _Scorer(model, sot, tokenizer.eot)
        self.forms = phrase_forms(vocabulary, tokenizer)

    def recognise(self, audio: Audio) -> Recognition:
        """Recognise `audio` (1-D float32 at SAMPLE_RATE, any length: only the speech is used,
        at most MAX_WINDOW_S of it). CPU-bound, synchronous; `node` is left empty."""
        started = time.perf_counter()
        span = detect_speech(np.asarray(audio, dtype=np.float32))
        if span is None:
            return self._recognition(Decision(None, "no_speech", ()), started)
        encoded = encode(self.model, trim(audio, span))
        scores = self._scorer.mean_logprobs(encoded, self.forms)
        scored = [Scored(form, float(s)) for form, s in zip(self.forms, scores, strict=True)]
        return self._recognition(decide(scored), started)

    def warm_up(self) -> None:
        """One recognition of synthetic audio, so that the first real one is not slow."""
        rng = np.random.default_rng(0)
        tone = np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE) * 0.3
        scorer_audio = (tone + rng.normal(0, 0.01, SAMPLE_RATE)).astype(np.float32)
        encoded = encode(self.model, trim(scorer_audio, SpeechSpan(0, SAMPLE_RATE)))
        self._scorer.mean_logprobs(encoded, self.forms)
        self.recognise(scorer_audio)

    def _recognition(self, decision: Decision, started: float) -> Recognition:
        winner = decision.winner
        best = winner or (decision.ranked[0] if decision.ranked else None)
        others = [s for s in decision.ranked if best is None or s.form.intent != best.form.intent]
        return Recognition(
            heard=best.form.text if best is not None else "",
            intent=winner.form.intent if winner is not None else None,
            phrase=winner.form.phrase if winner is not None else None,
            confidence=math.exp(best.score) if best is not None else 0.0,
            alternatives=tuple(
                Alternative(s.form.text, s.form.intent, s.score) for s in others[:MAX_ALTERNATIVES]
            ),
            rejection=decision.rejection,
            language=self.vocabulary.language,
            model=self.model.name,
            stt_ms=(time.perf_counter() - started) * 1000,
        )


def transcribe(
    model: LoadedModel, audio: Audio, language: str | None, prompt: str | None
) -> Transcription:
    """Free transcription of `audio` (1-D float32 at SAMPLE_RATE); `language` None detects it,
    `prompt` is Whisper's initial prompt. Greedy at temperature 0 without fallback, no text
    conditioning between windows and at most 224 tokens a window: bounded time per second."""
    started = time.perf_counter()
    segments, info = model.whisper.transcribe(
        np.asarray(audio, dtype=np.float32),
        language=language,
        initial_prompt=prompt,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
        temperature=0,
        beam_size=1,
        max_new_tokens=224,
    )
    parts = tuple((float(s.start), float(s.end), str(s.text)) for s in segments)
    return Transcription(
        text="".join(text for _, _, text in parts).strip(),
        language=str(info.language),
        duration_s=float(info.duration),
        segments=parts,
        model=model.name,
        stt_ms=(time.perf_counter() - started) * 1000,
    )
