"""Audio in (voice/audio.py): every accepted format decodes to 16 kHz mono float32 with the same
length and level, and every bound holds — bytes are the route's, seconds and damage are here.

Uploads are made by PyAV's own encoders (and `wave`), in memory: a 440 Hz tone whose length and
level each decode must keep.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator

import av
import numpy as np
import numpy.typing as npt
import pytest

from ha_voice.voice.audio import (
    AudioRefused,
    collect,
    decode_upload,
    media_type,
    rms_dbfs,
    sniff,
    trim,
)
from ha_voice.voice.speech import SAMPLE_RATE
from tests.speech_corpus import encode

Samples = npt.NDArray[np.float32]
TONE_S = 2.0


def tone(seconds: float = TONE_S, rate: int = SAMPLE_RATE, level: float = 0.3) -> Samples:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def wav(samples: Samples, rate: int, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV by the standard library, `samples` in every channel."""
    pcm = np.repeat((samples * 32767).astype("<i2"), channels)
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm.tobytes())
    return out.getvalue()


# (content type, upload): each a 2 s tone at 0.3 of full scale (-13.5 dBFS RMS).
FORMATS = {
    "wav-8k": lambda: ("audio/wav", wav(tone(rate=8000), 8000)),
    "wav-16k": lambda: ("audio/x-wav", wav(tone(), SAMPLE_RATE)),
    "wav-44k-stereo": lambda: ("audio/wav", wav(tone(rate=44_100), 44_100, channels=2)),
    "flac": lambda: ("audio/flac", encode("flac", "flac", SAMPLE_RATE, tone())),
    "ogg-opus": lambda: ("audio/ogg", encode("ogg", "libopus", 48_000, tone())),
    "mp3-stereo": lambda: (
        "audio/mpeg",
        encode("mp3", "libmp3lame", 44_100, tone(), layout="stereo"),
    ),
    "webm-opus": lambda: ("audio/webm", encode("webm", "libopus", 48_000, tone())),
    "l16": lambda: ("audio/L16;rate=16000", (tone() * 32767).astype(">i2").tobytes()),
    "l16-8k-stereo": lambda: (
        "audio/L16; rate=8000; channels=2",
        np.repeat((tone(rate=8000) * 32767).astype(">i2"), 2).tobytes(),
    ),
}


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_decodes_to_16k_mono_of_the_same_length_and_level(name: str) -> None:
    content_type, data = FORMATS[name]()
    decoded = decode_upload(data, content_type, max_s=30)
    assert decoded.audio.dtype == np.float32
    assert decoded.audio.ndim == 1
    # Codecs pad (MP3's and Opus' priming): within 60 ms of the tone's length.
    assert abs(decoded.duration_s - TONE_S) < 0.06
    assert abs(rms_dbfs(decoded.audio) - (-13.5)) < 1.0
    assert not decoded.silent


@pytest.mark.parametrize("name", ["wav-16k", "flac", "ogg-opus", "mp3-stereo", "webm-opus"])
def test_octet_stream_is_told_by_its_first_bytes(name: str) -> None:
    content_type, data = FORMATS[name]()
    expected = decode_upload(data, content_type, max_s=30).format
    assert decode_upload(data, "application/octet-stream", max_s=30).format == expected
    assert decode_upload(data, None, max_s=30).format == expected


def test_l16_is_big_endian_as_rfc_2586_says() -> None:
    samples = tone()
    big = decode_upload((samples * 32767).astype(">i2").tobytes(), "audio/L16;rate=16000", 30)
    assert np.allclose(big.audio[:1000], samples[:1000], atol=1e-3)


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [
        ("text/plain", "media_type"),
        ("audio/aac", "media_type"),
        ("audio/L16", "media_type"),  # rate is required
        ("audio/L16;rate=fast", "media_type"),
        ("audio/L16;rate=16000;channels=99", "media_type"),
        ("application/octet-stream", "unknown_format"),
    ],
)
def test_types_we_do_not_decode_are_415_naming_the_problem(content_type: str, reason: str) -> None:
    with pytest.raises(AudioRefused) as refused:
        decode_upload(b"\x00" * 1000, content_type, max_s=30)
    assert (refused.value.status, refused.value.reason) == (415, reason)


@pytest.mark.parametrize("name", ["wav-16k", "flac", "ogg-opus", "mp3-stereo", "webm-opus"])
def test_garbage_under_an_audio_type_is_422_without_echoing_it(name: str) -> None:
    content_type, _ = FORMATS[name]()
    secret = b"SECRET-" * 200
    with pytest.raises(AudioRefused) as refused:
        decode_upload(secret, content_type, max_s=30)
    assert refused.value.status == 422
    assert "SECRET" not in str(refused.value)
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize("name", ["wav-16k", "flac", "ogg-opus", "mp3-stereo", "webm-opus"])
def test_a_truncated_upload_is_what_came_and_a_header_alone_is_422(name: str) -> None:
    content_type, data = FORMATS[name]()
    half = decode_upload(data[: len(data) // 2], content_type, max_s=30)
    assert 0.1 < half.duration_s < TONE_S - 0.1
    with pytest.raises(AudioRefused) as refused:
        decode_upload(data[:10], content_type, max_s=30)
    assert refused.value.status == 422


def test_l16_of_a_partial_frame_is_422() -> None:
    with pytest.raises(AudioRefused) as refused:
        decode_upload(b"\x00" * 1001, "audio/L16;rate=16000", max_s=30)
    assert (refused.value.status, refused.value.reason) == (422, "corrupt_audio")


@pytest.mark.parametrize("name", ["wav-16k", "l16", "ogg-opus"])
def test_longer_than_the_limit_is_413_naming_it(name: str) -> None:
    content_type, data = FORMATS[name]()
    with pytest.raises(AudioRefused) as refused:
        decode_upload(data, content_type, max_s=1.5)
    assert refused.value.status == 413
    assert "1.5 s" in str(refused.value)


def test_a_flac_of_an_hour_in_a_few_hundred_kilobytes_stops_at_the_limit() -> None:
    """A decompression bomb: an hour of silence compresses to ~2 bytes a millisecond; decoding
    counts samples as they come, so it stops after the limit's worth, not after the hour."""
    hour = encode("flac", "flac", 8000, np.zeros(8000 * 3600, np.float32), source_rate=8000)
    assert len(hour) < 1_000_000
    with pytest.raises(AudioRefused) as refused:
        decode_upload(hour, "audio/flac", max_s=30)
    assert refused.value.status == 413
    # collect() reads one chunk past the limit and no more.
    seen = 0

    def seconds() -> Iterator[Samples]:
        nonlocal seen
        while True:
            seen += 1
            yield np.zeros(SAMPLE_RATE, np.float32)

    with pytest.raises(AudioRefused):
        collect(seconds(), max_s=30)
    assert seen == 31


def test_a_budget_spent_is_422() -> None:
    with pytest.raises(AudioRefused) as refused:
        collect(iter([np.zeros(10, np.float32)] * 3), max_s=30, budget_s=-1.0)
    assert (refused.value.status, refused.value.reason) == (422, "decode_timeout")


def test_empty_and_silent_uploads_decode_to_nothing() -> None:
    assert decode_upload(b"", "audio/wav", max_s=30).silent
    assert decode_upload(wav(np.zeros(0, np.float32), SAMPLE_RATE), "audio/wav", max_s=30).silent
    assert decode_upload(wav(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE), None, 30).silent
    hiss = np.random.default_rng(1).normal(0, 10 ** (-70 / 20), SAMPLE_RATE).astype(np.float32)
    assert decode_upload(wav(hiss, SAMPLE_RATE), "audio/wav", max_s=30).silent
    with pytest.raises(AudioRefused):
        decode_upload(b"", "text/plain", max_s=30)


def test_trim_keeps_the_loud_part_and_a_margin() -> None:
    quiet = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([quiet, tone(1.0), quiet])
    kept = trim(audio)
    assert abs(len(kept) / SAMPLE_RATE - 1.4) < 0.05  # 1 s of tone and 200 ms either side
    assert len(trim(quiet)) == 0
    assert len(trim(tone(0.01))) == len(tone(0.01))  # shorter than a window, loud: kept


def test_media_type_parameters() -> None:
    l16 = media_type('audio/L16; rate="44100"; channels=2')
    assert (l16.container, l16.rate_hz, l16.channels) == ("s16be", 44_100, 2)
    assert media_type("audio/ogg; codecs=opus").container == "ogg"
    assert sniff(b"\xff\xfb\x90\x00").container == "mp3"


def test_a_stream_the_resampler_cannot_follow_is_422(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layout or format that changes mid-stream makes swresample raise ValueError: the
    client's upload, not our fault (no 500)."""

    def refuse(frames: Iterator[av.AudioFrame]) -> Iterator[Samples]:
        next(iter(frames))
        raise ValueError("Frame does not match AudioResampler setup.")

    monkeypatch.setattr("ha_voice.voice.audio.resample", refuse)
    content_type, data = FORMATS["flac"]()
    with pytest.raises(AudioRefused) as refused:
        decode_upload(data, content_type, max_s=30)
    assert (refused.value.status, refused.value.reason) == (422, "corrupt_audio")
