"""Benchmark: a spoken command over Wyoming against the same over /api/voice/listen.

Not a pass/fail test; prints markdown rows. A 3-node cluster on loopback with the packaged
Whisper base model (tests/integration/test_speech_cluster.py's rig), transcript mode. Each run
sends espeak-ng's "ga liggen" (16 kHz 16-bit mono, as Home Assistant sends it) to the primary,
`--runs` times each way: over Wyoming with the `wyoming` client, timed from `audio-stop`
written to `transcript` read; and as a WAV upload with `?dry_run=true`, timed from the request
to the answer. Both recognise on the least loaded node, so the difference is the protocol.

    python tests/bench/bench_wyoming.py [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the checkout under test

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient

from tests.integration.test_speech_cluster import _rig, wait_speech_ready
from tests.speech_corpus import say, wav_bytes


async def _wyoming_ms(port: int, pcm: bytes) -> float:
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=60.0) as client:
        await client.write_event(Transcribe(language="nl").event())
        await client.write_event(AudioStart(16_000, 2, 1).event())
        for at in range(0, len(pcm), 2048):
            await client.write_event(AudioChunk(16_000, 2, 1, pcm[at : at + 2048]).event())
        started = time.perf_counter()
        await client.write_event(AudioStop().event())
        event = await client.read_event()
        elapsed_ms = (time.perf_counter() - started) * 1000
    assert event is not None
    assert Transcript.is_type(event.type), event
    assert "liggen" in Transcript.from_event(event).text
    return elapsed_ms


def _row(name: str, times_ms: list[float]) -> str:
    return f"| {name} | {statistics.median(times_ms):.0f} | {max(times_ms):.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    samples = say("ga liggen", "nl+f3")
    wav = wav_bytes(samples)
    pcm = (samples.clip(-1, 1) * 32767).astype("<i2").tobytes()
    with _rig() as rig:
        for node in rig.cluster.nodes.values():
            wait_speech_ready(node)
        primary, _ = rig.roles()
        node = rig.cluster.nodes[primary]
        wyoming = [asyncio.run(_wyoming_ms(node.wyoming_port, pcm)) for _ in range(args.runs)]
        headers = {**node.auth_headers, "Content-Type": "audio/wav"}
        listen = []
        for _ in range(args.runs):
            started = time.perf_counter()
            answer = node._client.post(
                node.url + "/api/voice/listen?dry_run=true",
                content=wav,
                headers=headers,
                timeout=60.0,
            )
            listen.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
    print(f"{args.runs} runs, {len(samples) / 16_000:.2f} s of speech\n")
    print("| path | median ms | slowest ms |\n|---|---|---|")
    print(_row("Wyoming: audio-stop → transcript", wyoming))
    print(_row("/api/voice/listen?dry_run=true: WAV → answer", listen))


if __name__ == "__main__":
    main()
