"""Audio sources with real parts: a UDP socket on 127.0.0.1 and a WAV file through PyAV."""

from __future__ import annotations

import asyncio
import itertools
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from ha_voice.config import Config, parse_source
from ha_voice.voice.sources import AvSource, Block, PcmFormat, UdpSource, open_source
from ha_voice.voice.speech import SAMPLE_RATE
from tests.speech_corpus import wav_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser, from PyPI
    import tomli as tomllib

TONE = (0.5 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def _take(source: UdpSource | AvSource, count: int, timeout_s: float = 10.0) -> list[Block]:
    blocks: list[Block] = []

    async def collect() -> None:
        async for block in source.blocks():
            blocks.append(block)
            if len(blocks) == count:
                return

    await asyncio.wait_for(collect(), timeout_s)
    return blocks


async def _udp(pcm: PcmFormat | None = None, queue_blocks: int = 64) -> UdpSource:
    pcm = pcm or PcmFormat()
    source = UdpSource("udp://127.0.0.1:0", "127.0.0.1", 0, pcm, queue_blocks)
    await source.async_open()
    return source


def _sender() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def test_udp_pcm_arrives_as_16khz_float_blocks_with_continuous_stream_time() -> None:
    async def scenario() -> None:
        source = await _udp()
        with _sender() as sender:
            data = _pcm16(TONE)
            for offset in range(0, len(data), 1024):  # 32 ms datagrams, as the seed's streamer
                sender.sendto(data[offset : offset + 1024], source.address)
            blocks = await _take(source, -(-len(data) // 1024))
        source.close()
        audio = np.concatenate([b.samples for b in blocks])
        assert audio.dtype == np.float32
        assert np.allclose(audio, TONE, atol=1e-3)
        for before, after in itertools.pairwise(blocks):
            assert after.start_s == pytest.approx(before.start_s + before.duration_s)
        stats = source.stats()
        assert (stats.received, stats.dropped, stats.malformed) == (len(blocks), 0, 0)
        assert stats.level_dbfs == pytest.approx(-9.0, abs=0.5)  # a sine at 0.5: -9 dBFS RMS
        assert stats.open is False

    asyncio.run(scenario())


def test_malformed_datagrams_are_dropped_and_counted_and_the_stream_goes_on() -> None:
    async def scenario() -> None:
        source = await _udp()
        with _sender() as sender:
            sender.sendto(b"\x01\x02\x03", source.address)  # half a sample
            sender.sendto(b"", source.address)  # empty
            sender.sendto(_pcm16(TONE[:512]), source.address)
            blocks = await _take(source, 1)
        source.close()
        assert len(blocks[0].samples) == 512
        assert source.stats().malformed == 2
        assert source.stats().received == 3

    asyncio.run(scenario())


def test_a_full_queue_drops_and_counts_instead_of_growing() -> None:
    async def scenario() -> None:
        source = await _udp(queue_blocks=8)
        with _sender() as sender:
            for _ in range(40):  # nobody reads: the queue holds 8
                sender.sendto(_pcm16(TONE[:256]), source.address)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if source.stats().received == 40:
                    break
        stats = source.stats()
        source.close()
        assert stats.received == 40
        assert stats.dropped == 32

    asyncio.run(scenario())


def test_other_rates_widths_and_channels_are_mixed_to_16khz_mono() -> None:
    async def scenario() -> None:
        source = await _udp(PcmFormat(rate=48_000, width=4, channels=2))
        stereo = np.repeat(np.full(4800, 0.25, dtype=np.float32), 2)  # 0.1 s at 48 kHz
        with _sender() as sender:
            for _ in range(5):
                sender.sendto((stereo * 2**31).astype("<i4").tobytes(), source.address)
            blocks = await _take(source, 5)
        source.close()
        audio = np.concatenate([b.samples for b in blocks])
        # The resampler's filter holds back a few milliseconds; the rest is 0.25, mono.
        assert 5 * 1600 - 64 <= len(audio) <= 5 * 1600
        assert np.allclose(audio[200:], 0.25, atol=1e-3)

    asyncio.run(scenario())


def _tone(rate: int, hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize(("hz", "kept"), [(1000.0, True), (12_000.0, False), (20_000.0, False)])
def test_a_48khz_stream_keeps_the_speech_band_and_does_not_fold_what_is_above_it(
    hz: float, kept: bool
) -> None:
    # Cut into the seed streamer's 32 ms datagrams: a tone below 8 kHz comes out whole, one
    # above it is filtered out, not folded into the speech band (12 kHz would alias to 4 kHz).
    async def scenario() -> np.ndarray:
        source = await _udp(PcmFormat(rate=48_000))
        data = _pcm16(_tone(48_000, hz, 1.0))
        step = 3 * 1024  # 32 ms at 48 kHz
        with _sender() as sender:
            for offset in range(0, len(data), step):
                sender.sendto(data[offset : offset + step], source.address)
                await asyncio.sleep(0)
            blocks = await _take(source, -(-len(data) // step) - 1)
        source.close()
        return np.concatenate([b.samples for b in blocks])

    audio = asyncio.run(scenario())[1600:]  # past the filter's start
    rms = float(np.sqrt(np.mean(np.square(audio))))
    if kept:
        assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
        spectrum = np.abs(np.fft.rfft(audio))
        assert np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)[spectrum.argmax()] == pytest.approx(
            hz, abs=5
        )
    else:
        assert rms < 0.01, f"{hz:g} Hz folded into the band at {20 * np.log10(rms):.0f} dBFS"


def test_a_file_is_read_through_pyav_resampled_to_16khz_mono(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    path.write_bytes(wav_bytes(TONE[:8000].repeat(3), rate=48_000))  # 0.5 s at 48 kHz

    async def scenario() -> None:
        source = open_source(f"file:{path}", PcmFormat(), 64)
        assert isinstance(source, AvSource)
        await source.async_open()
        blocks = [block async for block in source.blocks()]  # ends at the end of the file
        source.close()
        total = sum(len(b.samples) for b in blocks)
        assert abs(total - 8000) <= 64
        assert source.stats().received == len(blocks)

    asyncio.run(scenario())


def test_a_missing_file_fails_to_open_with_the_reason() -> None:
    async def scenario() -> None:
        source = open_source("file:/nonexistent/ha-voice.wav", PcmFormat(), 8)
        with pytest.raises(OSError, match="No such file"):
            await source.async_open()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ("udp://0.0.0.0:9999", "udp"),
        ("alsa:hw:1,0", "alsa"),
        ("pulse:default", "pulse"),
        ("file:/tmp/a.wav", "file"),
        ("rtsp://192.168.123.161:8554/audio", "url"),
    ],
)
def test_source_entries_parse(entry: str, kind: str) -> None:
    assert parse_source(entry)[0] == kind


@pytest.mark.parametrize(
    "entry", ["udp://9999", "udp://host:0", "alsa:", "microphone", "udp://h:x"]
)
def test_bad_source_entries_are_refused_naming_the_entry(entry: str) -> None:
    with pytest.raises(ValueError, match=r"audio_sources|udp://HOST:PORT|after"):
        Config(node_id="n1", audio_sources=[entry])


def test_the_documented_sources_are_a_valid_configuration() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "voice.md").read_text()
    section = text.split("## Live listening", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = Config(node_id="n1", **tomllib.loads(example))
    assert [parse_source(s)[0] for s in config.audio_sources] == ["udp"]
    assert [parse_source(s)[0] for s in config.local_audio_sources] == ["alsa"]
