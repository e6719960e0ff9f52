"""Benchmark: how long the start-up garbage collections hold the interpreter lock.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run:

    python tests/bench/bench_startup_gc.py [--starts 10]

The daemon freezes its heap out of the collector twice (daemon.py): the imported modules before
the election core's thread starts, what starting made once it is done; each logs how long its
collection took. Only the second runs beside the core, so only it can hold a heartbeat back.
Before issue 14, one collection of the whole heap ran there (the two together).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.local_cluster import LocalCluster

START, END = "<!-- bench_startup_gc:start -->", "<!-- bench_startup_gc:end -->"
_FROZE = re.compile(
    r"froze (.*?) out of garbage collection: (\d+) objects, the collection took (\d+) ms"
)


def one_start() -> list[tuple[str, int, int]]:
    with LocalCluster(1, api_token=False) as cluster:
        cluster.start()
        if cluster.wait_for_primary(60) is None:
            raise RuntimeError(cluster.nodes["n1"].log_path.read_text())
        time.sleep(0.5)
        text = cluster.nodes["n1"].log_path.read_text()
    return [(what, int(objects), int(ms)) for what, objects, ms in _FROZE.findall(text)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=10)
    args = parser.parse_args()
    runs = [one_start() for _ in range(args.starts)]
    load = os.getloadavg()[0]
    rows = [
        "| collection | runs beside the core | objects frozen | min ms | median ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for place, beside in ((0, "no"), (1, "yes")):
        times = sorted(run[place][2] for run in runs)
        objects = runs[0][place][1] - (runs[0][place - 1][1] if place else 0)
        rows.append(
            f"| {runs[0][place][0]} | {beside} | {objects} | {times[0]} | "
            f"{times[len(times) // 2]} | {times[-1]} |"
        )
    lines = [
        "## Start-up garbage collection",
        "",
        f"`python tests/bench/bench_startup_gc.py --starts {args.starts}` (load average "
        f"{load:.1f} on 2 cores when it ended): one `ha-voice run` node started {args.starts} "
        "times, the two collections that freeze its heap as the daemon logs them. Each holds "
        "the interpreter lock, and so the election core's thread, for its whole length. Before "
        "issue 14 one collection of the whole heap ran after the core had started: a node "
        "preempted to during it sent no heartbeat for ~415 ms and lost its lease.",
        "",
        *rows,
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
