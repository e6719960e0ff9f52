"""Benchmark: decoding an upload (voice/audio.py `decode_upload`), per format, and how soon a
decompression bomb stops.

Not a pass/fail test; prints markdown rows. Each format holds the same clip (espeak-ng's "draai
naar links" padded with noise to `--seconds`), encoded by PyAV; each row gives the upload's
size, and the median and slowest wall and CPU time of `--runs` decodes in this process. The
last row is an hour of FLAC silence (8 kHz) decoded against the 30 s limit: refused (413) after
decoding 30 s of it.

    python tests/bench/bench_audio_decode.py [--seconds 4] [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path.cwd()))  # the checkout under test

from ha_voice.voice.audio import AudioRefused, decode_upload
from tests.integration.test_voice_audio import encode
from tests.speech_corpus import say, wav_bytes


def _clip(seconds: float) -> np.ndarray:
    speech = say("draai naar links", "mb-nl2", speed_wpm=140)
    pad = max(0, int(seconds * 16_000) - len(speech))
    noise = np.random.default_rng(1).normal(0, 0.003, pad).astype(np.float32)
    return np.concatenate([speech, noise]).astype(np.float32)


def _formats(samples: np.ndarray) -> dict[str, tuple[str, bytes]]:
    return {
        "WAV 16 kHz mono": ("audio/wav", wav_bytes(samples)),
        "WAV 44.1 kHz stereo": ("audio/wav", encode("wav", "pcm_s16le", 44_100, samples, "stereo")),
        "FLAC 16 kHz": ("audio/flac", encode("flac", "flac", 16_000, samples)),
        "Ogg Opus 48 kHz": ("audio/ogg", encode("ogg", "libopus", 48_000, samples)),
        "MP3 44.1 kHz stereo": (
            "audio/mpeg",
            encode("mp3", "libmp3lame", 44_100, samples, "stereo"),
        ),
        "WebM Opus 48 kHz": ("audio/webm", encode("webm", "libopus", 48_000, samples)),
        "L16 16 kHz": ("audio/L16;rate=16000", (samples * 32767).astype(">i2").tobytes()),
    }


def _timed(runs: int, work: Callable[[], object]) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return walls, cpus


def _row(name: str, size: int, walls: list[float], cpus: list[float]) -> str:
    return (
        f"| {name} | {size / 1024:.0f} KiB | {statistics.median(walls):.1f} | "
        f"{max(walls):.1f} | {statistics.median(cpus):.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(f"{args.seconds:g} s clip, {args.runs} runs each")
    print("| upload | size | wall p50 ms | wall max ms | CPU p50 ms |")
    print("|---|---|---|---|---|")
    for name, (content_type, data) in _formats(_clip(args.seconds)).items():
        walls, cpus = _timed(args.runs, partial(decode_upload, data, content_type, 30.0))
        print(_row(name, len(data), walls, cpus), flush=True)
    hour = encode("flac", "flac", 8000, np.zeros(8000 * 3600, np.float32))

    def bomb() -> None:
        try:
            decode_upload(hour, "audio/flac", 30.0)
        except AudioRefused:
            return
        raise AssertionError("an hour of FLAC was decoded")

    walls, cpus = _timed(args.runs, bomb)
    print(_row("FLAC, 1 h of silence at 8 kHz (413 at 30 s)", len(hour), walls, cpus))


if __name__ == "__main__":
    main()
