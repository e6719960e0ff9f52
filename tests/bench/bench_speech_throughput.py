"""Benchmark: speech throughput of two nodes against one, each node held to one CPU core.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run:

    python tests/bench/bench_speech_throughput.py [--clips 40] [--concurrency 4]

A two-node cluster (`two_node`) of `ha-voice run` processes on 127.0.0.1, n1 pinned to CPU 0
and n2 to CPU 1 with `taskset` (their speech workers inherit it), each with the packaged
multilingual base model, one speech worker, one CTranslate2 thread. Every clip (Dutch commands
spoken by espeak-ng) is uploaded to n1 only, `concurrency` at a time, with
`POST /api/voice/listen?dry_run=true` (recognised, nothing run): with n2's speech off
(`--no-stt-enabled`) n1 does every clip itself; with it on, n1 places each on the least loaded
ready node. Throughput is clips answered per second of wall time, after a warm-up round.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.local_cluster import LocalCluster, LocalNode
from ha_voice.voice.models import packaged_model
from tests.speech_corpus import say, wav_bytes

START, END = "<!-- bench_speech_throughput:start -->", "<!-- bench_speech_throughput:end -->"
PHRASES = ("ga zitten", "sta op", "zeg hallo", "ga liggen", "stop", "loop vooruit")
VOICES = ("nl", "nl+f3", "nl+m3")
_READY_TIMEOUT_S = 180.0


def clips(count: int) -> list[bytes]:
    return [
        wav_bytes(say(PHRASES[i % len(PHRASES)], VOICES[i % len(VOICES)], seed=i))
        for i in range(count)
    ]


def wait_ready(node: LocalNode, members: set[str]) -> None:
    """Until `node` sees every one of `members` ready for speech."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        view = node.cluster()
        if view is not None:
            ready = {m["node"] for m in view["members"] if (m["speech"] or {}).get("ready")}
            if members <= ready:
                return
        time.sleep(0.5)
    raise SystemExit(f"speech not ready on {sorted(members)} after {_READY_TIMEOUT_S} s")


def upload(client: httpx.Client, node: LocalNode, wav: bytes) -> str:
    body = {"audio": base64.b64encode(wav).decode("ascii")}
    response = client.post(
        node.url + "/api/voice/listen",
        params={"dry_run": "true"},
        json=body,
        headers=node.auth_headers,
        timeout=120.0,
    )
    response.raise_for_status()
    return str(response.json().get("stt_node"))


def run(wavs: list[bytes], concurrency: int, both: bool) -> tuple[float, Counter[str]]:
    """(clips per second, clips by the node that recognised them) with n2's speech on or off."""
    model = str(packaged_model("base"))
    common = [f"--whisper-model={model}", "--stt-workers=1", "--stt-cpu-threads=1", "--two-node"]
    flags = {
        "n1": [*common, "--priority=200"],
        "n2": [*common, *([] if both else ["--no-stt-enabled"])],
    }
    taskset = shutil.which("taskset")
    prefixes = [[taskset, "-c", str(cpu)] for cpu in (0, 1)] if taskset else []
    with LocalCluster(2, node_flags=flags, prefixes=prefixes) as cluster:
        cluster.start()
        assert cluster.wait_for_primary(30.0) is not None
        entry = cluster.nodes["n1"]
        wait_ready(entry, {"n1", "n2"} if both else {"n1"})
        with httpx.Client() as client, ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda w: upload(client, entry, w), wavs[:concurrency]))  # warm-up
            started = time.perf_counter()
            nodes = list(pool.map(lambda w: upload(client, entry, w), wavs))
            took = time.perf_counter() - started
    return len(wavs) / took, Counter(nodes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setup, best kept")
    args = parser.parse_args()
    wavs = clips(args.clips)
    one = [run(wavs, args.concurrency, both=False) for _ in range(args.rounds)]
    two = [run(wavs, args.concurrency, both=True) for _ in range(args.rounds)]
    best_one, best_two = max(r for r, _ in one), max(r for r, _ in two)
    spread = two[-1][1]
    lines = [
        "## Speech throughput: two nodes against one (placement)",
        "",
        f"`python tests/bench/bench_speech_throughput.py --clips {args.clips} "
        f"--concurrency {args.concurrency} --rounds {args.rounds}` on this machine "
        f"({os.cpu_count()} CPUs, shared with other work while it ran): each node pinned to "
        "one core with `taskset`, base model int8, one speech worker with one thread each, "
        f"{args.clips} espeak-ng Dutch commands uploaded to n1 only, {args.concurrency} at a "
        "time, `dry_run`.",
        "",
        "| setup | clips/s per round | best |",
        "|---|---|---|",
        f"| n1 alone does speech | {', '.join(f'{r:.2f}' for r, _ in one)} | {best_one:.2f} |",
        f"| n1 and n2 do speech | {', '.join(f'{r:.2f}' for r, _ in two)} | {best_two:.2f} |",
        "",
        f"Two nodes against one: **{best_two / best_one:.2f}x** (best against best; median "
        f"{statistics.median(r for r, _ in two) / statistics.median(r for r, _ in one):.2f}x). "
        "Where the clips ran in the last two-node round: "
        + ", ".join(f"{node} {count}" for node, count in sorted(spread.items()))
        + ".",
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
