"""Benchmark: live listening, from the end of a spoken command to the call at the robot.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run from the repository root:

    PYTHONPATH=. python tests/bench/bench_listening_latency.py [--trials 12] [--early-stop-s 0.12 0]

The rig of tests/integration/test_listening_cluster.py: three `ha-voice run` processes on
127.0.0.1 (the packaged Whisper base model on two, int8 on CPU), a simulated Go2, generated Dutch
speech streamed in real time over UDP (32 ms datagrams) to the primary's source. For each trial
the time is from the last loud sample of the phrase leaving the sender (|x| > 0.01) to the
command's arrival at the simulated robot; both are CLOCK_MONOTONIC of one machine. "stop" and
"halt" (in turn) are said while the robot walks: a 10 s `move` posted to the API, its first
set-point at the robot before the phrase starts. The motion command is "ga liggen" / "opstaan"
in turn. Each `--early-stop-s` value is one run with listen_early_stop_s set so on every node
(0: no early stop, every command waits for vad_min_silence_s = 0.4 s of silence).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import threading
import time

import httpx
import numpy as np
from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.robot.base import Action
from ha_voice.robot.sim import EntryKind
from ha_voice.robot.sim_server import fetch_journal
from ha_voice.voice.speech import SAMPLE_RATE
from tests.integration.test_listening_cluster import ListeningRig, Streamer, _rig, script

START, END = "<!-- bench_listening_latency:start -->", "<!-- bench_listening_latency:end -->"
WALK_S = 10.0  # longer than a trial's stop phrase: the only StopMove in it is the spoken one


def _arrivals(rig: ListeningRig, action: Action) -> list[float]:
    entries = asyncio.run(fetch_journal(rig.robot.host, rig.robot.port))
    return [
        e.arrival_s
        for e in entries
        if e.kind is EntryKind.COMMAND and e.action is action and e.accepted
    ]


def _wait_arrivals(rig: ListeningRig, action: Action, more_than: int) -> list[float] | None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        arrivals = _arrivals(rig, action)
        if len(arrivals) > more_than:
            return arrivals
        time.sleep(0.05)
    return None


def _say(rig: ListeningRig, streamer: Streamer, phrase: str, action: Action) -> float | None:
    """Seconds from the end of `phrase` to `action` at the robot, or None if it never came."""
    before = len(_arrivals(rig, action))
    audio = script(phrase, 1.5)
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    end_offset_s = (loud[-1] + 1) / SAMPLE_RATE
    started = time.monotonic()
    streamer.stream(audio)
    arrivals = _wait_arrivals(rig, action, before)
    return None if arrivals is None else arrivals[before] - (started + end_offset_s)


def _walk(rig: ListeningRig, primary: str) -> threading.Thread:
    """Start a WALK_S walk through the API; returns once its first set-point is at the robot."""
    node = rig.cluster.nodes[primary]
    body = {"command": "move", "params": {"vx": 0.3}, "duration_s": WALK_S}
    before = len(_arrivals(rig, Action.MOVE))

    def post() -> None:
        url = node.url + "/api/robot/command"
        httpx.post(url, json=body, headers=node.auth_headers, timeout=WALK_S + 10)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    _wait_arrivals(rig, Action.MOVE, before)
    return thread


MOTIONS = (("ga liggen", Action.STAND_DOWN), ("opstaan", Action.STAND_UP))
STOPS = ("stop", "halt")


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


def _early_looks(rig: ListeningRig, primary: str) -> str:
    response = rig.cluster.nodes[primary].get("/metrics", timeout_s=5.0)
    text = response.text if response is not None else ""
    found = re.findall(r'^ha_voice_listen_early_looks_total\{result="(\w+)"\} (\S+)$', text, re.M)
    return ", ".join(f"{result} {float(n):.0f}" for result, n in found) or "none"


def _trials(trials: int, early_stop_s: float) -> tuple[list[str], str]:
    """The table rows of `trials` trials with listen_early_stop_s = `early_stop_s`, and the
    primary's early looks."""
    stops: dict[str, list[float]] = {phrase: [] for phrase in STOPS}
    motions: list[float] = []
    missed = {"stop": 0, "halt": 0, "motion": 0}
    with _rig((f"--listen-early-stop-s={early_stop_s}",)) as rig:
        primary, _ = rig.roles()
        rig.wait_status(primary, lambda b: b["listening_here"])
        streamer = Streamer(rig.ports[primary])
        try:
            for trial in range(trials):
                walk = _walk(rig, primary)
                phrase = STOPS[trial % 2]
                took = _say(rig, streamer, phrase, Action.STOP_MOVE)
                _record(took, stops[phrase], missed, phrase)
                walk.join()
                motion, action = MOTIONS[trial % 2]
                _record(_say(rig, streamer, motion, action), motions, missed, "motion")
                print(f"trial {trial}: {phrase} {took} motion {motions[-1:]}", file=sys.stderr)
            looks = _early_looks(rig, primary)
        finally:
            streamer.close()
    at = f"{early_stop_s:g} s"
    rows = [
        _summary(f'{at} | "stop" while walking', stops["stop"], missed["stop"]),
        _summary(f'{at} | "halt" while walking', stops["halt"], missed["halt"]),
        _summary(
            f'{at} | "stop" and "halt" while walking',
            [*stops["stop"], *stops["halt"]],
            missed["stop"] + missed["halt"],
        ),
        _summary(f'{at} | "ga liggen" / "opstaan"', motions, missed["motion"]),
    ]
    return rows, f"{at}: {looks}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--early-stop-s", type=float, nargs="+", default=[0.12, 0.0])
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows: list[str] = []
    looks: list[str] = []
    for early_stop_s in args.early_stop_s:
        more_rows, more_looks = _trials(args.trials, early_stop_s)
        rows += more_rows
        looks.append(more_looks)
    load = f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    settings = " ".join(f"{s:g}" for s in args.early_stop_s)
    lines = [
        "## Live listening: end of speech to the robot",
        "",
        f"`PYTHONPATH=. python tests/bench/bench_listening_latency.py --trials {args.trials} "
        f"--early-stop-s {settings}`",
        "(see its docstring for the rig). From the last loud sample of a spoken phrase to the",
        "command's arrival at the simulated Go2, for each listen_early_stop_s (0: no early stop),",
        "on a 2-core machine shared with other work (1-minute load average",
        f"{load}), Whisper base int8 on CPU; milliseconds.",
        "",
        "| listen_early_stop_s | said | heard and run | missed | p50 ms | p90 ms | max ms |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"The primary's early looks (ha_voice_listen_early_looks_total): {'; '.join(looks)}.",
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
