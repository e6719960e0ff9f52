"""What speech work produces, and the seam every speech back end sits behind.

Shapes shared by the recogniser (voice/recogniser.py, pure, one process), the speech service
(voice/stt.py: worker processes, queues, status) and the cluster's placement of speech work
(voice/placement.py: the least loaded ready node). Audio everywhere is a 1-D float32 numpy array
of mono samples at `SAMPLE_RATE` Hz in [-1, 1] (what faster-whisper's `decode_audio` returns).

Invariants:
- A `Recognition` with `intent is None` is a rejection and says why (`rejection`); it is never
  a guess. One with an intent names the phrase that won and how sure it was (`confidence`).
- `Speech` implementations never block the event loop: their `async_` methods await work done
  in another thread or process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Audio = npt.NDArray[np.float32]
else:
    Audio = Any

__all__ = [
    "PRIORITIES",
    "REJECTIONS",
    "SAMPLE_RATE",
    "Alternative",
    "Audio",
    "Priority",
    "Recognition",
    "RejectionReason",
    "Speech",
    "SpeechStatus",
    "SpeechUnavailable",
    "Transcription",
]

SAMPLE_RATE: Final = 16_000  # Hz: what Whisper's feature extractor takes

# no_speech: nothing that sounds like speech (silence, noise, empty); low_confidence: the best
# phrase is below the confidence floor; ambiguous: two intents too close to call; unknown: speech,
# but no phrase of the vocabulary fits (free transcription says what it was).
RejectionReason = Literal["no_speech", "low_confidence", "ambiguous", "unknown"]
REJECTIONS: Final[tuple[RejectionReason, ...]] = (
    "no_speech",
    "low_confidence",
    "ambiguous",
    "unknown",
)

# command: someone waits for the robot (listen, Wyoming); batch: free transcription
# (/v1/audio/transcriptions). Every queue serves all commands before any batch job.
Priority = Literal["command", "batch"]
PRIORITIES: Final[tuple[Priority, ...]] = ("command", "batch")


class SpeechUnavailable(Exception):
    """No node can do this speech work now (no model ready, all queues full); `reason` says why.

    `retry_after_s` is a hint for a 503's Retry-After; `status` is 503 unless the work itself
    is refused (413 for audio over the limits)."""

    def __init__(self, reason: str, *, retry_after_s: float = 1.0, status: int = 503) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.status = status


@dataclass(frozen=True)
class Alternative:
    """A vocabulary phrase as scored against the audio."""

    phrase: str  # as in the vocabulary, with the wake word if it was scored with one
    intent: str
    score: float  # the score the decision compared: mean log-probability per token (nats)
    # given the audio, less a share of the same given silence (see voice/scoring.py)


@dataclass(frozen=True)
class Recognition:
    """What one utterance was recognised as.

    `heard` is what the answer shows as `recognized`: the winning phrase, or when rejected the
    best phrase or the free transcript. `confidence` is in [0, 1] (exp of the winning mean
    log-probability per token), `alternatives` the next best phrases of other intents, best first.
    """

    heard: str
    intent: str | None
    phrase: str | None
    confidence: float
    alternatives: tuple[Alternative, ...]
    rejection: RejectionReason | None
    language: str
    model: str
    stt_ms: float  # recogniser time on the node that did it, milliseconds
    node: str = ""  # the node that did it; filled in by the service
    transcript: str | None = None  # free transcription, when one was made

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON-ready values (alternatives as objects)."""
        return {
            "heard": self.heard,
            "intent": self.intent,
            "phrase": self.phrase,
            "confidence": round(self.confidence, 4),
            "alternatives": [
                {"phrase": a.phrase, "intent": a.intent, "score": round(a.score, 4)}
                for a in self.alternatives
            ],
            "rejection": self.rejection,
            "language": self.language,
            "model": self.model,
            "stt_ms": round(self.stt_ms, 2),
            "node": self.node,
            "transcript": self.transcript,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recognition:
        """The inverse of `to_json`; raises KeyError/TypeError/ValueError on a malformed object."""
        return cls(
            heard=str(data["heard"]),
            intent=None if data["intent"] is None else str(data["intent"]),
            phrase=None if data["phrase"] is None else str(data["phrase"]),
            confidence=float(data["confidence"]),
            alternatives=tuple(
                Alternative(str(a["phrase"]), str(a["intent"]), float(a["score"]))
                for a in data["alternatives"]
            ),
            rejection=data["rejection"],
            language=str(data["language"]),
            model=str(data["model"]),
            stt_ms=float(data["stt_ms"]),
            node=str(data.get("node", "")),
            transcript=None if data.get("transcript") is None else str(data["transcript"]),
        )


@dataclass(frozen=True)
class Transcription:
    """Free transcription (no vocabulary), as `/v1/audio/transcriptions` returns it."""

    text: str
    language: str
    duration_s: float  # of the audio
    segments: tuple[tuple[float, float, str], ...]  # (start_s, end_s, text)
    model: str
    stt_ms: float
    node: str = ""


@dataclass(frozen=True)
class SpeechStatus:
    """What a node can do with speech right now, for /health, metrics and placement."""

    configured: str  # the model as configured (size name or directory)
    ready: bool
    reason: str  # why not ready ("loading", "load failed: …", "disabled: …"); "" when ready
    model: str | None = None  # what is loaded: name or directory
    device: str | None = None  # cpu or cuda
    compute_type: str | None = None  # int8, float16, int8_float16, …
    workers: int = 0
    running: int = 0  # jobs being worked on
    queued: int = 0  # jobs waiting
    restarts: int = 0  # worker processes started again after one died or was killed
    last_restart: str = ""  # why the last one was ("worker 0 died of SIGKILL")


class Speech(Protocol):
    """Speech work for the API: on this node (voice/stt.py) or the least loaded one (placement)."""

    def status(self) -> SpeechStatus:
        """This node's speech state, now; never blocks."""
        ...

    async def async_recognise(
        self, audio: Audio, language: str, *, priority: Priority = "command"
    ) -> Recognition:
        """Recognise one utterance against the closed vocabulary of `language`.

        Raises SpeechUnavailable when no model can take it (not ready, queue full)."""
        ...

    async def async_transcribe(
        self, audio: Audio, language: str | None, prompt: str | None = None
    ) -> Transcription:
        """Free transcription at batch priority; `language` None detects it.

        Raises SpeechUnavailable as async_recognise."""
        ...
