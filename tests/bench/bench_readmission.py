"""Benchmark: how long a restarted node's datagrams are refused while its peers check its new boot.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run:

    python tests/bench/bench_readmission.py [--restarts 10]

Three `ha-voice run` processes on 127.0.0.1 (timer profile wired: 50 ms heartbeats, 0.5 s
election timeout). A backup is SIGKILLed and started again; from its log line "node … boot"
(its socket is bound, its boot id drawn) to the first moment the primary's /cluster shows it
heard from within 0.1 s, its acks are dropped as `unverified_boot` (docs/design.md, "Boot ids").
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import sys
import time

from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.local_cluster import LocalCluster

START, END = "<!-- bench_readmission:start -->", "<!-- bench_readmission:end -->"
_BOOT_LINE = re.compile(
    r"^(\S+ \S+) INFO ha_voice\.daemon: node \S+ of cluster .* boot (0x[0-9a-f]+)"
)


def _heard(cluster: LocalCluster, primary: str, node_id: str) -> bool:
    view = cluster.nodes[primary].cluster()
    if view is None:
        return False
    member = next(m for m in view["members"] if m["node"] == node_id)
    return member["last_heard_s"] is not None and member["last_heard_s"] < 0.1


def _one_restart(cluster: LocalCluster, primary: str, backup: str) -> float:
    node = cluster.nodes[backup]
    lines_before = len(node.log_path.read_text().splitlines())
    node.signal(signal.SIGKILL)
    node.wait(5.0)
    time.sleep(1.0)  # its old boot falls silent at the primary
    node.start()
    bound_at = None
    while bound_at is None:
        for line in node.log_path.read_text().splitlines()[lines_before:]:
            if _BOOT_LINE.match(line):
                bound_at = time.monotonic()
        time.sleep(0.005)
    while not _heard(cluster, primary, backup):
        time.sleep(0.005)
    return time.monotonic() - bound_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--restarts", type=int, default=10)
    args = parser.parse_args()
    with LocalCluster(3) as cluster:
        cluster.start()
        found = cluster.wait_for_primary(20.0)
        assert found is not None
        primary = found[0]
        backup = next(n for n in cluster.nodes if n != primary)
        samples = [_one_restart(cluster, primary, backup) for _ in range(args.restarts)]
    median, worst = statistics.median(samples), max(samples)
    lines = [
        "",
        "## Re-admission of a restarted node",
        "",
        f"`python tests/bench/bench_readmission.py --restarts {args.restarts}`: a backup of",
        "three on 127.0.0.1 (wired timers) SIGKILLed and started again; from its log line",
        '"node … boot" to the primary hearing it again: median',
        f"{median:.2f} s, worst {worst:.2f} s (the log line comes a little after the socket is",
        "bound). The new boot answers its challenge within a round trip; the rest is the",
        "election timeout (0.5 s) during which the old boot must leave its probe unanswered",
        '(docs/design.md, "Boot ids"), measured from the new boot\'s first ack.',
        "",
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
