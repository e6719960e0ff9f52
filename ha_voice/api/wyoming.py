"""The Wyoming speech-to-text server: Home Assistant's protocol, on every node with speech.

One connection: `describe` → `info`; `transcribe` (language) then `audio-start`, `audio-chunk`s
and `audio-stop` → `transcript`. The audio (PCM of any rate, width and channels the events
declare) becomes 16 kHz mono float32 (voice/audio.py's resampler, in a thread) and is
recognised by the node's speech (`ApiContext.speech`: here or on the least loaded node, as
/api/voice/listen). With `wyoming_commands = "command"` a recognised intent also runs as a
command on the primary, through the journal under a key of its own per utterance.

The `wyoming` package's server and event classes carry the protocol; its reader is not used,
because it trusts the lengths a client declares and raises on a malformed header. Instead:

Invariants:
- Every read is bounded: a header line by the stream's 64 KiB limit, `data_length` by
  `MAX_DATA_BYTES`, `payload_length` by `MAX_CHUNK_BYTES`, and each wait by
  `wyoming_idle_timeout_s`, and a connection's events by `max_connection_age_s`, so no client
  holds a slot for ever by sending an event now and then. An utterance holds at most
  `listen_max_audio_s` seconds of audio, in one buffer, however it is cut into chunks.
- A malformed event, a chunk out of order, a format out of bounds or too much audio ends the
  connection with an `error` event (code = the reason, counted in `ha_voice_wyoming_refused`);
  nothing a client sends raises out of its connection or touches another.
- At most `wyoming_max_connections` connections are served; one more gets `error` (busy) and
  is closed. CPU work runs in a thread or in the speech workers, never on the event loop, and
  recognition at batch priority: no Wyoming client delays a command (a spoken stop) waiting.
- Wyoming has no authentication: commands run only where the operator set
  `wyoming_commands = "command"`, on the primary: a backup hands the recognised phrase to it,
  sealed (api/wyoming_relay.py), and the primary runs it only if its setting is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import av
import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler, AsyncTcpServer

from ha_voice import __version__
from ha_voice.api.context import ApiContext
from ha_voice.api.wyoming_relay import Relay, run_on_primary
from ha_voice.cluster.node import NotPrimary
from ha_voice.commands import Busy, KeyConflict
from ha_voice.config import Config
from ha_voice.errors import BindError, RemoteError
from ha_voice.voice.audio import collect, resample, trim
from ha_voice.voice.intents import Intent, Match, Vocabulary
from ha_voice.voice.speech import Audio, Recognition, SpeechUnavailable

__all__ = [
    "MAX_CHUNK_BYTES",
    "MAX_DATA_BYTES",
    "WyomingServer",
    "max_connection_age_s",
    "read_event",
    "to_samples",
]

log = logging.getLogger(__name__)

MAX_DATA_BYTES: Final = 65_536  # an event's JSON data: a few hundred bytes in practice
# One audio-chunk's payload: Home Assistant sends 1024 samples (2 KiB); 1 MiB is over a second
# of the largest format taken (48 kHz, 32-bit, stereo).
MAX_CHUNK_BYTES: Final = 1 << 20
RATES_HZ: Final = (8_000, 48_000)
WIDTHS: Final = (1, 2, 4)  # bytes per sample: unsigned 8-bit, signed 16 and 32-bit
MAX_CHANNELS: Final = 2
_FORMATS: Final = {1: "u8", 2: "s16", 4: "s32"}
_ATTRIBUTION: Final = Attribution(name="ha-voice", url="https://github.com/SYSTRAN/faster-whisper")


def max_connection_age_s(config: Config) -> float:
    """Seconds a connection may send events for: one utterance of `listen_max_audio_s`
    streamed in real time, with an idle timeout's slack before and after it. Home Assistant
    opens a connection per utterance (and per describe); a client that keeps one open with an
    event now and then would hold its slot forever."""
    return config.listen_max_audio_s + 2 * config.wyoming_idle_timeout_s


class Refused(RemoteError):
    """What ends a connection: `reason` is the error event's code, the message its text."""


def _integer(data: dict[str, Any], key: str, low: int, high: int) -> int:
    value = data.get(key)
    if type(value) is not int or not low <= value <= high:
        raise Refused("bad_event", f"{key} must be an integer from {low} to {high}")
    return value


async def read_event(reader: asyncio.StreamReader, idle_timeout_s: float) -> Event | None:
    """The next event, None at the end of the stream; Refused for anything malformed or over
    the bounds; TimeoutError when the client sends nothing for `idle_timeout_s`."""
    try:
        line = await asyncio.wait_for(reader.readline(), idle_timeout_s)
    except ValueError:  # the line passed the stream's limit
        raise Refused("bad_event", "event header longer than 64 KiB") from None
    if not line:
        return None
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise Refused("bad_event", "event header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise Refused("bad_event", "event header is not an object with a type")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise Refused("bad_event", "event data is not an object")
    data_length = (
        _integer(header, "data_length", 0, MAX_DATA_BYTES) if "data_length" in header else 0
    )
    payload_length = (
        _integer(header, "payload_length", 0, MAX_CHUNK_BYTES) if "payload_length" in header else 0
    )
    if data_length:
        more = await asyncio.wait_for(reader.readexactly(data_length), idle_timeout_s)
        try:
            extra = json.loads(more)
        except (ValueError, RecursionError):
            raise Refused("bad_event", "event data is not JSON") from None
        if not isinstance(extra, dict):
            raise Refused("bad_event", "event data is not an object")
        data.update(extra)
    payload = None
    if payload_length:
        payload = await asyncio.wait_for(reader.readexactly(payload_length), idle_timeout_s)
    return Event(type=header["type"][:64], data=data, payload=payload)


@dataclass(frozen=True)
class PcmFormat:
    """Raw PCM as the audio events declare it."""

    rate_hz: int
    width: int  # bytes per sample
    channels: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> PcmFormat:
        """The format an audio-start or audio-chunk declares; Refused out of bounds."""
        rate = _integer(data, "rate", *RATES_HZ)
        width = _integer(data, "width", 1, 4)
        if width not in WIDTHS:
            raise Refused("bad_format", f"width {width}: 1, 2 or 4 bytes per sample are taken")
        return cls(rate, width, _integer(data, "channels", 1, MAX_CHANNELS))

    @property
    def bytes_per_s(self) -> int:
        return self.rate_hz * self.width * self.channels


def to_samples(pcm: bytes, fmt: PcmFormat, max_s: float) -> Audio:
    """Interleaved little-endian PCM → 16 kHz mono float32 (n,), leading and trailing silence
    trimmed; runs FFmpeg's resampler, so call it in a thread."""
    frame_bytes = fmt.width * fmt.channels
    usable = len(pcm) - len(pcm) % frame_bytes
    if usable == 0:
        return np.zeros(0, dtype=np.float32)
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[fmt.width]
    samples = np.frombuffer(pcm[:usable], dtype=np.dtype(dtype).newbyteorder("<"))
    layout = "mono" if fmt.channels == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(
        samples.astype(dtype).reshape(1, -1), format=_FORMATS[fmt.width], layout=layout
    )
    frame.rate = fmt.rate_hz
    return trim(collect(resample([frame]), max_s))


@dataclass
class _Utterance:
    """Audio between audio-start and audio-stop: raw PCM in one buffer, so it holds
    `limit_bytes` at most however the client cuts it into chunks (a list of a million
    one-byte or empty payloads held 40 times the audio, or grew without bound)."""

    fmt: PcmFormat
    limit_bytes: int
    key: str = field(default_factory=lambda: f"wyoming-{uuid.uuid4()}")
    pcm: bytearray = field(default_factory=bytearray)

    def add(self, payload: bytes) -> None:
        if len(self.pcm) + len(payload) > self.limit_bytes:
            raise Refused("audio_too_long", "audio longer than listen_max_audio_s")
        self.pcm += payload


class WyomingServer:
    """The server on `host:port`: `async_start` binds it (BindError), `async_close` ends it."""

    def __init__(self, ctx: ApiContext, host: str, port: int) -> None:
        self.ctx = ctx
        self.host = host
        self.port = port
        self.active = 0  # connections being served
        self.accepted = 0  # connections taken since the start
        self.refused: dict[str, int] = {}  # connections closed by us since the start, by reason
        self.warned: set[str] = set()  # reasons for closing a connection logged at warning
        self._server = AsyncTcpServer(host, port)
        self.relay = Relay(ctx.config, ctx)  # commands heard on a backup, to the primary

    async def async_start(self) -> None:
        try:
            await self._server.start(self._handler)
        except OSError as exc:
            address = ("api_listen_address", self.host)
            raise BindError("Wyoming TCP", address, ("wyoming_port", self.port), exc) from None
        log.info("Wyoming speech-to-text on %s:%d", self.host, self.port)

    async def async_close(self) -> None:
        await self._server.stop()
        await self.relay.aclose()

    def state(self) -> dict[str, Any]:
        """What /health says of this server: `serving` (bound and accepting), `address`,
        `connections` now, `accepted` and `refused` (by reason) since the start."""
        listening = self._server._server  # the asyncio server the package keeps
        return {
            "serving": listening is not None and listening.is_serving(),
            "address": f"{self.host}:{self.port}",
            "connections": self.active,
            "accepted": self.accepted,
            "refused": dict(self.refused),
        }

    def _handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Handler:
        return _Handler(reader, writer, self)

    def info(self) -> Info:
        """What `describe` answers: one program, ha-voice, with the loaded model."""
        speech = self.ctx.speech
        status = speech.status() if speech is not None else None
        model = (status.model if status else None) or self.ctx.config.whisper_model
        language = self.ctx.active_vocabulary().language
        asr = AsrProgram(
            name="ha-voice",
            attribution=_ATTRIBUTION,
            installed=True,
            description="ha-voice: Dutch robot commands with faster-whisper",
            version=__version__,
            models=[
                AsrModel(
                    name=str(model),
                    attribution=_ATTRIBUTION,
                    installed=True,
                    description=f"Whisper {model} against the {language} vocabulary",
                    version=None,
                    languages=[language],
                )
            ],
        )
        return Info(asr=[asr])


class _Handler(AsyncEventHandler):
    """One client's connection: events in order, bounded, answered one at a time."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: WyomingServer
    ) -> None:
        super().__init__(reader, writer)
        self.server = server
        self.ctx = server.ctx
        self.peer = str((writer.get_extra_info("peername") or ("?",))[0])
        self.utterance: _Utterance | None = None

    async def run(self) -> None:
        """Events until the client leaves, idles or misbehaves; never raises."""
        server, config = self.server, self.ctx.config
        server.active += 1
        server.accepted += 1
        try:
            if server.active > config.wyoming_max_connections:
                raise Refused("busy", "too many Wyoming connections (wyoming_max_connections)")
            deadline = asyncio.get_running_loop().time() + max_connection_age_s(config)
            while (event := await self._next_event(deadline)) and await self.handle_event(event):
                pass
        except Refused as exc:
            self._refused(exc.reason, exc.detail)
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await self._write(Error(text=exc.detail, code=exc.reason).event())
        except asyncio.TimeoutError:
            self._refused("idle", "idle past wyoming_idle_timeout_s")
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception:
            log.exception("Wyoming connection from %s failed", self.peer)
        finally:
            server.active -= 1
            self.writer.close()

    async def _next_event(self, deadline: float) -> Event | None:
        """The next event (read_event), waiting at most the idle timeout and never past the
        connection's `deadline` (loop time): Refused `connection_age` there."""
        idle_s = self.ctx.config.wyoming_idle_timeout_s
        left_s = deadline - asyncio.get_running_loop().time()
        try:
            if left_s <= 0:
                raise asyncio.TimeoutError
            return await read_event(self.reader, min(idle_s, left_s))
        except asyncio.TimeoutError:
            if left_s >= idle_s:
                raise  # idle
            raise Refused(
                "connection_age",
                "connection open longer than listen_max_audio_s + 2 × wyoming_idle_timeout_s",
            ) from None

    def _refused(self, reason: str, text: str) -> None:
        """Count a closed connection; log each reason once at warning, then at debug."""
        self.ctx.metrics.wyoming_refused.labels(reason).inc()
        self.server.refused[reason] = self.server.refused.get(reason, 0) + 1
        level = logging.DEBUG if reason in self.server.warned else logging.WARNING
        self.server.warned.add(reason)
        log.log(level, "Wyoming connection from %s closed: %s", self.peer, text)

    async def _write(self, event: Event) -> None:
        await asyncio.wait_for(
            async_write_event(event, self.writer), self.ctx.config.wyoming_idle_timeout_s
        )

    async def handle_event(self, event: Event) -> bool:
        """One event: answered, kept, or dropped (types we do not serve, as Wyoming asks)."""
        if Describe.is_type(event.type):
            await self._write(self.server.info().event())
        elif Transcribe.is_type(event.type):
            self._check_language(event.data.get("language"))
        elif AudioStart.is_type(event.type):
            self.utterance = self._start(PcmFormat.of(event.data))
        elif AudioChunk.is_type(event.type):
            self._chunk(event)
        elif AudioStop.is_type(event.type):
            utterance, self.utterance = self.utterance, None
            if utterance is None:
                raise Refused("out_of_order", "audio-stop before audio-start")
            text = await self._hear(utterance)
            language = self.ctx.active_vocabulary().language
            await self._write(Transcript(text=text, language=language).event())
        return True

    def _check_language(self, requested: object) -> None:
        """Refuse a language other than the vocabulary's (a regional tag such as nl-NL is nl)."""
        language = self.ctx.active_vocabulary().language
        code = str(requested).split("-", 1)[0].split("_", 1)[0].lower()
        if requested is not None and code != language:
            raise Refused("bad_language", f"language {code[:16]!r}: this node hears {language}")

    def _start(self, fmt: PcmFormat) -> _Utterance:
        limit = int(self.ctx.config.listen_max_audio_s * fmt.bytes_per_s)
        return _Utterance(fmt, limit)

    def _chunk(self, event: Event) -> None:
        if self.utterance is None:
            raise Refused("out_of_order", "audio-chunk before audio-start")
        if PcmFormat.of(event.data) != self.utterance.fmt:
            raise Refused("bad_format", "audio-chunk's format is not audio-start's")
        self.utterance.add(event.payload or b"")

    async def _hear(self, utterance: _Utterance) -> str:
        """The transcript of `utterance` (and its command run, in command mode)."""
        speech, vocabulary = self.ctx.speech, self.ctx.active_vocabulary()
        if speech is None:
            raise Refused("no_speech", "this node does no speech work")
        pcm = bytes(utterance.pcm)
        max_s = self.ctx.config.listen_max_audio_s
        audio = await asyncio.to_thread(to_samples, pcm, utterance.fmt, max_s)
        if len(audio) == 0:
            return ""
        try:
            # Batch priority: Wyoming has no authentication, and four clients streaming
            # chatter at command priority held a spoken stop from the robot's stream for
            # 7-8 s instead of 0.5 s; now every command waiting goes first (the job under way
            # still holds its worker: 1.7-4 s in the same trial).
            recognition = await speech.async_recognise(audio, vocabulary.language, priority="batch")
        except SpeechUnavailable as exc:
            raise Refused("speech_unavailable", f"speech: {exc.reason}") from None
        text = recognition.heard if recognition.intent else recognition.transcript or ""
        if self.ctx.config.wyoming_commands == "command":
            outcome = await self._command(vocabulary, recognition, utterance.key)
        else:
            outcome = "transcript"
        self.ctx.metrics.wyoming_transcripts.labels(outcome).inc()
        return text

    async def _command(self, vocabulary: Vocabulary, recognition: Recognition, key: str) -> str:
        """Run the recognised intent on the primary (here, or handed to it); what became of
        it, for the metric."""
        intent = next((i for i in vocabulary.intents if i.name == recognition.intent), None)
        if intent is None or intent.action is None:
            return "rejected"
        text = next(
            (
                phrase
                for phrase in (recognition.phrase or "", *intent.phrases)
                if _names(vocabulary, phrase, intent)
            ),
            intent.phrases[0],
        )
        source = f"wyoming@{self.peer}"
        try:
            await run_on_primary(self.ctx, self.server.relay, text, key, source)
        except (NotPrimary, Busy, KeyConflict, LookupError, RuntimeError) as exc:
            log.warning("Wyoming command %s (%s) not run: %s", key, intent.name, exc)
            return "busy" if isinstance(exc, Busy) else "not_run"
        return "command"


def _names(vocabulary: Vocabulary, phrase: str, intent: Intent) -> bool:
    """Whether `phrase`, as a transcript, matches `intent` (what the primary will match)."""
    found = vocabulary.match(phrase)
    return isinstance(found, Match) and found.intent.name == intent.name
