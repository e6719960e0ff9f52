"""The Wyoming server's reader and audio stage alone: every malformed or oversized event is
refused by name before its bytes are read, and PCM of each format taken becomes 16 kHz mono."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from wyoming.event import Event

from ha_voice.api.wyoming import (
    MAX_CHUNK_BYTES,
    MAX_DATA_BYTES,
    PcmFormat,
    Refused,
    read_event,
    to_samples,
)
from ha_voice.voice.speech import SAMPLE_RATE


def _read(data: bytes) -> Event | None:
    async def run() -> Event | None:
        reader = asyncio.StreamReader(limit=1 << 16)
        reader.feed_data(data)
        reader.feed_eof()
        return await read_event(reader, 5.0)

    return asyncio.run(run())


def _header(**fields: object) -> bytes:
    return json.dumps(fields).encode() + b"\n"


MALFORMED = {
    "not json": b"hello\n",
    "a list": b"[1, 2]\n",
    "no type": _header(data={}),
    "type not a string": _header(type=7),
    "data not an object": _header(type="describe", data=[1]),
    "data_length a string": _header(type="describe", data_length="12"),
    "data_length negative": _header(type="describe", data_length=-1),
    "data_length too big": _header(type="describe", data_length=MAX_DATA_BYTES + 1),
    "payload_length too big": _header(type="audio-chunk", payload_length=MAX_CHUNK_BYTES + 1),
    "payload_length a float": _header(type="audio-chunk", payload_length=2.5),
    "data not json": _header(type="describe", data_length=3) + b"abc",
    "header over the limit": b'{"type": "' + b"x" * (1 << 17) + b'"}\n',
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_event_is_refused(case: str) -> None:
    with pytest.raises(Refused) as refused:
        _read(MALFORMED[case])
    assert refused.value.reason == "bad_event"


def test_a_well_formed_event_is_read_with_its_data_and_payload() -> None:
    data = json.dumps({"rate": 16000}).encode()
    raw = _header(type="audio-chunk", data={"width": 2}, data_length=len(data), payload_length=4)
    event = _read(raw + data + b"\x01\x02\x03\x04")
    assert event is not None
    assert event.type == "audio-chunk"
    assert event.data == {"width": 2, "rate": 16000}
    assert event.payload == b"\x01\x02\x03\x04"


def test_the_end_of_the_stream_is_none() -> None:
    assert _read(b"") is None


@pytest.mark.parametrize(
    "data",
    [
        {"rate": 96_000, "width": 2, "channels": 1},
        {"rate": 16_000, "width": 3, "channels": 1},
        {"rate": 16_000, "width": 2, "channels": 6},
        {"rate": "16000", "width": 2, "channels": 1},
        {"width": 2, "channels": 1},
    ],
)
def test_formats_out_of_bounds_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(Refused):
        PcmFormat.of(data)


@pytest.mark.parametrize(
    ("rate", "width", "channels"),
    [(16_000, 2, 1), (48_000, 2, 2), (22_050, 4, 1), (8_000, 1, 1), (44_100, 4, 2)],
)
def test_pcm_of_each_format_becomes_one_second_of_16_khz_mono(
    rate: int, width: int, channels: int
) -> None:
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    scale = {1: 127, 2: 32767, 4: 2**31 - 1}[width]
    kind = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    values = tone * scale + (128 if width == 1 else 0)
    pcm = np.repeat(values, channels).astype(np.dtype(kind).newbyteorder("<")).tobytes()
    samples = to_samples(pcm, PcmFormat(rate, width, channels), 30.0)
    assert samples.dtype == np.float32
    assert abs(len(samples) - SAMPLE_RATE) < SAMPLE_RATE // 50
    assert 0.3 < float(np.max(np.abs(samples))) <= 0.55  # the tone's level, not doubled


def test_a_partial_frame_at_the_end_is_left_out() -> None:
    samples = to_samples(b"\x00\x10" * 1600 + b"\x07", PcmFormat(16_000, 2, 1), 30.0)
    assert len(samples) <= 1600
