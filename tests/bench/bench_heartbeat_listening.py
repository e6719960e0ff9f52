"""Benchmark: heartbeat lateness on the primary idle against a live stream being listened to.

Not a pass/fail test. Prints one JSON object; docs/benchmarks.md ("Heartbeats under a live
stream") tabulates the runs. Run from the repository root:

    PYTHONPATH=. python tests/bench/bench_heartbeat_listening.py [--seconds 30]

The rig of tests/integration/test_listening_cluster.py: three `ha-voice run` processes on
127.0.0.1 with live listening on (the packaged Whisper base model on n1 and n2), a simulated Go2.
After the models are ready and the primary listens: `--seconds` idle (sources open, nothing
sent), then `--seconds` of quiet noise streamed in real time over UDP (32 ms datagrams) to the
primary's source (the VAD runs on every datagram, nothing is recognised), then `--seconds` of
generated Dutch speech: commands and chatter with pauses, so the VAD runs on every datagram and
the speech service recognises an utterance every second or two. Heartbeat lateness
and the core's queue delay come from the primary's histograms (tests/bench/bench_heartbeat_speech.py
reads them the same way: bucket bounds), leader changes from every node's
`ha_voice_leader_changes_total`, utterances from `ha_voice_listen_utterances_total`, the
primary's CPU from psutil over each phase.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

import numpy as np
import psutil

from tests.bench.bench_heartbeat_speech import count, phase
from tests.integration.test_listening_cluster import Streamer, _rig, script
from tests.speech_load import scrape, terms

# what is said, over and over: commands (a stop among them) and chatter no command is in
SPEECH = ("ga zitten", 0.8, "het is mooi weer vandaag", 0.8, "stop", 0.8, "opstaan", 0.8,
          "wat een leuke hond", 0.8, "hou op", 0.8)  # fmt: skip


def _stream_for(streamer: Streamer, seconds: float) -> None:
    audio = script(*SPEECH)
    repeats = int(np.ceil(seconds * 16_000 / len(audio)))
    streamer.stream(np.concatenate([audio] * repeats)[: int(seconds * 16_000)])


def _noise_for(streamer: Streamer, seconds: float) -> None:
    rng = np.random.default_rng(7)
    streamer.stream((rng.standard_normal(int(seconds * 16_000)) * 0.003).astype(np.float32))


def _cpu_s(process: psutil.Process) -> float:
    """CPU seconds of a node's daemon process alone (its speech workers are children)."""
    times = process.cpu_times()
    return float(times.user + times.system)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    result: dict[str, object] = {"seconds": args.seconds}
    with _rig() as rig:
        primary, _ = rig.roles()
        rig.wait_status(primary, lambda b: b["listening_here"])
        process = rig.cluster.nodes[primary].process
        assert process is not None
        daemon = psutil.Process(process.pid)
        streamer = Streamer(rig.ports[primary])
        try:
            time.sleep(2.0)
            idle_0, terms_before, cpu_0 = scrape(rig.cluster), terms(rig.cluster), _cpu_s(daemon)
            time.sleep(args.seconds)
            scrapes, cpu = [scrape(rig.cluster)], [cpu_0, _cpu_s(daemon)]
            for send in (_noise_for, _stream_for):
                sender = threading.Thread(target=send, args=(streamer, args.seconds))
                sender.start()
                sender.join()
                time.sleep(1.0)  # the last utterance's end-of-speech wait
                scrapes.append(scrape(rig.cluster))
                cpu.append(_cpu_s(daemon))
            terms_after = terms(rig.cluster)
        finally:
            streamer.close()
    result["primary"] = primary
    result["terms"] = {"before": terms_before, "after": terms_after}
    idle_1, noise_1, busy_1 = scrapes
    result["leader_changes"] = sum(
        count(busy_1[n], "ha_voice_leader_changes_total")
        - count(idle_0[n], "ha_voice_leader_changes_total")
        for n in busy_1
    )
    result["idle"] = phase(idle_0, idle_1, primary)
    result["vad_only"] = phase(idle_1, noise_1, primary)
    result["streaming"] = phase(noise_1, busy_1, primary)
    result["primary_daemon_cpu_percent"] = {
        name: round(100 * (cpu[i + 1] - cpu[i]) / (args.seconds + (i > 0)), 1)
        for i, name in enumerate(("idle", "vad_only", "streaming"))
    }
    result["utterances"] = count(busy_1[primary], "ha_voice_listen_utterances_total")
    result["vad_segments"] = count(busy_1[primary], "ha_voice_vad_segments_total")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
