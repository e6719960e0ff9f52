"""Benchmark: heartbeat lateness beside CPU hogs, with and without a raised priority.

Not a pass/fail test. Prints one JSON object; docs/benchmarks.md ("Heartbeats beside CPU hogs,
with and without a raised priority") tabulates the runs. Run (as root: a negative niceness
and SCHED_RR need it):

    python tests/bench/bench_priority.py [--seconds 20] [--hogs 4] [--repeat 1]

For each priority (none; `nice -n -5`; `chrt --rr 10`, SCHED_RR 10 as the units'
CPUSchedulingPolicy= gives it and as keepalived's VRRP process runs) and each place of the
hogs (in the nodes' session; each in a session of its own, as another service or a login is:
the kernel's autogroups then weigh sessions, not processes): three `ha-voice run` processes on
127.0.0.1 under that priority, then `--hogs` busy-loop processes at niceness 0 for `--seconds`.
Heartbeat lateness comes from the primary's `ha_voice_heartbeat_lateness_seconds` (bucket
bounds), leader changes from every node's `ha_voice_leader_changes_total`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from ha_voice.local_cluster import LocalCluster
from tests.bench.bench_heartbeat_speech import count, quantile
from tests.speech_load import scrape

PRIORITIES = {
    "none": (),
    "nice -5": ("nice", "-n", "-5"),
    "SCHED_RR 10": ("chrt", "--rr", "10"),
}
LATENESS = "ha_voice_heartbeat_lateness_seconds"


def hogs(n: int, own_sessions: bool) -> list[subprocess.Popen[bytes]]:
    """`n` processes that spin on a core each, at niceness 0."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=own_sessions)
        for _ in range(n)
    ]


def measure(prefix: tuple[str, ...], seconds: float, n_hogs: int, own: bool) -> dict[str, object]:
    with LocalCluster(3, prefixes=[prefix] * 3) as cluster:
        cluster.start()
        found = cluster.wait_for_primary(60.0)
        assert found is not None
        primary = found[0]
        time.sleep(2.0)
        before = scrape(cluster)
        spinning = hogs(n_hogs, own)
        try:
            time.sleep(seconds)
            after = scrape(cluster)
        finally:
            for hog in spinning:
                hog.kill()
                hog.wait()
        return {
            "lateness_p50_s": quantile(before[primary], after[primary], LATENESS, 0.5),
            "lateness_p99_s": quantile(before[primary], after[primary], LATENESS, 0.99),
            "lateness_max_bucket_s": quantile(before[primary], after[primary], LATENESS, 1.0),
            "leader_changes": sum(
                count(after[n], "ha_voice_leader_changes_total")
                - count(before[n], "ha_voice_leader_changes_total")
                for n in cluster.nodes
            ),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--hogs", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every variant")
    args = parser.parse_args()
    runs = []
    for own in [False, True] * args.repeat:
        for name, prefix in PRIORITIES.items():
            result = measure(prefix, args.seconds, args.hogs, own)
            runs.append({"priority": name, "hogs_in_own_sessions": own, **result})
            print(json.dumps(runs[-1]), file=sys.stderr)
    out = {"seconds": args.seconds, "hogs": args.hogs, "cpus": os.cpu_count(), "runs": runs}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
