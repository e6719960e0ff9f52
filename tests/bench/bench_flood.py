"""Benchmark: a flood of commands, a huge body and slow connections cause no leader change.

Not a pass/fail test. Prints one JSON object per run; docs/benchmarks.md ("The heartbeat path
under a flood") tabulates the runs it lists. Run:

    python tests/bench/bench_flood.py [--commands 1000] [--settings 1000] [--fsync-ms 10]
                                      [--no-limits] [--realtime] [--timers HB/ET]

Three `ha-voice run` processes and one `ha-voice sim-robot` on 127.0.0.1, all on this machine's
two cores together with the load generator (`tests/loadgen.py`). After 5 s idle:
1. `--commands` POST /api/robot/command at once, spread over the three nodes, each with its own
   idempotency key, while a 5 MB body goes to every node and 50 connections that never finish
   their headers sit on the primary;
2. `--settings` POST /api/settings at once to the primary: journal entries without the robot,
   so their rate is the journal's commit throughput (entries committed per second).
Leader changes are read from every node's term and `ha_voice_leader_changes_total`; heartbeat
lateness, the core's queue delay and the round trip from the nodes' histograms (`/metrics`),
idle against flood. `--fsync-ms` makes every fsync of the nodes that much slower
(`tests/slowdisk`: an SD card's 2-20 ms instead of this machine's 0.1 ms). For a before/after
figure, run this script from an older checkout's directory with its own venv's Python: the nodes
run `python -m ha_voice` from the working directory (the "before" rows: commit bd2d790).
`--realtime` runs the nodes at SCHED_RR 10, as the systemd units do (`chrt`; needs root).
`BENCH_KEEP_LOGS=1` keeps the cluster's directory: every node's log, and its /metrics after
each phase (`<node>-idle.metrics`, `-flood.metrics`, `-end.metrics`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for loadgen

import slowdisk
from loadgen import Target, flood, request, slow_connections, summary

from ha_voice.local_cluster import LocalCluster, SimRobotProcess

HISTOGRAMS = (
    "ha_voice_heartbeat_lateness_seconds",
    "ha_voice_core_queue_delay_seconds",
    "ha_voice_heartbeat_rtt_seconds",
)


def scrape(cluster: LocalCluster) -> dict[str, str]:
    out = {}
    for node_id, node in cluster.nodes.items():
        response = node.get("/metrics", timeout_s=5.0)
        out[node_id] = response.text if response is not None else ""
    return out


def buckets(text: str, name: str) -> dict[float, float]:
    """The histogram's cumulative counts by bound, summed over its other labels (e.g. peer)."""
    found = re.findall(rf'^{name}_bucket{{(?:[^}}]*,)?le="([^"]+)"}} (\S+)$', text, re.M)
    total: dict[float, float] = {}
    for le, count in found:
        total[float(le)] = total.get(float(le), 0.0) + float(count)
    return total


def quantile(before: str, after: str, name: str, q: float) -> tuple[float | None, int]:
    """The bucket bound under which `q` of the observations between two scrapes fall."""
    a, b = buckets(before, name), buckets(after, name)
    if not b:
        return None, 0
    delta = {le: b[le] - a.get(le, 0.0) for le in b}
    total = delta.get(float("inf"), 0.0)
    if total <= 0:
        return None, 0
    for le in sorted(delta):
        if delta[le] >= q * total:
            return le, int(total)
    return float("inf"), int(total)


def counter(text: str, name: str) -> float:
    found = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def terms(cluster: LocalCluster) -> dict[str, int]:
    out = {}
    for node_id, node in cluster.nodes.items():
        view = node.cluster()
        out[node_id] = view["term"] if view else -1
    return out


async def command_flood(
    cluster: LocalCluster, primary: str, count: int, headers: Mapping[str, str]
) -> dict[str, object]:
    targets = [Target(n.host, n.api_port) for n in cluster.nodes.values()]
    commands = ("stand", "stop")

    def body(i: int) -> bytes:
        return json.dumps({"command": commands[i % 2]}).encode()

    huge = b'{"command": "' + b"x" * (5 << 20) + b'"}'
    big = [
        request(t, "POST", "/api/robot/command", huge, {**headers}, timeout_s=60.0) for t in targets
    ]
    slow = slow_connections(targets[list(cluster.nodes).index(primary)], 50, hold_s=30.0)
    started = time.perf_counter()
    replies, big_replies, slow_cut = await asyncio.gather(
        flood(targets, count, "/api/robot/command", body, headers),
        asyncio.gather(*big),
        slow,
    )
    wall_s = time.perf_counter() - started
    return {
        "commands": summary(replies),
        "wall_s": round(wall_s, 1),
        "huge_body": [r.status or r.error[:100] for r in big_replies],
        "slow_closed_within_30s": sum(slow_cut),
    }


async def settings_flood(
    cluster: LocalCluster, primary: str, count: int, headers: Mapping[str, str]
) -> dict[str, object]:
    node = cluster.nodes[primary]
    target = Target(node.host, node.api_port)
    commit_before = _commit(cluster, primary)
    started = time.perf_counter()

    def body(i: int) -> bytes:
        return json.dumps({"listening": i % 2 == 0}).encode()

    replies = await flood([target], count, "/api/settings", body, headers)
    wall_s = time.perf_counter() - started
    commit_after = _commit(cluster, primary)
    done = sum(1 for r in replies if r.status == 200)
    return {
        "settings": summary(replies),
        "wall_s": round(wall_s, 2),
        "committed_per_s": round((commit_after - commit_before) / wall_s, 1),
        "answered_200_per_s": round(done / wall_s, 1),
    }


def _commit(cluster: LocalCluster, node_id: str) -> int:
    response = cluster.nodes[node_id].get("/api/journal?limit=1", timeout_s=5.0)
    return int(response.json()["commit_index"]) if response is not None else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--settings", type=int, default=1000)
    parser.add_argument(
        "--fsync-ms", type=int, default=0, help="every fsync of the nodes takes this much longer"
    )
    parser.add_argument(
        "--no-limits",
        action="store_true",
        help="raise the rate limits and the command queue out of reach: (nearly) every command "
        "reaches the journal (the core's worst case; one load generator is one client address)",
    )
    parser.add_argument(
        "--realtime", action="store_true", help="the nodes at SCHED_RR 10, as the units run them"
    )
    parser.add_argument(
        "--timers",
        metavar="HB/ET",
        help="the nodes' heartbeat and election timeout in seconds, e.g. 0.03/0.25 "
        "(default: the default profile's)",
    )
    parser.add_argument("--label", default="this commit")
    args = parser.parse_args()
    result: dict[str, object] = {
        "label": args.label,
        "fsync_ms": args.fsync_ms,
        "limits": "raised" if args.no_limits else "default",
        "realtime": args.realtime,
        "timers": args.timers or "defaults",
    }
    realtime = ("chrt", "--rr", "10") if args.realtime else ()
    prefix = [*realtime, *(slowdisk.prefix(args.fsync_ms) if args.fsync_ms else ())]
    slow = [prefix] * 3 if prefix else []
    raised = ("--api-rate-per-s=10000", "--api-rate-burst=100000", "--max-pending-commands=4096")
    heartbeat, _, election = (args.timers or "").partition("/")
    timers = (
        (f"--heartbeat-interval-s={heartbeat}", f"--election-timeout-s={election}")
        if args.timers
        else ()
    )
    with (
        SimRobotProcess() as sim,
        LocalCluster(
            3,
            extra_flags=(f"--robot={sim.spec}", *(raised if args.no_limits else ()), *timers),
            prefixes=slow,
            keep_dir=bool(os.environ.get("BENCH_KEEP_LOGS")),
        ) as cluster,
    ):
        cluster.start()
        found = cluster.wait_for_primary(30.0)
        assert found is not None
        primary = found[0]
        headers = {"Content-Type": "application/json", **_auth(cluster)}
        time.sleep(1.0)
        idle_0 = scrape(cluster)
        time.sleep(5.0)
        idle_1 = scrape(cluster)
        terms_before = terms(cluster)
        result["flood"] = asyncio.run(command_flood(cluster, primary, args.commands, headers))
        flood_1 = scrape(cluster)
        result["throughput"] = asyncio.run(settings_flood(cluster, primary, args.settings, headers))
        time.sleep(1.0)
        terms_after = terms(cluster)
        end = scrape(cluster)
        if os.environ.get("BENCH_KEEP_LOGS"):  # every node's /metrics after each phase
            for phase, texts in (("idle", idle_1), ("flood", flood_1), ("end", end)):
                for node_id, text in texts.items():
                    (cluster.dir / f"{node_id}-{phase}.metrics").write_text(text)
        result["terms"] = {"before": terms_before, "after": terms_after}
        changes = "ha_voice_leader_changes"
        result["leader_changes"] = sum(
            counter(end[n], changes) - counter(idle_0[n], changes) for n in cluster.nodes
        )
        result["primary_after"] = cluster.primaries()
        result["latency"] = {
            name: {
                "idle_p99": quantile(idle_0[node], idle_1[node], name, 0.99),
                "flood_p99": quantile(idle_1[node], flood_1[node], name, 0.99),
                "settings_p99": quantile(flood_1[node], end[node], name, 0.99),
            }
            for name, node in zip(
                HISTOGRAMS, [primary, _backup(cluster, primary), primary], strict=True
            )
        }
    print(json.dumps(result, indent=2))
    return 0


def _auth(cluster: LocalCluster) -> dict[str, str]:
    token = getattr(cluster, "token", None)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _backup(cluster: LocalCluster, primary: str) -> str:
    return next(n for n in cluster.nodes if n != primary)


if __name__ == "__main__":
    sys.exit(main())
