"""Benchmark: live listening, from the end of a spoken command to the call at the robot.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run from the repository root:

    PYTHONPATH=. python tests/bench/bench_listening_latency.py [--trials 8]

The rig of tests/integration/test_listening_cluster.py: three `ha-voice run` processes on
127.0.0.1 (the packaged Whisper base model on two, int8 on CPU), a simulated Go2, generated Dutch
speech streamed in real time over UDP (32 ms datagrams) to the primary's source. For each trial
the time is from the last loud sample of the phrase leaving the sender (|x| > 0.01) to the
command's arrival at the simulated robot; both are CLOCK_MONOTONIC of one machine. "stop" is
said after a "loop vooruit" (the walk lasts 2 s: it may be over by then); the motion command is "ga
liggen" / "opstaan" in turn. The end-of-speech wait of the VAD (vad_min_silence_s, 0.4 s) is
part of every number.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import numpy as np
from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.robot.base import Action
from ha_voice.robot.sim import EntryKind
from ha_voice.robot.sim_server import fetch_journal
from ha_voice.voice.speech import SAMPLE_RATE
from tests.integration.test_listening_cluster import ListeningRig, Streamer, _rig, script

START, END = "<!-- bench_listening_latency:start -->", "<!-- bench_listening_latency:end -->"


def _arrivals(rig: ListeningRig, action: Action) -> list[float]:
    entries = asyncio.run(fetch_journal(rig.robot.host, rig.robot.port))
    return [
        e.arrival_s
        for e in entries
        if e.kind is EntryKind.COMMAND and e.action is action and e.accepted
    ]


def _say(rig: ListeningRig, streamer: Streamer, phrase: str, action: Action) -> float | None:
    """Seconds from the end of `phrase` to `action` at the robot, or None if it never came."""
    before = len(_arrivals(rig, action))
    audio = script(phrase, 1.5)
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    end_offset_s = (loud[-1] + 1) / SAMPLE_RATE
    started = time.monotonic()
    streamer.stream(audio)
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        arrivals = _arrivals(rig, action)
        if len(arrivals) > before:
            return arrivals[before] - (started + end_offset_s)
        time.sleep(0.1)
    return None


MOTIONS = (("ga liggen", Action.STAND_DOWN), ("opstaan", Action.STAND_UP))


def _record(took: float | None, into: list[float], missed: dict[str, int], kind: str) -> None:
    if took is None:
        missed[kind] += 1
    else:
        into.append(took)


def _summary(name: str, values: list[float], missed: int) -> str:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return f"| {name} | 0 | {missed} | – | – | – |"
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return (
        f"| {name} | {len(ms)} | {missed} | {statistics.median(ms):.0f} | {p90:.0f} | "
        f"{ms[-1]:.0f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    stops: list[float] = []
    motions: list[float] = []
    missed = {"stop": 0, "motion": 0}
    with _rig() as rig:
        primary, _ = rig.roles()
        rig.wait_status(primary, lambda b: b["listening_here"])
        streamer = Streamer(rig.ports[primary])
        try:
            for trial in range(args.trials):
                _say(rig, streamer, "loop vooruit", Action.MOVE)
                _record(_say(rig, streamer, "stop", Action.STOP_MOVE), stops, missed, "stop")
                phrase, action = MOTIONS[trial % 2]
                _record(_say(rig, streamer, phrase, action), motions, missed, "motion")
                print(f"trial {trial}: stop {stops[-1:]} motion {motions[-1:]}", file=sys.stderr)
        finally:
            streamer.close()
    lines = [
        "## Live listening: end of speech to the robot",
        "",
        "`python tests/bench/bench_listening_latency.py` (see its docstring for the rig). From the",
        "last loud sample of a spoken phrase to the command's arrival at the simulated Go2, on a",
        "2-core machine shared with other work, Whisper base int8 on CPU; milliseconds.",
        "",
        "| said | heard and run | missed | p50 ms | p90 ms | max ms |",
        "|---|---|---|---|---|---|",
        _summary('"stop" after "loop vooruit"', stops, missed["stop"]),
        _summary('"ga liggen" / "opstaan"', motions, missed["motion"]),
        "",
        "Each number includes the VAD's end-of-speech wait (vad_min_silence_s = 0.4 s less the",
        "phrase's own trailing pad) and recognition on the least loaded node. The issue asks for",
        "≤ 400 ms p50 for a stop: not met on this CPU; deciding a stop before the full silence",
        "window (an early stop path) is not built yet.",
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
