"""Benchmark: speech throughput of two nodes against one, each node held to one CPU core.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run:

    python tests/bench/bench_speech_throughput.py [--clips 40] [--concurrency 4]

A two-node cluster (`two_node`) of `ha-voice run` processes on 127.0.0.1, n1 pinned to CPU 0
and n2 to CPU 1 with `taskset` (their speech workers inherit it), each with the packaged
multilingual base model, one speech worker, one CTranslate2 thread. Every clip (Dutch commands
spoken by espeak-ng) is uploaded to n1 only, `concurrency` at a time (two per client address,
what a node allows one client), with
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
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

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
    if response.status_code != 200:
        raise SystemExit(f"{node.node_id} answered {response.status_code}: {response.text}")
    return str(response.json().get("stt_node"))


@dataclass
class Round:
    """One measured round: throughput, where the clips ran, CPU per clip by node and part."""

    clips_per_s: float
    ran: Counter[str]
    cpu_ms: dict[str, tuple[float, float]]  # node -> (daemon, speech workers) ms per clip


def cpu_s(node: LocalNode) -> tuple[float, float]:
    """CPU seconds (user + system) of `node`'s daemon and of its speech workers so far."""
    assert node.process is not None
    daemon = psutil.Process(node.process.pid)  # taskset execs the daemon: the same process
    own = daemon.cpu_times()
    workers = [c.cpu_times() for c in daemon.children(recursive=True)]
    return own.user + own.system, sum(w.user + w.system for w in workers)


def run(wavs: list[bytes], concurrency: int, both: bool, spread: bool) -> Round:
    """One round with n2's speech on (`both`) or off, every clip sent to n1 or (`spread`)
    every other one to n2."""
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
        # A node takes at most two uploads at a time from one address: `concurrency` streams,
        # each one upload after another, two streams per client address (127.0.0.1, .2, ...).
        clients = [
            httpx.Client(transport=httpx.HTTPTransport(local_address=f"127.0.0.{i + 1}"))
            for i in range((concurrency + 1) // 2)
        ]

        def stream(index: int, share: list[bytes]) -> list[str]:
            to = cluster.nodes["n2"] if spread and index % 2 else entry
            return [upload(clients[index // 2], to, wav) for wav in share]

        def everything(batch: list[bytes]) -> list[str]:
            shares = [batch[i::concurrency] for i in range(concurrency)]
            with ThreadPoolExecutor(concurrency) as pool:
                return [n for ns in pool.map(stream, range(concurrency), shares) for n in ns]

        try:
            everything(wavs[:concurrency])  # warm-up
            before = {name: cpu_s(node) for name, node in cluster.nodes.items()}
            started = time.perf_counter()
            nodes = everything(wavs)
            took = time.perf_counter() - started
            after = {name: cpu_s(node) for name, node in cluster.nodes.items()}
        finally:
            for client in clients:
                client.close()
    per_clip = {
        name: (
            1000 * (after[name][0] - before[name][0]) / len(wavs),
            1000 * (after[name][1] - before[name][1]) / len(wavs),
        )
        for name in after
    }
    return Round(len(wavs) / took, Counter(nodes), per_clip)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setup")
    args = parser.parse_args()
    wavs = clips(args.clips)
    rows = []
    ratios = []
    for spread in (False, True):
        one = [run(wavs, args.concurrency, False, spread) for _ in range(args.rounds)]
        two = [run(wavs, args.concurrency, True, spread) for _ in range(args.rounds)]
        sent = "n1 and n2 in turn" if spread else "n1 only"
        for label, rounds in (("n1 alone", one), ("n1 and n2", two)):
            rates = ", ".join(f"{r.clips_per_s:.2f}" for r in rounds)
            last = rounds[-1]
            ran = ", ".join(f"{n} {c}" for n, c in sorted(last.ran.items()))
            cpu = "; ".join(f"{n} {d:.0f} + {w:.0f}" for n, (d, w) in sorted(last.cpu_ms.items()))
            rows.append(f"| {sent} | {label} | {rates} | {ran} | {cpu} |")
        ratio = statistics.median(r.clips_per_s for r in two) / statistics.median(
            r.clips_per_s for r in one
        )
        ratios.append(f"{ratio:.2f}x with uploads to {sent}")
    lines = [
        "## Speech throughput: two nodes against one (placement)",
        "",
        f"`python tests/bench/bench_speech_throughput.py --clips {args.clips} "
        f"--concurrency {args.concurrency} --rounds {args.rounds}` on this machine "
        f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} from other work as it "
        "ended): a two-node cluster, each node pinned to one core with `taskset`, base model "
        f"int8, one speech worker with one thread each; {args.clips} espeak-ng Dutch commands "
        f'(about 1 s each), {args.concurrency} uploads at a time, `dry_run`. "n1 alone": n2 '
        "has no speech (`stt_enabled = false`) and hands what it receives to n1.",
        "",
        "| uploads to | speech on | clips/s per round | where the last round's clips ran "
        "| CPU ms per clip: daemon + speech workers |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Two nodes against one (median rounds): **{'**, **'.join(ratios)}**.",
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
