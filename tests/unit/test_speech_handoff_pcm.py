"""The hand-off route's PCM: float32 or int16 little-endian at 16 kHz, whole samples only."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from starlette.requests import Request

from ha_voice.api.problems import ApiError
from ha_voice.api.speech_handoff import _audio


def request(body: bytes) -> Request:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def test_float32_arrives_as_sent() -> None:
    sent = np.array([0.0, 0.5, -0.25, 1.0], dtype="<f4")
    got = asyncio.run(_audio(request(sent.tobytes()), "f32"))
    assert got.dtype == np.float32
    assert got.tolist() == sent.tolist()


def test_int16_is_scaled_into_minus_one_to_one() -> None:
    sent = np.array([0, 16384, -32768, 32767], dtype="<i2")
    got = asyncio.run(_audio(request(sent.tobytes()), "s16"))
    assert got.dtype == np.float32
    assert got.tolist() == pytest.approx([0.0, 0.5, -1.0, 32767 / 32768])


def test_float32_outside_the_range_is_clipped() -> None:
    got = asyncio.run(_audio(request(np.array([3.0, -7.0], dtype="<f4").tobytes()), "f32"))
    assert got.tolist() == [1.0, -1.0]


@pytest.mark.parametrize(
    ("body", "pcm"),
    [
        (b"", "f32"),
        (b"\x00" * 6, "f32"),
        (b"\x00" * 3, "s16"),
        (np.array([np.nan], dtype="<f4").tobytes(), "f32"),
        (np.array([np.inf], dtype="<f4").tobytes(), "f32"),
    ],
    ids=["empty", "half a float", "half an int16", "nan", "inf"],
)
def test_what_is_no_pcm_is_422(body: bytes, pcm: str) -> None:
    with pytest.raises(ApiError) as caught:
        asyncio.run(_audio(request(body), pcm))  # type: ignore[arg-type]
    assert caught.value.status == 422
