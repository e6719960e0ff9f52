"""Benchmark: heartbeat lateness idle against every core busy transcribing (the standing rule).

Not a pass/fail test. Prints one JSON object; docs/benchmarks.md ("Heartbeats while every core
transcribes") tabulates the runs. Run:

    python tests/bench/bench_heartbeat_speech.py [--seconds 30] [--clients 2] [--workers 1]

Three `ha-voice run` processes on 127.0.0.1, each with the packaged Whisper base model (int8)
in `--workers` worker processes, on this machine's cores together with the clients. After the
models are ready: `--seconds` idle, then `--seconds` with `--clients` clients per node that
keep posting spoken commands (/api/voice/listen?dry_run=true) and 6 s recordings
(/v1/audio/transcriptions), so every worker always has a job (tests/speech_load.py). Heartbeat
lateness and the core's queue delay come from the primary's histograms (`/metrics`), the round
trip from a backup's; leader changes from every node's term and
`ha_voice_leader_changes_total`; CPU use per core from psutil over the loaded phase.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from ha_voice.local_cluster import LocalCluster
from ha_voice.voice.models import packaged_model
from tests.speech_load import hammer, scrape, terms

HISTOGRAMS = (
    "ha_voice_heartbeat_lateness_seconds",
    "ha_voice_core_queue_delay_seconds",
)


def buckets(text: str, name: str) -> dict[float, float]:
    found = re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)
    return {float(le): float(count) for le, count in found}


def quantile(before: str, after: str, name: str, q: float) -> float | None:
    """The bucket bound under which `q` of the observations between two scrapes fall."""
    a, b = buckets(before, name), buckets(after, name)
    delta = {le: b[le] - a.get(le, 0.0) for le in b}
    total = delta.get(float("inf"), 0.0)
    if total <= 0:
        return None
    return next((le for le in sorted(delta) if delta[le] >= q * total), float("inf"))


def count(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def phase(before: dict[str, str], after: dict[str, str], primary: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in HISTOGRAMS:
        short = name.removeprefix("ha_voice_").removesuffix("_seconds")
        for q in (0.5, 0.99):
            out[f"{short}_p{int(q * 100)}_s"] = quantile(before[primary], after[primary], name, q)
    out["speech_jobs"] = {
        n: count(after[n], "ha_voice_speech_seconds_count")
        - count(before[n], "ha_voice_speech_seconds_count")
        for n in after
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=2, help="clients per node")
    parser.add_argument("--workers", type=int, default=1, help="stt_workers per node")
    args = parser.parse_args()
    model = str(packaged_model("base"))
    flags = (f"--whisper-model={model}", f"--stt-workers={args.workers}")
    result: dict[str, object] = {"seconds": args.seconds, "clients_per_node": args.clients}
    with LocalCluster(3, extra_flags=flags) as cluster:
        cluster.start()
        found = cluster.wait_for_primary(60.0)
        assert found is not None
        primary = found[0]
        for node_id in cluster.nodes:
            ready = cluster.wait_for(
                node_id,
                lambda view: all(m["speech"] and m["speech"]["ready"] for m in view["members"]),
                180.0,
            )
            assert ready is not None, f"{node_id}: speech never ready everywhere"
        time.sleep(2.0)
        idle_0, terms_before = scrape(cluster), terms(cluster)
        time.sleep(args.seconds)
        idle_1 = scrape(cluster)
        result["load"] = hammer(cluster, args.seconds, args.clients)
        busy_1, terms_after = scrape(cluster), terms(cluster)
        result["primary"] = primary
        result["terms"] = {"before": terms_before, "after": terms_after}
        result["leader_changes"] = sum(
            count(busy_1[n], "ha_voice_leader_changes_total")
            - count(idle_0[n], "ha_voice_leader_changes_total")
            for n in cluster.nodes
        )
        result["idle"] = phase(idle_0, idle_1, primary)
        result["transcribing"] = phase(idle_1, busy_1, primary)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
