"""Benchmark: the seed's client, given one node's URL, through that node's SIGKILL.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run:

    python tests/bench/bench_seed_client_failover.py [--rounds 10]

Three `ha-voice run` processes with the in-process simulated Go2, each on its own loopback
address and API port 8888, as on Jetsons. Each round: `JetsonVoiceClient(jetson_url=<one
node>)` says "sta op" (its first answer names the other members), that node is SIGKILLed, and
the clock runs from the signal until the client's next `send_command` returns its answer. The
killed node is restarted and rejoins before the next round. Killed: the primary (a failover
too) or a backup (only the client moves).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time

from bench_failover_processes import distribution  # run as a script: its directory is on the path
from bench_sim_failover import write_section

from ha_voice.client import JetsonVoiceClient
from ha_voice.local_cluster import LocalCluster

START, END = "<!-- bench_seed_client_failover:start -->", "<!-- bench_seed_client_failover:end -->"


def one_round(cluster: LocalCluster, kill_primary: bool) -> float:
    found = cluster.wait_for_primary(20.0)
    assert found is not None, "no primary"
    time.sleep(1.0)  # the takeover done, the backups settled
    primary = found[0]
    victim = primary if kill_primary else next(n for n in cluster.nodes if n != primary)
    client = JetsonVoiceClient(jetson_url=cluster.nodes[victim].url, token=cluster.token)
    try:
        first = client.send_command("sta op")
        assert first["status"] == "success", first
        sent = time.monotonic()
        cluster.nodes[victim].signal(signal.SIGKILL)
        after = client.send_command("ga zitten")
        took = time.monotonic() - sent
        assert after["status"] == "success", after
    finally:
        client.close()
    cluster.nodes[victim].wait(15.0)
    cluster.nodes[victim].start()
    rejoined = cluster.wait_for(victim, lambda v: v["role"] == "backup", 20.0)
    assert rejoined is not None, f"{victim} did not rejoin"
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    net = f"127.{random.randint(16, 250)}.{random.randint(0, 250)}"
    hosts = [f"{net}.{i + 2}" for i in range(3)]
    with LocalCluster(3, hosts=hosts, extra_flags=("--robot=sim",)) as cluster:
        cluster.start()
        primaries = [one_round(cluster, kill_primary=True) for _ in range(args.rounds)]
        backups = [one_round(cluster, kill_primary=False) for _ in range(args.rounds)]
    lines = [
        "## The seed's client through a SIGKILL of its one node",
        "",
        f"`python tests/bench/bench_seed_client_failover.py --rounds {args.rounds}`: three "
        "`ha-voice run` processes (in-process simulated Go2) on their own loopback addresses, "
        "API port 8888 each; `JetsonVoiceClient(jetson_url=<one node>)`, the seed's call, says "
        '"sta op", that node is SIGKILLed, and the clock runs from the signal until the '
        'client\'s next `send_command("ga zitten")` has its answer (success in every round).',
        "",
        "| node killed | n | p50 ms | p90 ms | max ms | mean ms |",
        "|---|---|---|---|---|---|",
        f"| the primary (failover) | {distribution(primaries)} |",
        f"| a backup | {distribution(backups)} |",
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
