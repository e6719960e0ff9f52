"""Streaming utterance cutting: Silero VAD (from faster-whisper) over 512-sample frames.

Blocks of any length go in (`Segmenter.push`), utterances come out: (start_s, samples) from the
first speech frame less `pad_s` to the last speech frame plus `pad_s`, once `min_silence_s` of
silence follows, or at `max_utterance_s` (then the next utterance starts where it was cut).
With `early_s` > 0 it also gives an *early look* at a short utterance under way (`early=True`):
the speech so far once `early_s` of silence follows it, long before `min_silence_s` ends it, so
that a spoken "stop" can be decided at once (voice/listening.py runs only a stop from one).

Invariants:
- Bounded memory: at most max_utterance_s of speech, pad_s of lead-in and one partial frame are
  held, whatever is pushed.
- The VAD keeps its recurrent state and 64 samples of context across blocks, as Silero's own
  streaming iterator does, so cutting a stream into blocks does not change what is heard.
- A jump in stream time (a gap: `push(..., gap_s>0)`) ends the frame run: an utterance under way
  is dropped and counted in `lost` (it was cut by the gap), never glued to what follows.
- Early looks are bounded: at most one per pause, none once more than `early_max_voiced_s` of
  speech was heard (a sentence, not a stop); each has the start of the utterance it looks at,
  which still ends in one full (`early=False`) utterance of that start.
- Pure apart from the VAD model, which is a `FrameVad` (`SileroVad` by default).
"""

from __future__ import annotations

import collections
import importlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from ha_voice.voice.speech import SAMPLE_RATE, Audio

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["FRAME", "FrameVad", "Segmenter", "SegmenterOptions", "SileroVad", "Utterance"]

FRAME: Final = 512  # samples per VAD frame: what Silero takes at 16 kHz (32 ms)
_CONTEXT: Final = 64  # samples of the previous frame Silero v5+ reads before each frame
FRAME_S: Final = FRAME / SAMPLE_RATE


class FrameVad(Protocol):
    """Speech probability of consecutive frames of one stream."""

    def probability(self, frame: Audio) -> float:
        """P(speech) in [0, 1] of one FRAME-sample frame following the previous one."""
        ...

    def reset(self) -> None:
        """Forget the stream so far (after a gap)."""
        ...


class SileroVad:
    """faster-whisper's Silero VAD model with its state kept between frames."""

    def __init__(self) -> None:
        # faster-whisper and ONNX runtime are loaded only by a node that listens.
        vad = importlib.import_module("faster_whisper.vad")
        self._session: Any = vad.get_vad_model().session
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context: npt.NDArray[np.float32] = np.zeros(_CONTEXT, dtype=np.float32)

    def probability(self, frame: Audio) -> float:
        window = np.concatenate([self._context, frame])[None, :]
        out, self._h, self._c = self._session.run(
            None, {"input": window, "h": self._h, "c": self._c}
        )
        self._context = np.asarray(frame[-_CONTEXT:], dtype=np.float32)
        return float(np.asarray(out).reshape(-1)[0])


@dataclass(frozen=True)
class SegmenterOptions:
    """Thresholds are speech probabilities, durations seconds (config.py's `vad_*` keys)."""

    threshold: float = 0.5  # a frame at or above this is speech (Silero's default)
    min_silence_s: float = 0.4  # this much non-speech ends an utterance
    pad_s: float = 0.1  # kept on either side of the speech
    min_speech_s: float = 0.1  # shorter runs are clicks; a Dutch "stop" is ~0.15 s voiced
    max_utterance_s: float = 10.0  # an utterance is cut here (a command is a few seconds)
    # 0: no early looks. 0.12 s is 4 frames: Dutch stops inside a word ("sta op", "stop") are
    # under 0.1 s (docs/voice.md, "Live listening"), so a pause this long ends a word.
    early_s: float = 0.0
    early_max_voiced_s: float = 1.2  # "stop", "halt", "hou op" are < 0.8 s voiced

    @property
    def neg_threshold(self) -> float:
        """Below this a frame is silence; between the two it continues what was (hysteresis,
        as faster_whisper.vad.get_speech_timestamps: threshold less 0.15)."""
        return max(self.threshold - 0.15, 0.01)


@dataclass(frozen=True)
class Utterance:
    """One stretch of speech: mono float32 at SAMPLE_RATE from stream time `start_s`."""

    start_s: float  # seconds since the epoch of samples[0]
    samples: Audio
    cut: bool = False  # True: max_utterance_s reached, the speech went on
    early: bool = False  # True: an early look, the utterance is still under way

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


class Segmenter:
    """Utterances of one stream (see the module's invariants)."""

    def __init__(self, options: SegmenterOptions = SegmenterOptions(), vad: FrameVad | None = None):
        self.options = options
        self._vad = vad if vad is not None else SileroVad()
        self._pad = max(0, math.ceil(options.pad_s / FRAME_S))
        self._silence_end = max(1, math.ceil(options.min_silence_s / FRAME_S))
        self._min_speech = max(1, math.ceil(options.min_speech_s / FRAME_S))
        self._max_frames = max(2, int(options.max_utterance_s / FRAME_S))
        # frames of pause before an early look (0: none; at min_silence_s the utterance ends)
        self._early = 0 if options.early_s <= 0 else max(1, math.ceil(options.early_s / FRAME_S))
        self._early_max_voiced = int(options.early_max_voiced_s / FRAME_S)
        self._lead: collections.deque[npt.NDArray[np.float32]] = collections.deque(maxlen=self._pad)
        self._partial: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self._time_s: float | None = None  # stream time of the next whole frame
        self._speech: list[npt.NDArray[np.float32]] = []  # the utterance under way
        self._speech_start_s = 0.0
        self._voiced = 0  # frames at or above threshold in it
        self._silent = 0  # trailing frames below neg_threshold
        self._looked = False  # this pause had its early look
        self.segments = 0  # utterances emitted
        self.early_looks = 0  # early looks emitted
        self.lost = 0  # utterances under way dropped by a gap or `reset`

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is under way."""
        return bool(self._speech)

    @property
    def position_s(self) -> float:
        """Stream time of the next sample expected (0 before any)."""
        if self._time_s is None:
            return 0.0
        return self._time_s + len(self._partial) / SAMPLE_RATE

    def push(self, samples: Audio, start_s: float, gap_s: float = 0.0) -> list[Utterance]:
        """Utterances completed by `samples` (mono float32, SAMPLE_RATE) starting at stream
        time `start_s`, and early looks (`early=True`) in stream order; `gap_s` > 0 says
        samples were missing before them."""
        if gap_s > 0 or self._time_s is None:
            if gap_s > 0:
                self.reset()
            self._time_s = start_s - len(self._partial) / SAMPLE_RATE
        data = np.concatenate([self._partial, np.asarray(samples, dtype=np.float32)])
        whole = len(data) - len(data) % FRAME
        self._partial = np.asarray(data[whole:], dtype=np.float32).copy()
        done: list[Utterance] = []
        for offset in range(0, whole, FRAME):
            utterance = self._frame(data[offset : offset + FRAME])
            if utterance is not None:
                done.append(utterance)
        return done

    def flush(self) -> list[Utterance]:
        """The utterance under way as if silence followed (the stream ended)."""
        done = self._emit(trailing=self._silent) if self._speech else None
        self._clear()
        return [done] if done is not None else []

    def reset(self) -> None:
        """Forget the stream: an utterance under way is lost."""
        if self._speech and self._voiced >= self._min_speech:
            self.lost += 1
        self._clear()
        self._lead.clear()
        self._partial = np.zeros(0, dtype=np.float32)
        self._time_s = None
        self._vad.reset()

    def _frame(self, frame: npt.NDArray[np.float32]) -> Utterance | None:
        assert self._time_s is not None
        at_s = self._time_s
        self._time_s += FRAME_S
        p = self._vad.probability(frame)
        if not self._speech:
            if p < self.options.threshold:
                self._lead.append(frame)
                return None
            self._speech = [*self._lead, frame]
            self._speech_start_s = at_s - len(self._lead) * FRAME_S
            self._lead.clear()
            self._voiced, self._silent, self._looked = 1, 0, False
            return None
        self._speech.append(frame)
        if p >= self.options.threshold:
            self._voiced += 1
            self._silent = 0
            self._looked = False  # a new pause may come
        elif p < self.options.neg_threshold:
            self._silent += 1
        if self._silent >= self._silence_end:
            return self._end(trailing=self._silent)
        if len(self._speech) >= self._max_frames:
            return self._end(trailing=0, cut=True)
        return self._maybe_early()

    def _maybe_early(self) -> Utterance | None:
        """An early look when this frame makes the pause `early_s` long in a short utterance."""
        if self._looked or not self._early or self._silent < self._early:
            return None
        self._looked = True
        if not self._min_speech <= self._voiced <= self._early_max_voiced:
            return None
        self.early_looks += 1
        keep = len(self._speech) - max(0, self._silent - self._pad)
        return Utterance(self._speech_start_s, np.concatenate(self._speech[:keep]), early=True)

    def _end(self, trailing: int, cut: bool = False) -> Utterance | None:
        utterance = self._emit(trailing, cut)
        tail = self._speech[len(self._speech) - trailing :] if trailing else []
        self._clear()
        self._lead.extend(tail)
        return utterance

    def _emit(self, trailing: int, cut: bool = False) -> Utterance | None:
        """The utterance under way, less trailing silence beyond the pad; None if too short."""
        if self._voiced < self._min_speech:
            return None
        keep = len(self._speech) - max(0, trailing - self._pad)
        self.segments += 1
        samples = np.concatenate(self._speech[:keep])
        return Utterance(self._speech_start_s, samples, cut)

    def _clear(self) -> None:
        self._speech = []
        self._voiced = self._silent = 0
        self._looked = False
