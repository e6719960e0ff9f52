"""Review of issue 12 (breakit12): what a Wyoming client sends costs a bounded, declared amount.

- JSON nested deeper than Python recurses, in an event's header line or its data, is a
  malformed event (`bad_event`), not an exception out of the reader (it was a traceback at
  error level per connection, and no error event for the client);
- an utterance holds its audio's bytes, however the client cuts it into chunks: a million
  one-byte chunks held 57 bytes per byte of audio (11.5 M chunks, 660 MB per connection
  within the 30 s bound at 48 kHz 32-bit stereo), and empty chunks grew without any bound.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc

import pytest

from ha_voice.api.wyoming import PcmFormat, Refused, _Utterance, read_event

DEPTH = 30_000  # within the 64 KiB header line, far past Python's recursion limit


def _read(data: bytes) -> object:
    async def run() -> object:
        reader = asyncio.StreamReader(limit=1 << 16)
        reader.feed_data(data)
        reader.feed_eof()
        return await read_event(reader, 5.0)

    return asyncio.run(run())


DEEP = {
    "header, an array": b"[" * DEPTH + b"\n",
    "header, an object": b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"\n",
    "data": json.dumps({"type": "describe", "data_length": 2 * DEPTH + 1}).encode()
    + b"\n"
    + b"[" * DEPTH
    + b"]" * (DEPTH + 1),
}


@pytest.mark.parametrize("case", sorted(DEEP))
def test_json_nested_deeper_than_python_recurses_is_a_bad_event(case: str) -> None:
    with pytest.raises(Refused) as refused:
        _read(DEEP[case])
    assert refused.value.reason == "bad_event"


CHUNKS = 200_000
FORMAT = PcmFormat(48_000, 4, 2)


@pytest.mark.parametrize("payload", [b"\x01", b""], ids=["one byte", "empty"])
def test_an_utterance_holds_its_audio_not_its_chunks(payload: bytes) -> None:
    utterance = _Utterance(FORMAT, limit_bytes=30 * FORMAT.bytes_per_s)
    tracemalloc.start()
    try:
        for _ in range(CHUNKS):
            utterance.add(payload)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The audio itself (200 kB of one-byte chunks, nothing of empty ones) and a buffer's slack.
    assert held <= CHUNKS * len(payload) * 1.2 + 64 * 1024, held


def test_an_utterance_over_its_bound_is_refused_before_it_is_held() -> None:
    utterance = _Utterance(PcmFormat(16_000, 2, 1), limit_bytes=4)
    utterance.add(b"\x00\x00\x00")
    with pytest.raises(Refused) as refused:
        utterance.add(b"\x00\x00")
    assert refused.value.reason == "audio_too_long"
    assert len(utterance.pcm) == 3
