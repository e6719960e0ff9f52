"""Audio in: an upload of a common format → 16 kHz mono float32 samples, bounded at every stage.

decode (PyAV: demux and decode the one container the media type names) → resample (to
`SAMPLE_RATE` Hz mono float32, as faster-whisper's `decode_audio`) → collect (stop at the
seconds limit) → trim (leading and trailing silence). Each stage is a function of its input;
`decode_upload` runs them all and is what the routes call, in a thread.

Invariants:
- The demuxer is chosen from the media type (or, for `application/octet-stream`, from the
  first bytes), never by FFmpeg's own probing: a probed body could be a playlist (HLS, concat)
  that makes FFmpeg open other files or URLs.
- Decoding stops as soon as the decoded audio passes `max_s` seconds (counted on the decoder's
  output, so a tiny file that claims or expands to hours costs at most `max_s` seconds of
  decoding), or the wall-clock budget `DECODE_BUDGET_S` is spent.
- Every refusal is an `AudioRefused` (a `RemoteError`) with an HTTP status, a metric label and a
  line in our own words: FFmpeg's reason, never the upload itself.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import av
import numpy as np

from ha_voice import clock
from ha_voice.errors import RemoteError
from ha_voice.voice.speech import SAMPLE_RATE, Audio

__all__ = [
    "ACCEPTED_TYPES",
    "DECODE_BUDGET_S",
    "SILENCE_DBFS",
    "AudioRefused",
    "Decoded",
    "MediaType",
    "collect",
    "decode_frames",
    "decode_upload",
    "media_type",
    "resample",
    "rms_dbfs",
    "sniff",
    "trim",
]

# What each accepted media type is demuxed as (FFmpeg's demuxer names).
_CONTAINERS: Final = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/webm": "matroska",
    "video/webm": "matroska",
    "audio/l16": "s16be",  # RFC 2586: 16-bit signed, big-endian ("network byte order")
}
_NAMES: Final = {
    "wav": "WAV",
    "flac": "FLAC",
    "ogg": "Ogg",
    "mp3": "MP3",
    "matroska": "WebM",
    "s16be": "L16",
}
ACCEPTED_TYPES: Final = (
    "audio/wav (audio/x-wav)",
    "audio/flac",
    "audio/ogg (Opus or Vorbis)",
    "audio/mpeg (MP3)",
    "audio/webm",
    "audio/L16;rate=16000[;channels=1] (raw 16-bit big-endian PCM, RFC 2586)",
    "application/octet-stream (any of these, told by its first bytes)",
)
_OCTET: Final = "application/octet-stream"
# The magic numbers of the containers above, for an upload that does not say what it is.
_MAGIC: Final = (
    (b"RIFF", 0, "wav"),
    (b"fLaC", 0, "flac"),
    (b"OggS", 0, "ogg"),
    (b"\x1a\x45\xdf\xa3", 0, "matroska"),
    (b"ID3", 0, "mp3"),
)
_L16_RATES: Final = (8_000, 192_000)  # Hz: telephone to studio
_L16_MAX_CHANNELS: Final = 8
# Wall-clock seconds one upload may take to decode. 30 s of any accepted codec takes at most
# ~50 ms of CPU here (docs/benchmarks.md, "Decoding uploads"); the budget is for a pathological
# stream on a machine that is busy with speech.
DECODE_BUDGET_S: Final = 5.0
# A 20 ms window quieter than this (RMS, dB relative to full scale) is silence: a quiet room
# through a laptop microphone measures about -60 dBFS, espeak-ng speech about -20 dBFS.
SILENCE_DBFS: Final = -55.0
_WINDOW: Final = SAMPLE_RATE // 50  # 20 ms
_MARGIN: Final = SAMPLE_RATE // 5  # 200 ms kept around speech: Whisper needs the onsets


class AudioRefused(RemoteError):
    """An upload refused: `status` (413, 415 or 422), `reason` (a metric label), `detail`
    (one line in our own words)."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.status = status


@dataclass(frozen=True)
class MediaType:
    """How to demux an upload: FFmpeg's demuxer name and its options (raw PCM's rate and
    channels)."""

    container: str
    rate_hz: int | None = None
    channels: int | None = None

    @property
    def name(self) -> str:
        """What an answer calls the format: WAV, FLAC, Ogg, MP3, WebM or L16."""
        return _NAMES[self.container]


@dataclass(frozen=True)
class Decoded:
    """An upload decoded: the samples (float32, mono, `SAMPLE_RATE` Hz, trimmed), how long the
    upload was (seconds, before trimming) and its format's name."""

    audio: Audio
    duration_s: float
    format: str

    @property
    def silent(self) -> bool:
        """Nothing above `SILENCE_DBFS` was left after trimming."""
        return len(self.audio) == 0


def media_type(content_type: str | None, head: bytes = b"") -> MediaType:
    """The demuxer for a Content-Type header; `head` (the upload's first bytes) decides for
    application/octet-stream or none. 415 (AudioRefused) for a type we do not decode."""
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    if media in ("", _OCTET):
        return sniff(head)
    container = _CONTAINERS.get(media)
    if container is None:
        raise AudioRefused(415, "media_type", f"content type {media[:64]!r} is not audio we decode")
    if container == "s16be":
        return _l16(params)
    return MediaType(container)


def sniff(head: bytes) -> MediaType:
    """The container whose magic number `head` starts with; 415 if none does."""
    for magic, offset, container in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return MediaType(container)
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG frame sync
        return MediaType("mp3")
    raise AudioRefused(
        415,
        "unknown_format",
        "could not tell the audio format from its first bytes; send a Content-Type",
    )


def _l16(params: str) -> MediaType:
    """audio/L16's parameters: `rate` (required, RFC 2586) and `channels` (default 1)."""
    values: dict[str, str] = {}
    for part in params.split(";"):
        name, _, value = part.partition("=")
        if name.strip():
            values[name.strip().lower()] = value.strip().strip('"')
    rate = _int_param(values, "rate", None, _L16_RATES)
    channels = _int_param(values, "channels", 1, (1, _L16_MAX_CHANNELS))
    return MediaType("s16be", rate, channels)


def _int_param(
    values: dict[str, str], name: str, default: int | None, bounds: tuple[int, int]
) -> int:
    low, high = bounds
    text = values.get(name)
    if text is None and default is not None:
        return default
    if text is None or not text.isdigit() or not low <= int(text) <= high:
        raise AudioRefused(
            415,
            "media_type",
            f"audio/L16 needs {name}= an integer from {low} to {high} "
            "(e.g. audio/L16;rate=16000;channels=1)",
        )
    return int(text)


# --- the stages -------------------------------------------------------------------------------


def decode_frames(data: bytes, media: MediaType) -> Iterator[av.AudioFrame]:
    """The audio frames of the first audio stream of `data` as `media` says to demux it, at
    their own rate and layout; 422 (AudioRefused) for a body that is not that format or is
    damaged before any audio could be read. A stream damaged later ends there."""
    options = {}
    if media.rate_hz is not None:  # raw PCM says nothing of itself
        layout = "mono" if media.channels == 1 else f"{media.channels}c"
        options = {"sample_rate": str(media.rate_hz), "ch_layout": layout}
    try:
        container = av.open(
            io.BytesIO(data),
            mode="r",
            format=media.container,
            options=options,
            metadata_errors="ignore",
        )
    except av.error.FFmpegError as exc:
        raise _corrupt(media, exc) from None
    with container:
        stream = next(iter(container.streams.audio), None)
        if stream is None:
            raise AudioRefused(422, "no_audio", f"the {media.name} upload holds no audio stream")
        yielded = False
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    yielded = True
                    yield frame
        except av.error.FFmpegError as exc:
            if not yielded:  # damaged from the start: not audio at all
                raise _corrupt(media, exc) from None
            # Damaged after some audio (a truncated upload): what came is what was said.


def resample(frames: Iterable[av.AudioFrame]) -> Iterator[Audio]:
    """Each frame at `SAMPLE_RATE` Hz (FFmpeg's swresample), its channels averaged to mono, as
    float32 chunks of shape (n,); the resampler's buffer is flushed at the end. The average, not
    FFmpeg's downmix, which adds 3 dB to a stereo recording of one voice and so can clip it."""
    resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)  # the frames' own layout
    for frame in frames:
        frame.pts = None  # resample by count: damaged timestamps must not insert silence
        for out in resampler.resample(frame):
            yield _mono(out)
    for out in resampler.resample(None):
        yield _mono(out)


def _mono(frame: av.AudioFrame) -> Audio:
    planes = np.asarray(frame.to_ndarray(), dtype=np.float32)  # (channels, n): planar float
    mono: Audio = planes[0] if len(planes) == 1 else planes.mean(axis=0, dtype=np.float32)
    return mono


def collect(chunks: Iterable[Audio], max_s: float, budget_s: float = DECODE_BUDGET_S) -> Audio:
    """The chunks joined, shape (n,) float32; 413 (AudioRefused) as soon as they pass `max_s`
    seconds, 422 once `budget_s` wall-clock seconds are spent, without decoding further."""
    limit = int(max_s * SAMPLE_RATE)
    deadline = clock.monotonic() + budget_s
    parts: list[Audio] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise AudioRefused(
                413,
                "audio_too_long",
                f"the audio is longer than the limit of {max_s:g} s",
            )
        parts.append(chunk)
        if clock.monotonic() > deadline:
            raise AudioRefused(
                422, "decode_timeout", f"the upload took more than {budget_s:g} s to decode"
            )
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32, copy=False)


def rms_dbfs(audio: Audio) -> float:
    """The RMS level of `audio` in dB relative to full scale; -inf for silence or nothing."""
    if len(audio) == 0:
        return float("-inf")
    power = float(np.mean(np.square(audio, dtype=np.float64)))
    return 10.0 * float(np.log10(power)) if power > 0 else float("-inf")


def trim(audio: Audio, floor_dbfs: float = SILENCE_DBFS) -> Audio:
    """`audio` (n,) without its leading and trailing 20 ms windows quieter than `floor_dbfs`,
    keeping 200 ms around what is left; empty if every window is that quiet."""
    windows = len(audio) // _WINDOW
    if windows == 0:
        return audio[:0] if rms_dbfs(audio) < floor_dbfs else audio
    framed = audio[: windows * _WINDOW].reshape(windows, _WINDOW).astype(np.float64)
    power = np.mean(np.square(framed), axis=1)
    loud = np.flatnonzero(power > 10.0 ** (floor_dbfs / 10.0))
    if len(loud) == 0:
        return audio[:0]
    start = max(0, int(loud[0]) * _WINDOW - _MARGIN)
    end = min(len(audio), (int(loud[-1]) + 1) * _WINDOW + _MARGIN)
    return audio[start:end]


def decode_upload(
    data: bytes, content_type: str | None, max_s: float, *, trimmed: bool = True
) -> Decoded:
    """An upload, as its Content-Type says, to 16 kHz mono float32 (trimmed of leading and
    trailing silence unless `trimmed` is False). Raises AudioRefused: 415 for a type we do not
    decode, 413 past `max_s` seconds, 422 for an empty, damaged or undecodable upload. CPU-bound:
    run it in a thread."""
    if not data:  # an empty recording: nothing was said (a type we do not decode is still 415)
        named = (content_type or "").split(";", 1)[0].strip().lower() not in ("", _OCTET)
        name = media_type(content_type).name if named else "empty"
        return Decoded(np.zeros(0, dtype=np.float32), 0.0, name)
    media = media_type(content_type, data[:16])
    _check_magic(media, data[:16])
    if media.container == "s16be" and len(data) % (2 * (media.channels or 1)):
        raise AudioRefused(
            422,
            "corrupt_audio",
            f"L16 with {media.channels} channel(s) comes in frames of {2 * (media.channels or 1)} "
            f"bytes; {len(data)} bytes is not a whole number of them",
        )
    try:
        audio = collect(resample(decode_frames(data, media)), max_s)
    except ValueError as exc:  # FFmpeg's errors are ValueErrors too: a stream that changes
        raise _corrupt(media, exc) from None  # its layout mid-way, samples we cannot convert
    duration_s = len(audio) / SAMPLE_RATE
    return Decoded(trim(audio) if trimmed else audio, duration_s, media.name)


def _check_magic(media: MediaType, head: bytes) -> None:
    """422 if `head` does not start as `media`'s container always starts (MP3 and raw PCM have
    no such start); FFmpeg's demuxers told to read a format take some garbage for it."""
    magic = next((m for m, _, container in _MAGIC if container == media.container), None)
    if magic is None or media.container == "mp3" or head.startswith(magic):
        return
    try:
        looks = f"; it starts like {sniff(head).name}"
    except AudioRefused:
        looks = ""
    raise AudioRefused(
        422, "corrupt_audio", f"not a valid {media.name} upload (no {media.name} header{looks})"
    )


def _corrupt(media: MediaType, exc: Exception) -> AudioRefused:
    why = getattr(exc, "strerror", None) or type(exc).__name__
    return AudioRefused(422, "corrupt_audio", f"not a valid {media.name} upload ({why})")
