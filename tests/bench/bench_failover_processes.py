"""Benchmark: failover of real `ha-voice run` processes on loopback, SIGKILL and SIGTERM.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run:

    python tests/bench/bench_failover_processes.py [--kills 20] [--terms 10]

The clock starts when the signal is sent and stops when a survivor first answers 200 on
/cluster/primary (polled every 2 ms): what a client or a load balancer would see.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time

from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.local_cluster import LocalCluster

START, END = "<!-- bench_failover_processes:start -->", "<!-- bench_failover_processes:end -->"


def one_failover(cluster: LocalCluster, signum: int) -> float:
    found = cluster.wait_for_primary(20.0)
    assert found is not None, "no primary"
    old = found[0]
    time.sleep(1.0)  # let the backups settle into the line of succession
    sent = time.monotonic()
    cluster.nodes[old].signal(signum)
    taken = cluster.wait_for_primary(20.0, exclude=old, poll_s=0.002)
    assert taken is not None, "no takeover"
    took = taken[1] - sent
    cluster.nodes[old].wait(15.0)
    cluster.nodes[old].start()
    rejoined = cluster.wait_for(old, lambda v: v["role"] == "backup", 20.0)
    assert rejoined is not None, f"{old} did not rejoin"
    return took


def distribution(values: list[float]) -> str:
    ordered = sorted(v * 1000 for v in values)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return (
        f"{len(ordered)} | {pct(0.5):.0f} | {pct(0.9):.0f} | {ordered[-1]:.0f} | "
        f"{statistics.fmean(ordered):.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--terms", type=int, default=10)
    args = parser.parse_args()
    with LocalCluster(3) as cluster:
        cluster.start()
        kills = [one_failover(cluster, signal.SIGKILL) for _ in range(args.kills)]
        terms = [one_failover(cluster, signal.SIGTERM) for _ in range(args.terms)]
    lines = [
        "## Failover of real processes on loopback",
        "",
        f"`python tests/bench/bench_failover_processes.py --kills {args.kills} "
        f"--terms {args.terms}`: three `ha-voice run` processes on 127.0.0.1, default (`wired`) "
        "timers; from the signal to the first 200 on a survivor's /cluster/primary, polled "
        "every 2 ms. The killed node is restarted and rejoins before the next round.",
        "",
        "| signal | n | p50 ms | p90 ms | max ms | mean ms |",
        "|---|---|---|---|---|---|",
        f"| SIGKILL (crash) | {distribution(kills)} |",
        f"| SIGTERM (handover) | {distribution(terms)} |",
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
