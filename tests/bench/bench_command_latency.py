"""Benchmark: a command's round trip through the primary's API and guard to the simulated Go2.

Not a pass/fail test. Writes its section of docs/benchmarks.md. Run:

    python tests/bench/bench_command_latency.py [--commands 300]

Three `ha-voice run` processes and one `ha-voice sim-robot` (latency 2 ms) on 127.0.0.1; the
client alternates "sit" and "rise_sit" on the primary with POST /api/robot/command over one
keep-alive connection (the stdlib's http.client).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time

from bench_sim_failover import write_section  # run as a script: its directory is on the path

from ha_voice.local_cluster import LocalCluster, SimRobotProcess

START, END = "<!-- bench_command_latency:start -->", "<!-- bench_command_latency:end -->"


def post(conn: http.client.HTTPConnection, command: str, token: str) -> int:
    body = json.dumps({"command": command})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    conn.request("POST", "/api/robot/command", body, headers)
    response = conn.getresponse()
    response.read()
    return response.status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=300)
    args = parser.parse_args()
    with SimRobotProcess() as sim, LocalCluster(3, extra_flags=(f"--robot={sim.spec}",)) as cluster:
        cluster.start()
        found = cluster.wait_for_primary(20.0)
        assert found is not None
        time.sleep(0.5)
        primary = cluster.nodes[found[0]]

        def connection() -> http.client.HTTPConnection:
            return http.client.HTTPConnection(primary.host, primary.api_port, timeout=5)

        token = str(cluster.token)
        assert post(connection(), "stand", token) == 200
        times = []
        for i in range(args.commands):
            started = time.perf_counter()
            status = post(connection(), "sit" if i % 2 == 0 else "rise_sit", token)
            times.append((time.perf_counter() - started) * 1000)
            assert status == 200, status
    times.sort()

    def pct(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))]

    lines = [
        "## Command round trip through the primary",
        "",
        f"`python tests/bench/bench_command_latency.py --commands {args.commands}`: POST "
        "/api/robot/command on the primary → guard (lease check, fencing token) → "
        "`ha-voice sim-robot` over TCP (2 ms simulated robot latency) → reply; a new HTTP "
        "connection per command.",
        "",
        "| n | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        f"| {len(times)} | {pct(0.5):.1f} | {pct(0.9):.1f} | {pct(0.99):.1f} | {times[-1]:.1f} |",
    ]
    write_section(lines, START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
