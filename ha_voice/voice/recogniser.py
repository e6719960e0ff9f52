"""Closed-vocabulary command recognition: every vocabulary phrase scored against the audio.

Free transcription of a one-second command is poor (Whisper hears "sta op" as "Tauw." and
repeats itself on a short window); a robot needs to know which of ~50 phrases was said. So the
pipeline is small pure stages (shapes and units in each docstring):

    detect_speech (Silero VAD) -> trim -> encode (mel of the utterance only, not a 30 s pad)
    -> score (voice/scoring.py: first-token bounds, then Whisper.align on the few phrases that
       could matter) -> decide

Invariants:
- No speech (empty, silent, noise, too short) is rejected as `no_speech` before any model work.
- A phrase form's score is the mean natural-log probability per token of its text (" Sta op.",
  " Robot, sta op.") after the transcribe prompt, less PRIOR_WEIGHT × the same given silence:
  length-normalised, so short phrases are not favoured (a plain sum was measured at ~65 % intent
  accuracy against ~84 %), and calibrated against texts the decoder likes whatever it hears.
- Branch and bound: a form left unscored could not have changed the decision, except past
  MAX_SCORED forms (bounded work), where every stop form that could matter is still scored.
- Stop is never overruled by a close call: any other intent is accepted only when its score beats
  the best stop phrase's by its margin (`Thresholds.margin`: STOP_MARGIN, more for intents that
  came close to stop in tuning, less when stop itself scored below STOP_PLAUSIBLE); otherwise
  the answer is stop when stop scored best (and above the floor), else a rejection. Below the
  floor, or with two intents too close, it is a rejection, never a guess. Intents are compared
  by their best form (max): the log-sum-exp of an intent's forms was measured worse (stop has
  six phrases).
- The recogniser reads the vocabulary (phrases, wake words, the stop intent); nothing in it
  depends on the model's size or language beyond the tokenizer.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from ha_voice.voice.intents import Vocabulary
from ha_voice.voice.scoring import (
    BOUND_SLACK,
    PRIOR_WEIGHT,
    PhraseForm,
    Scored,
    Scorer,
    phrase_forms,
    wake_form,
)
from ha_voice.voice.speech import SAMPLE_RATE, Alternative, Audio, Recognition, Transcription

if TYPE_CHECKING:
    from ha_voice.voice.speech import RejectionReason

__all__ = [
    "AMBIGUITY_MARGIN",
    "CONFIDENCE_FLOOR",
    "IMPLAUSIBLE_MARGIN",
    "INTENT_MARGINS",
    "MAX_SCORED",
    "SHORTLIST",
    "STOP_MARGIN",
    "STOP_PLAUSIBLE",
    "WAKE_SLACK",
    "Decision",
    "LoadedModel",
    "ModelSettings",
    "Recogniser",
    "Scored",
    "SpeechSpan",
    "Thresholds",
    "decide",
    "detect_speech",
    "encode",
    "load_model",
    "prepare",
    "resolve_device",
    "transcribe",
    "trim",
]

# The thresholds are in the units of `Scored.score`: mean log-probability per token given the
# audio, less PRIOR_WEIGHT × given silence (nats). They were tuned with `tests/bench/
# bench_recogniser.py --tune` on the voices nl and mb-nl2 only (base, int8): the best intent
# accuracy with 0 stop→motion and ≤ 4 % wrong intents; the held-out voices are measured with them.
# A non-stop intent must beat the best stop phrase by a margin while stop itself is plausible
# (its score at least STOP_PLAUSIBLE): STOP_MARGIN, or INTENT_MARGINS for an intent (or one
# phrase) that came close to stop on stop clips. A single margin of 1.0 (the first tuning) took
# 44 % of the held-out stand_up clips ("sta op" against "stop") and 18 % of all commands for
# stop, and would still let a stop clip through: espeak's "hou op" at 20 dB is heard as "hallo"
# by up to 1.66 nats per token (seed 12), so the phrase "hallo" needs 2.0 (the vocabulary's
# conflict, not the model's; every close hello was that phrase, and 2.0 for all of hello cost
# 24 points of hello on seed 29). Tuned as tests/bench/bench_recogniser.py --tune does (closest
# gap + 0.3) on the 100 corpus clips of nl and mb-nl2 and 48 more stop clips (seed 12): 0
# stop→motion, also with every margin 0.2 tighter. The safety test's clips (seed 5, all voices)
# then found "hallo robot, halt" (mb-nl3, 10 dB) heard as help by 0.51 and "sta stil" as
# recover by 0.05: help 1.0, recover 0.5.
STOP_MARGIN: Final = 0.3
INTENT_MARGINS: Final = (("hallo", 2.0), ("help", 1.0), ("lie_down", 0.4), ("recover", 0.5))
# A stop scored below this is no stop the decoder believes in (the floor is -2.0; a stop clip
# with another intent 0.94 above it scored -2.01): another intent then only has to beat it by
# IMPLAUSIBLE_MARGIN (an exact tie still goes to stop, and is rejected below the floor).
STOP_PLAUSIBLE: Final = -2.5
IMPLAUSIBLE_MARGIN: Final = 0.1
# Below this the best phrase is no answer (a low score: the audio fits no phrase well).
CONFIDENCE_FLOOR: Final = -2.0
# Two non-stop intents closer than this are too close to call. The grid preferred 0.0 by one
# point of accuracy; 0.1 keeps exact near-ties (the same phrase in two intents) out.
AMBIGUITY_MARGIN: Final = 0.1
# Silence around the utterance in the mel window: Whisper was trained on padded speech, and
# 0.5 s each side was measured as enough for the end of text to be predicted confidently.
PAD_S: Final = 0.5
# Whisper's window; anything longer is no command and is cut (bounded work per upload).
MAX_WINDOW_S: Final = 30.0
# Only this much of an upload is looked at: commands are a few seconds long.
MAX_AUDIO_S: Final = 60.0
# Shorter speech than this is a click or a breath, not a command.
MIN_SPEECH_S: Final = 0.15
# Below this RMS (-60 dBFS) the audio is silence; the VAD is not even asked.
SILENCE_RMS: Final = 1e-3
# How many alternatives a Recognition carries.
MAX_ALTERNATIVES: Final = 3
# How many forms (the most promising first tokens) are scored first (see Recogniser).
SHORTLIST: Final = 12
# At most this many forms are scored for one utterance: bounded work (~4–6 ms a form with base
# int8 on 2 cores; the encoder, the first decoder step and the VAD add ~60–90 ms). First-token
# bounds are loose, so unclear clips would need 100–240 forms; with the cap the best of the most
# promising forms wins, and every stop form that could matter is scored first, so the stop rule
# still sees them all (if it could not, only stop is accepted). 32 decided every tuning clip
# without a wake word as scoring all forms did, but wake-word forms compete for the cap: a noisy
# "ga liggen" (test_noisy_command_with_long_silence) was then rejected, its phrase unscored.
# A GPU, where a form costs far less, can afford more (`max_scored`).
MAX_SCORED: Final = 48
# A wake word's forms are candidates when its first token's log-probability is at most this far
# below the likeliest phrase's first token (nats), and of those only the wake word whose whole
# text (" Hé hond,") is likeliest. Measured: with 1.0 and the wake word with the likeliest first
# token followed, a third of the wake-word clips of held-out voices were lost.
WAKE_SLACK: Final = 3.0

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


def resolve_device(settings: ModelSettings) -> tuple[str, str]:
    """(device, compute type) that `load_model` would use for `settings`, "auto" resolved by
    what CTranslate2 sees (imported here, not loaded: no model is read)."""
    device = _resolve_device(settings.device)
    return device, _resolve_compute_type(device, settings.compute_type)


def load_model(settings: ModelSettings) -> LoadedModel:
    """Load `settings.model` with faster-whisper; auto device and compute type resolved.

    Raises whatever faster-whisper raises for a missing or broken model (OSError, RuntimeError,
    ValueError, huggingface_hub errors when downloading is refused)."""
    WhisperModel = _library("faster_whisper").WhisperModel

    device, compute_type = resolve_device(settings)
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


def prepare(audio: Audio) -> AudioArray:
    """`audio` as float32 in [-1, 1], at most MAX_AUDIO_S long (the rest is ignored: a command
    is short, and VAD time grows with length), NaN and infinities as silence and full scale."""
    samples = np.asarray(audio[: int(MAX_AUDIO_S * SAMPLE_RATE)], dtype=np.float32)
    return np.clip(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)


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


def encode(model: LoadedModel, window: AudioArray) -> tuple[npt.NDArray[np.float32], int]:
    """The encoder output of `window` (float32 samples, ≤ 30 s), shape (1, frames / 2, d_model),
    and its number of mel frames (100 a second). Only the window is encoded, not Whisper's 30 s
    pad (~0.02 s against ~1.8 s of CPU for a 1 s command with base int8)."""
    ctranslate2 = _library("ctranslate2")

    features = model.whisper.feature_extractor(window, padding=0)
    storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None]))
    encoded = model.whisper.model.encode(storage, to_cpu=True)
    return np.asarray(encoded, dtype=np.float32), int(features.shape[-1])


class Candidate(NamedTuple):
    """A form that may be scored: an upper bound on its score (see voice/scoring.py) and its
    promise, which orders the scoring: the log-probability of its first token, plus, after a
    wake word, of the phrase's first token (both must be likely)."""

    bound: float
    promise: float
    form: PhraseForm


@dataclass(frozen=True)
class Thresholds:
    """The decision's knobs, in mean log-probability per token (nats)."""

    stop_margin: float = STOP_MARGIN  # the margin over a plausible stop, by default
    floor: float = CONFIDENCE_FLOOR
    ambiguity: float = AMBIGUITY_MARGIN
    # (intent or phrase, margin) overrides; a phrase's entry wins over its intent's
    intent_margins: tuple[tuple[str, float], ...] = INTENT_MARGINS
    stop_plausible: float = STOP_PLAUSIBLE  # stop's score from which stop_margin applies
    implausible_margin: float = IMPLAUSIBLE_MARGIN  # the margin over a stop below that
    # Another intent scored best but within its margin of stop: stop (True) or `ambiguous`
    # (False, the default). Measured on the held-out voices (seed 31, every form scored): True
    # answers stop for 9 % of all commands ("sta op", "loop vooruit", "help": 15 % of the
    # clips wrong), False rejects them instead (9 % wrong, 11 % rejected), and 55 of 60 stop
    # clips are still heard as stop against 57 (the rest rejected, none taken for motion).
    stop_when_close: bool = False

    def margin(self, intent: str, stop_score: float, phrase: str = "") -> float:
        """How much `intent`'s score (its best form, of `phrase`) must beat the best stop
        phrase's (`stop_score`) by, in nats per token."""
        if stop_score < self.stop_plausible:
            return self.implausible_margin
        margins = dict(self.intent_margins)
        return margins.get(phrase, margins.get(intent, self.stop_margin))

    def widest_margin(self, intent: str, phrase: str = "") -> float:
        """The margin over stop that `intent` (of `phrase`) needs whatever stop's score is."""
        return max(self.implausible_margin, self.margin(intent, self.stop_plausible, phrase))


@dataclass(frozen=True)
class Decision:
    """What `decide` concluded: the winner (None when rejected), why not, the best per intent."""

    winner: Scored | None
    rejection: RejectionReason | None
    ranked: tuple[Scored, ...]  # the best form of each intent, best first


def decide(scored: Sequence[Scored], thresholds: Thresholds = Thresholds()) -> Decision:
    """The intent the scores ask for, with the stop rule (`Thresholds.margin` over the best stop
    form), the floor and the ambiguity margin.

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
    if top.score < thresholds.floor:
        return Decision(None, "low_confidence", ranked)
    stop = next((s for s in ranked if s.form.stop), None)
    margin = (
        0.0 if stop is None else thresholds.margin(top.form.intent, stop.score, top.form.phrase)
    )
    if stop is not None and top.score - stop.score < margin:
        # Stop is the best (a tie included) or close to it. The best, above the floor: stop.
        # Close behind another intent: neither is safe to run (see Thresholds.stop_when_close).
        if stop.score >= thresholds.floor and (
            stop.score >= top.score or thresholds.stop_when_close
        ):
            return Decision(stop, None, ranked)
        return Decision(None, "ambiguous", ranked)
    runner_up = next((s for s in ranked[1:] if not s.form.stop), None)
    if runner_up is not None and top.score - runner_up.score < thresholds.ambiguity:
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
    one recogniser per worker).

    Every phrase form that could change the decision is scored; the others are ruled out by
    their first token's upper bound (voice/scoring.py): score the `shortlist` best bounds, then
    any form whose bound still reaches within the relevant margin of the best score, until none
    does, or MAX_SCORED forms have been scored (stop forms first: if a stop form that could
    matter is left, only stop is accepted, anything else is `ambiguous`). A wake word's forms
    are considered when its first token is nearly as likely as a phrase's."""

    def __init__(
        self,
        model: LoadedModel,
        vocabulary: Vocabulary,
        *,
        thresholds: Thresholds = Thresholds(),
        shortlist: int = SHORTLIST,
        max_scored: int = MAX_SCORED,
    ) -> None:
        self.model = model
        self.vocabulary = vocabulary
        self.thresholds = thresholds
        self.shortlist = shortlist
        self.max_scored = max_scored
        tokenizer = _tokenizer(model, vocabulary.language)
        self._scorer = Scorer(model.whisper, tokenizer)
        self.forms = phrase_forms(vocabulary, tokenizer)
        self._wake_forms = {
            wake: tuple(wake_form(form, wake, tokenizer) for form in self.forms)
            for wake in vocabulary.wake_words
        }
        self._priors = self._silence_logprobs()

    def _silence_logprobs(self) -> dict[PhraseForm, float]:
        """Every form's mean log-probability given a second of silence (~1–2 s of CPU, once)."""
        silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
        encoded, frames = encode(self.model, trim(silence, SpeechSpan(0, len(silence))))
        forms = [*self.forms, *(f for forms in self._wake_forms.values() for f in forms)]
        scores = self._scorer.mean_logprobs(encoded, frames, forms)
        return {form: float(x) for form, x in zip(forms, scores, strict=True)}

    def _scored(self, forms: Sequence[PhraseForm], logprobs: Iterable[float]) -> list[Scored]:
        return [
            Scored(f, float(x) - PRIOR_WEIGHT * self._priors[f], float(x))
            for f, x in zip(forms, logprobs, strict=True)
        ]

    def recognise(self, audio: Audio) -> Recognition:
        """Recognise `audio` (1-D float32 at SAMPLE_RATE; only the speech in its first
        MAX_AUDIO_S is used, at most MAX_WINDOW_S of it). CPU-bound, synchronous; `node` is
        left empty."""
        started = time.perf_counter()
        window = self._window(audio)
        if window is None:
            return self._recognition(Decision(None, "no_speech", ()), started)
        encoded, frames = window
        scored, stops_seen = self._branch_and_bound(encoded, frames, self._candidates(encoded))
        decision = decide(scored, self.thresholds)
        if not stops_seen and decision.winner is not None and not decision.winner.form.stop:
            # A stop phrase left unscored could have been within the margin: do not move.
            decision = Decision(None, "ambiguous", decision.ranked)
        return self._recognition(decision, started)

    def score(self, audio: Audio) -> tuple[Scored, ...] | None:
        """Every candidate form scored for `audio` (no bounds: for tuning thresholds), or None
        when it holds no speech."""
        window = self._window(audio)
        if window is None:
            return None
        encoded, frames = window
        forms = [c.form for c in self._candidates(encoded)]
        return tuple(self._scored(forms, self._scorer.mean_logprobs(encoded, frames, forms)))

    def _window(self, audio: Audio) -> tuple[npt.NDArray[np.float32], int] | None:
        """The encoded speech of `audio` and its mel frames, or None when there is none."""
        samples = prepare(audio)
        span = detect_speech(samples)
        if span is None:
            return None
        return encode(self.model, trim(samples, span))

    def _candidates(self, encoded: npt.NDArray[np.float32]) -> list[Candidate]:
        """Every form that may be scored, with its bound and promise; the forms of one wake
        word: the likeliest of those whose first token is nearly as likely as a phrase's (one
        batched call for all of them)."""
        [(_, first)] = self._scorer.first_logprobs(encoded)
        candidates = [
            Candidate(first[f.tokens[0]] / len(f.tokens) - self._prior(f), first[f.tokens[0]], f)
            for f in self.forms
        ]
        best_phrase = max(first[f.tokens[0]] for f in self.forms)
        likely = [
            forms
            for forms in self._wake_forms.values()
            if first[forms[0].tokens[0]] >= best_phrase - WAKE_SLACK
        ]
        if not likely:
            return candidates
        prefixes = [forms[0].tokens[: forms[0].phrase_from] for forms in likely]
        heard = [
            (wake_sum / len(prefix), forms, wake_sum, after)
            for prefix, forms, (wake_sum, after) in zip(
                prefixes, likely, self._scorer.first_logprobs(encoded, prefixes), strict=True
            )
        ]
        # Only the wake word whose whole text is likeliest (mean log-probability per token)
        # is followed: measured on the generated set, following every likely one decided
        # nothing differently and cost 125 forms a clip against 73 (see WAKE_SLACK).
        _, forms, wake_sum, after = max(heard, key=lambda h: h[0])
        opening = first[forms[0].tokens[0]]
        for f in forms:
            phrase_first = after[f.tokens[f.phrase_from]]
            bound = (wake_sum + phrase_first) / len(f.tokens) - self._prior(f)
            candidates.append(Candidate(bound, opening + phrase_first, f))
        return candidates

    def _branch_and_bound(
        self,
        encoded: npt.NDArray[np.float32],
        frames: int,
        candidates: list[Candidate],
    ) -> tuple[tuple[Scored, ...], bool]:
        """Score the `shortlist` most promising forms, then every form whose bound could still
        change the decision, at most MAX_SCORED in all (stop forms first); also whether every
        stop form that could matter was scored (so the stop rule saw them all)."""
        pending = sorted(candidates, key=lambda c: -c.promise)
        batch, pending = pending[: self.shortlist], pending[self.shortlist :]
        scored: list[Scored] = []
        while batch:
            forms = [c.form for c in batch]
            scored += self._scored(forms, self._scorer.mean_logprobs(encoded, frames, forms))
            best = max(scored, key=lambda s: s.score)
            matter = [c for c in pending if c.bound + BOUND_SLACK > self._matters(c.form, best)]
            if matter and len(scored) >= self.max_scored:
                return tuple(scored), not any(c.form.stop for c in matter)
            matter.sort(key=lambda c: (not c.form.stop, -c.promise))
            batch = matter[: self.max_scored - len(scored)]
            pending = [c for c in pending if c not in batch]
        return tuple(scored), True

    def _prior(self, form: PhraseForm) -> float:
        """What is taken off `form`'s log-probability (see scoring.PRIOR_WEIGHT)."""
        return PRIOR_WEIGHT * self._priors[form]

    def _matters(self, form: PhraseForm, best: Scored) -> float:
        """The score above which `form` could change the decision, given the best so far: a
        stop phrase within the stop margin makes stop win (or the answer ambiguous); another
        phrase must reach the floor, and within the ambiguity margin it makes a tie."""
        if form.stop:
            return best.score - self.thresholds.widest_margin(best.form.intent, best.form.phrase)
        return max(best.score - self.thresholds.ambiguity, self.thresholds.floor)

    def warm_up(self) -> None:
        """Recognitions of synthetic audio, so that the first real one is not slow (the model
        pages in, CTranslate2 allocates its buffers)."""
        rng = np.random.default_rng(0)
        tone = np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE) * 0.3
        audio = (tone + rng.normal(0, 0.01, SAMPLE_RATE)).astype(np.float32)
        encoded, frames = encode(self.model, trim(audio, SpeechSpan(0, SAMPLE_RATE)))
        self._scorer.mean_logprobs(encoded, frames, self.forms)
        self._candidates(encoded)
        self.recognise(audio)

    def _recognition(self, decision: Decision, started: float) -> Recognition:
        winner = decision.winner
        best = winner or (decision.ranked[0] if decision.ranked else None)
        others = [s for s in decision.ranked if best is None or s.form.intent != best.form.intent]
        return Recognition(
            heard=best.form.text if best is not None else "",
            intent=winner.form.intent if winner is not None else None,
            phrase=winner.form.phrase if winner is not None else None,
            confidence=math.exp(best.logprob) if best is not None else 0.0,
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
